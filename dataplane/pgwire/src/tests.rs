//! Unit tests: framing bounds, startup packets, strict body validation.
