//! Sluice's policy model, SQL statement analysis and pure verdict evaluation.
#![forbid(unsafe_code)]
