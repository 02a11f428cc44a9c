//! How `apply`, `diff` and `rollback` print an outcome: the diff as a table (one row per
//! added, removed or changed resource) and a line with the versions.

use anyhow::Result;
use serde_json::{json, Value};

use super::output::{col, out, print_value, text, Column, Format};

/// One row per resource the diff touches.
const CHANGES: &[Column] = &[
    col("KIND", |v| text(v, "kind")),
    col("NAME", |v| text(v, "name")),
    col("CHANGE", |v| text(v, "change")),
    col("FIELDS", |v| text(v, "fields")),
];

/// The diff's kinds, by their key and the singular a row names.
const KINDS: [(&str, &str); 5] = [
    ("connections", "connection"),
    ("identity_providers", "identity-provider"),
    ("roles", "role"),
    ("policies", "policy"),
    ("notifications", "notification"),
];

/// The rows of a `Diff` object.
fn rows(diff: &Value) -> Vec<Value> {
    let mut rows = Vec::new();
    for (key, kind) in KINDS {
        let d = &diff[key];
        for (change, names) in [("added", &d["added"]), ("removed", &d["removed"])] {
            for name in names.as_array().into_iter().flatten() {
                rows.push(json!({"kind": kind, "name": name, "change": change}));
            }
        }
        for c in d["changed"].as_array().into_iter().flatten() {
            rows.push(
                json!({"kind": kind, "name": c["name"], "change": "changed", "fields": c["fields"]}),
            );
        }
    }
    rows
}

/// Prints a diff alone (`sluice diff`): its table, or `no changes`.
pub fn print_diff(diff: &Value, format: Format) -> Result<()> {
    let rows = rows(diff);
    if rows.is_empty() && matches!(format, Format::Table | Format::Wide) {
        return out("no changes\n");
    }
    print_value(diff, &rows, CHANGES, format)
}

/// Prints an `ApplyOutcome` (apply, dry run, rollback): the diff, then the versions (the
/// current ones when nothing was applied: a dry run, or a document that changes nothing).
pub fn print_outcome(outcome: &Value, format: Format) -> Result<()> {
    if !matches!(format, Format::Table | Format::Wide) {
        return print_value(outcome, &[], CHANGES, format);
    }
    print_diff(&outcome["diff"], format)?;
    let versions = format!(
        "document version {}, snapshot version {}",
        text(outcome, "document_version"),
        text(outcome, "snapshot_version")
    );
    out(&if outcome["applied"] == Value::Bool(true) {
        format!("applied: {versions}\n")
    } else {
        format!("nothing applied: current {versions}\n")
    })
}
