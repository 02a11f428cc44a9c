//! The policy document as written (YAML) and its validation into [`Policy`] values.

use std::time::Duration;

use serde::Deserialize;

use super::*;
use crate::glob::Glob;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDocument {
    #[serde(default)]
    pub(super) policies: Vec<RawPolicy>,
}

pub(super) fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPolicy {
    pub(super) name: String,
    #[serde(default)]
    pub(super) classes: RawClasses,
    #[serde(default)]
    pub(super) tables: RawNames,
    #[serde(default)]
    pub(super) schemas: RawNames,
    #[serde(default)]
    pub(super) rules: Vec<RawRule>,
    #[serde(default)]
    pub(super) functions: RawFunctions,
    #[serde(default)]
    pub(super) search_path: Option<Vec<String>>,
    #[serde(default = "yes")]
    pub(super) require_where: bool,
    #[serde(default)]
    pub(super) allow_copy_program: bool,
    #[serde(default)]
    pub(super) allow_copy_file: bool,
    #[serde(default)]
    pub(super) allow_set_role: bool,
    #[serde(default)]
    pub(super) allow_set_search_path: bool,
    #[serde(default)]
    pub(super) allow_data_modifying_cte: bool,
    #[serde(default)]
    pub(super) allow_explain_analyze_write: bool,
    #[serde(default)]
    pub(super) allow_do_blocks: bool,
    #[serde(default)]
    pub(super) allow_code_definitions: bool,
    #[serde(default)]
    pub(super) allow_unparsed: bool,
    #[serde(default = "yes")]
    pub(super) allow_merge: bool,
    #[serde(default)]
    pub(super) max_rows: Option<u64>,
    #[serde(default)]
    pub(super) max_affected_rows: Option<u64>,
    #[serde(default)]
    pub(super) over_limit: Option<String>,
    #[serde(default)]
    pub(super) review: RawReview,
    #[serde(default)]
    pub(super) masking: Vec<RawMask>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawClasses {
    #[serde(default)]
    pub(super) allow: Vec<String>,
    #[serde(default)]
    pub(super) deny: Vec<String>,
    #[serde(default)]
    pub(super) review: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNames {
    #[serde(default)]
    pub(super) allow: Option<Vec<String>>,
    #[serde(default)]
    pub(super) deny: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRule {
    #[serde(default)]
    pub(super) classes: Vec<String>,
    #[serde(default)]
    pub(super) tables: RawNames,
    #[serde(default)]
    pub(super) schemas: RawNames,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFunctions {
    #[serde(default)]
    pub(super) deny: Vec<String>,
    #[serde(default)]
    pub(super) allow_builtin_denied: Vec<String>,
    #[serde(default)]
    pub(super) trusted: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawReview {
    #[serde(default)]
    pub(super) on: Vec<String>,
    #[serde(default)]
    pub(super) wait: Option<bool>,
    #[serde(default)]
    pub(super) timeout: Option<String>,
    #[serde(default)]
    pub(super) min_approvers: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMask {
    #[serde(default)]
    pub(super) columns: Vec<String>,
    #[serde(default)]
    pub(super) types: Vec<String>,
    #[serde(default)]
    pub(super) detectors: Vec<String>,
    #[serde(default)]
    pub(super) sensitivity: Option<String>,
    pub(super) strategy: serde_yaml_ng::Value,
    #[serde(default)]
    pub(super) predicates: Option<String>,
}

pub(super) fn glob(text: &str, max: usize, path: &str) -> Result<Glob, PolicyError> {
    Glob::parse(text, max)
        .map_err(|e: GlobError| PolicyError::invalid(path, format!("invalid glob {text:?}: {e}")))
}

pub(super) fn class_set(names: &[String], path: &str) -> Result<ClassSet, PolicyError> {
    if names.is_empty() {
        return Ok(ClassSet::ALL);
    }
    let mut set = ClassSet::default();
    for (i, n) in names.iter().enumerate() {
        let c = StatementClass::parse(n)
            .ok_or_else(|| PolicyError::invalid(format!("{path}[{i}]"), unknown_class(n)))?;
        set.insert(c);
    }
    Ok(set)
}

pub(super) fn unknown_class(n: &str) -> String {
    format!(
        "unknown statement class {n:?} (expected one of: read, write, ddl, dcl, admin, copy, transaction, session)"
    )
}

pub(super) fn build_policy(
    raw: RawPolicy,
    path: &str,
    version: u64,
    index: usize,
) -> Result<Policy, PolicyError> {
    let name = raw.name.trim();
    if name.is_empty() {
        return Err(PolicyError::invalid(format!("{path}.name"), "empty name"));
    }
    let mut p = Policy::deny_all();
    p.name = name.into();
    p.valid = true;
    p.cache_key = cache_key(version, index);

    build_classes(&mut p, &raw.classes, path)?;

    add_names(
        &mut p,
        &raw.tables,
        NameTarget::Table,
        ClassSet::ALL,
        name,
        path,
        "tables",
    )?;
    add_names(
        &mut p,
        &raw.schemas,
        NameTarget::Schema,
        ClassSet::ALL,
        name,
        path,
        "schemas",
    )?;
    for (r, rule) in raw.rules.iter().enumerate() {
        let local = format!("rules[{r}]");
        let classes = class_set(&rule.classes, &format!("{path}.{local}.classes"))?;
        add_names(
            &mut p,
            &rule.tables,
            NameTarget::Table,
            classes,
            name,
            path,
            &format!("{local}.tables"),
        )?;
        add_names(
            &mut p,
            &rule.schemas,
            NameTarget::Schema,
            classes,
            name,
            path,
            &format!("{local}.schemas"),
        )?;
    }

    for (i, f) in raw.functions.deny.iter().enumerate() {
        let local = format!("functions.deny[{i}]");
        p.function_deny.push(FunctionDeny {
            id: RuleId::new(format!("{name}/{local}")),
            glob: glob(f, 2, &format!("{path}.{local}"))?,
        });
    }

    for (i, f) in raw.functions.trusted.iter().enumerate() {
        p.function_trusted
            .push(glob(f, 2, &format!("{path}.functions.trusted[{i}]"))?);
    }

    for (i, f) in raw.functions.allow_builtin_denied.iter().enumerate() {
        p.builtin_allow.push(builtin_allow_entry(
            f,
            &format!("{path}.functions.allow_builtin_denied[{i}]"),
        )?);
    }

    if let Some(sp) = raw.search_path {
        let mut out = Vec::with_capacity(sp.len());
        for (i, s) in sp.iter().enumerate() {
            let g = glob(s, 1, &format!("{path}.search_path[{i}]"))?;
            if s.contains(['*', '?']) {
                return Err(PolicyError::invalid(
                    format!("{path}.search_path[{i}]"),
                    "search_path entries are schema names, not globs",
                ));
            }
            // A one-part glob without wildcards is exactly the folded schema name.
            out.push(folded_single(&g));
        }
        p.search_path = out;
    }

    p.require_where = raw.require_where;
    p.allow_copy_program = raw.allow_copy_program;
    p.allow_copy_file = raw.allow_copy_file;
    p.allow_set_role = raw.allow_set_role;
    p.allow_set_search_path = raw.allow_set_search_path;
    p.allow_data_modifying_cte = raw.allow_data_modifying_cte;
    p.allow_explain_analyze_write = raw.allow_explain_analyze_write;
    p.allow_do_blocks = raw.allow_do_blocks;
    p.allow_code_definitions = raw.allow_code_definitions;
    p.allow_unparsed = raw.allow_unparsed;
    p.allow_merge = raw.allow_merge;
    p.max_rows = raw.max_rows;
    p.max_affected_rows = raw.max_affected_rows;
    p.over_limit = over_limit(raw.over_limit.as_deref(), raw.max_affected_rows, path)?;

    p.review = build_review(&raw.review, path)?;

    for (i, m) in raw.masking.iter().enumerate() {
        p.masking
            .push(build_mask(m, name, &format!("{path}.masking[{i}]"), i)?);
    }
    Ok(p)
}

/// `over_limit:` what happens to a write over `max_affected_rows` (only with a limit).
fn over_limit(raw: Option<&str>, limit: Option<u64>, path: &str) -> Result<OverLimit, PolicyError> {
    let at = format!("{path}.over_limit");
    match (raw, limit) {
        (None, _) => Ok(OverLimit::Deny),
        (Some(_), None) => Err(PolicyError::invalid(
            at,
            "over_limit needs max_affected_rows",
        )),
        (Some("deny"), Some(_)) => Ok(OverLimit::Deny),
        (Some("review"), Some(_)) => Ok(OverLimit::Review),
        (Some(other), Some(_)) => Err(PolicyError::invalid(
            at,
            format!("unknown over_limit {other:?} (expected deny or review)"),
        )),
    }
}

/// `classes:`: unlisted means deny; a class may appear in one list only.
fn build_classes(p: &mut Policy, raw: &RawClasses, path: &str) -> Result<(), PolicyError> {
    let mut seen: [Option<&'static str>; 8] = [None; 8];
    for (list, decision, label) in [
        (&raw.allow, ClassDecision::Allow, "allow"),
        (&raw.deny, ClassDecision::Deny, "deny"),
        (&raw.review, ClassDecision::Review, "review"),
    ] {
        for (i, n) in list.iter().enumerate() {
            let at = format!("{path}.classes.{label}[{i}]");
            let c = StatementClass::parse(n)
                .ok_or_else(|| PolicyError::invalid(&at, unknown_class(n)))?;
            if let Some(other) = seen[c as usize] {
                return Err(PolicyError::invalid(
                    at,
                    format!("class {c} is also listed under classes.{other}"),
                ));
            }
            seen[c as usize] = Some(label);
            p.classes[c as usize] = decision;
        }
    }

    Ok(())
}

/// One `functions.allow_builtin_denied` entry: the exact (folded) name of a function the
/// built-in list denies. No globs, so one entry never lifts more than it names.
fn builtin_allow_entry(text: &str, path: &str) -> Result<Box<str>, PolicyError> {
    if text.contains(['*', '?']) {
        return Err(PolicyError::invalid(
            path,
            "entries are function names, not globs",
        ));
    }
    let g = glob(text, 1, path)?;
    let name = folded_single(&g);
    if crate::evaluate::builtin_denial(&name).is_none() {
        return Err(PolicyError::invalid(
            path,
            format!("{name:?} is not on the built-in list of denied functions"),
        ));
    }
    Ok(name)
}

/// `review:` settings.
fn build_review(raw: &RawReview, path: &str) -> Result<ReviewSettings, PolicyError> {
    let mut review = ReviewSettings::default();
    for (i, k) in raw.on.iter().enumerate() {
        let kind = RuleKind::parse(k).ok_or_else(|| {
            PolicyError::invalid(
                format!("{path}.review.on[{i}]"),
                format!("unknown rule kind {k:?}"),
            )
        })?;
        review.on.push(kind);
    }
    if let Some(w) = raw.wait {
        review.wait = w;
    }
    if let Some(t) = &raw.timeout {
        review.timeout = parse_duration(t).ok_or_else(|| {
            PolicyError::invalid(
                format!("{path}.review.timeout"),
                format!("invalid duration {t:?} (e.g. 90s, 5m, 1h30m)"),
            )
        })?;
    }
    if let Some(n) = raw.min_approvers {
        if n == 0 {
            return Err(PolicyError::invalid(
                format!("{path}.review.min_approvers"),
                "must be at least 1",
            ));
        }
        review.min_approvers = n;
    }
    Ok(review)
}

pub(super) fn folded_single(g: &Glob) -> Box<str> {
    // Re-parse through the glob's own folding: the part text is what `matches` compares.
    let s = g.as_str().trim();
    if let Some(inner) = s.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
        inner.replace("\"\"", "\"").into()
    } else {
        s.to_lowercase().into()
    }
}

pub(super) fn add_names(
    p: &mut Policy,
    raw: &RawNames,
    target: NameTarget,
    classes: ClassSet,
    name: &str,
    path: &str,
    local: &str,
) -> Result<(), PolicyError> {
    let parts = match target {
        NameTarget::Table => 2,
        NameTarget::Schema => 1,
    };
    for (i, d) in raw.deny.iter().enumerate() {
        let l = format!("{local}.deny[{i}]");
        p.deny.push(DenyEntry {
            id: RuleId::new(format!("{name}/{l}")),
            classes,
            target,
            glob: glob(d, parts, &format!("{path}.{l}"))?,
        });
    }
    if let Some(allow) = &raw.allow {
        let mut globs = Vec::with_capacity(allow.len());
        for (i, a) in allow.iter().enumerate() {
            globs.push(glob(a, parts, &format!("{path}.{local}.allow[{i}]"))?);
        }
        p.allow.push(AllowList {
            id: RuleId::new(format!("{name}/{local}.allow")),
            classes,
            target,
            globs,
        });
    }
    Ok(())
}

pub(super) fn build_mask(
    m: &RawMask,
    name: &str,
    path: &str,
    i: usize,
) -> Result<MaskRule, PolicyError> {
    if m.columns.is_empty() && m.types.is_empty() && m.detectors.is_empty() {
        return Err(PolicyError::invalid(
            path,
            "a masking rule needs columns, types or detectors",
        ));
    }
    let mut columns = Vec::new();
    for (c, col) in m.columns.iter().enumerate() {
        columns.push(glob(col, 3, &format!("{path}.columns[{c}]"))?);
    }
    let mut types = Vec::new();
    for (t, ty) in m.types.iter().enumerate() {
        let ty = ty.trim();
        if ty.is_empty() {
            return Err(PolicyError::invalid(
                format!("{path}.types[{t}]"),
                "empty type name",
            ));
        }
        types.push(ty.to_lowercase().into());
    }
    let mut detectors = Vec::new();
    for (d, det) in m.detectors.iter().enumerate() {
        detectors.push(Detector::parse(det).ok_or_else(|| {
            PolicyError::invalid(
                format!("{path}.detectors[{d}]"),
                format!(
                    "unknown detector {det:?} (expected email, card, ssn, phone, iban, api_key)"
                ),
            )
        })?);
    }
    let sensitivity = match m.sensitivity.as_deref() {
        None | Some("strict") => DetectorSensitivity::Strict,
        Some("balanced") => DetectorSensitivity::Balanced,
        Some(other) => {
            return Err(PolicyError::invalid(
                format!("{path}.sensitivity"),
                format!("unknown sensitivity {other:?} (expected strict, balanced)"),
            ))
        }
    };
    let strategy = parse_strategy(&m.strategy, &format!("{path}.strategy"))?;
    let deny_predicates = match m.predicates.as_deref() {
        None | Some("allow") => false,
        Some("deny") => {
            if columns.is_empty() && types.is_empty() {
                return Err(PolicyError::invalid(
                    format!("{path}.predicates"),
                    "predicates: deny needs columns or types (detectors see only results)",
                ));
            }
            true
        }
        Some(other) => {
            return Err(PolicyError::invalid(
                format!("{path}.predicates"),
                format!("expected allow or deny, not {other:?}"),
            ))
        }
    };
    Ok(MaskRule {
        id: RuleId::new(format!("{name}/masking[{i}]")),
        columns,
        types,
        detectors,
        sensitivity,
        strategy,
        deny_predicates,
    })
}

/// `redact`, `hash`, `tokenise`, `"null"`, or a one-key map: `{redact: {text: "x"}}`,
/// `{partial: {keep_last: 4}}`, `{hash: {}}`, ...
pub(super) fn parse_strategy(
    v: &serde_yaml_ng::Value,
    path: &str,
) -> Result<MaskStrategy, PolicyError> {
    use serde_yaml_ng::Value;
    let bad = |msg: &str| PolicyError::invalid(path, msg.to_owned());
    let (kind, args) = match v {
        Value::String(s) => (s.as_str(), None),
        Value::Null => ("null", None),
        Value::Mapping(m) if m.len() == 1 => {
            let (k, a) = m.iter().next().ok_or_else(|| bad("empty strategy"))?;
            let k = k
                .as_str()
                .ok_or_else(|| bad("strategy name must be a string"))?;
            (k, Some(a))
        }
        _ => return Err(bad("expected a strategy name or a map with one strategy")),
    };
    let args = match args {
        None | Some(Value::Null) => serde_yaml_ng::Mapping::new(),
        Some(Value::Mapping(m)) => m.clone(),
        Some(_) => return Err(bad("strategy options must be a map")),
    };
    let mut seen = Vec::new();
    let mut get = |key: &str| {
        seen.push(key.to_owned());
        args.get(key).cloned()
    };
    let strategy = match kind {
        "redact" => {
            let text = match get("text") {
                None => "****".into(),
                Some(Value::String(s)) => s.into(),
                Some(_) => return Err(bad("redact.text must be a string")),
            };
            MaskStrategy::Redact { text }
        }
        "partial" => {
            let num = |v: Value, what: &str| {
                v.as_u64()
                    .and_then(|n| u32::try_from(n).ok())
                    .ok_or_else(|| bad(&format!("partial.{what} must be a non-negative integer")))
            };
            match (get("keep_last"), get("keep_first")) {
                (Some(n), None) => MaskStrategy::Partial(Keep::Last(num(n, "keep_last")?)),
                (None, Some(n)) => MaskStrategy::Partial(Keep::First(num(n, "keep_first")?)),
                _ => return Err(bad("partial needs exactly one of keep_last, keep_first")),
            }
        }
        "hash" => MaskStrategy::Hash,
        "tokenise" | "tokenize" => MaskStrategy::Tokenise,
        "null" => MaskStrategy::Null,
        other => {
            return Err(bad(&format!(
                "unknown strategy {other:?} (expected redact, partial, hash, tokenise, null)"
            )))
        }
    };
    for k in args.keys() {
        let k = k.as_str().unwrap_or("?");
        if !seen.iter().any(|s| s == k) {
            return Err(bad(&format!("unknown option {k:?} for strategy {kind}")));
        }
    }
    Ok(strategy)
}

/// `90s`, `5m`, `1h30m`, `250ms`, or a bare number of seconds.
pub(super) fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    if let Ok(secs) = s.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return None;
        }
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let d = match &rest[..unit_len] {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.checked_mul(60)?),
            "h" => Duration::from_secs(n.checked_mul(3600)?),
            _ => return None,
        };
        total = total.checked_add(d)?;
        rest = &rest[unit_len..];
    }
    Some(total)
}

pub(super) fn cache_key(version: u64, index: usize) -> u64 {
    // Distinct for every (version, index) with fewer than 2^20 policies per document; the
    // cache also compares the key exactly, so this only has to be injective in practice.
    version.wrapping_shl(20) ^ (index as u64 & 0xF_FFFF) ^ (1 << 63)
}
