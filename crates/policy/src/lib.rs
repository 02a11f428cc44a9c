//! Sluice's policy model, SQL statement analysis and pure verdict evaluation.
//!
//! The data plane calls [`analyze`] on every statement text and [`judge`] (or
//! [`judge_with`], which resolves `EXECUTE`) with the role's [`Policy`], caching verdicts per
//! core in a [`VerdictCache`]. The control plane validates documents with
//! [`PolicySet::from_yaml`]. Everything here is pure and synchronous. The [`snapshot`] format
//! (what the control plane publishes and data planes load) lives here so both planes speak it.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod analyze;
pub mod audit;
mod cache;
mod evaluate;
mod glob;
pub mod lineage;
mod model;
pub mod snapshot;
mod sql;

pub use analyze::{
    analyze, analyze_with, session_state, Analysis, CopyEndpoint, CopyFacts, Kind, Limits, Name,
    SessionState, StatementFacts, MAX_SQL_BYTES, RECURSION_LIMIT,
};
pub use cache::VerdictCache;
pub use evaluate::{
    affected_rows_limit, judge, judge_statement, judge_with, Verdict, BUILTIN_DENIED_FUNCTIONS,
};
pub use glob::{Case, Glob, GlobError};
pub use lineage::{
    mask_plan, origin_rule, type_rule, Catalog, Column, Function, MaskPlan, RelKind, Relation,
    ResultMask, ResultPlan, RuleIndex,
};
pub use model::{
    AllowList, ClassDecision, ClassSet, DenyEntry, Detector, DetectorSensitivity, FunctionDeny,
    Keep, MaskRule, MaskStrategy, NameTarget, OverLimit, Policy, PolicyError, PolicySet,
    ReviewSettings, RuleId, RuleKind, StatementClass,
};
