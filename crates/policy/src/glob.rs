//! Name globs (`schema.table`, `*` and `?`) folded per PostgreSQL identifier rules.

use std::fmt;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::SerializeStruct;
use serde::{Deserialize, Serialize, Serializer};

/// One part of a dotted glob (`public`, `order_*`, `"Mixed?"`), already folded.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Part {
    /// The pattern with unquoted text folded to lower case; quoted text kept as written.
    pattern: Box<str>,
    /// The same pattern lower-cased, for the case-insensitive matching used by deny lists.
    lower: Box<str>,
}

/// How a glob compares names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Case {
    /// Exact comparison after PostgreSQL folding (`secrets` ≠ `"Secrets"`). Used by allow
    /// lists, so an allow entry never admits more than the object it names.
    Exact,
    /// Case-insensitive comparison. Used by deny lists, so `deny: [Secrets]` also stops
    /// `"Secrets"`, `"SECRETS"` and `secrets` (over-matching a deny fails closed).
    Insensitive,
}

/// A dotted name glob such as `public.secret_*`, `*.pg_authid`, `"Audit"."Log?"`.
///
/// Each dot-separated part is either unquoted (folded to lower case, `*` matches any run of
/// characters and `?` one character) or double-quoted (case kept; `""` is a literal quote;
/// `*` and `?` still act as wildcards). A glob with fewer parts than the name it is matched
/// against leaves the leading parts unconstrained: `secrets` matches `secrets` in any schema.
///
/// In a snapshot a glob travels compiled, its parts already split, unquoted and folded, so
/// loading one parses nothing: as the list of its parts (`["public", "secret_*"]`) when the
/// source is exactly those parts joined by dots (the usual, unquoted lower-case spelling),
/// else with its source for messages: `{"source": "Public.\"Log?\"", "parts": ["public",
/// "Log?"]}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    source: Box<str>,
    parts: Vec<Part>,
}

/// The most parts any glob has (`schema.table.column` in masking rules).
pub(crate) const MAX_GLOB_PARTS: usize = 3;

impl Glob {
    /// A glob from compiled parts: checks the shape only (1 to [`MAX_GLOB_PARTS`] non-empty
    /// parts); the folding was done by [`Glob::parse`] on the control plane and is not
    /// repeated. The lower-case copies are derived here rather than carried, so they always
    /// agree with the patterns.
    fn from_compiled(source: Option<Box<str>>, parts: Vec<Box<str>>) -> Result<Self, GlobError> {
        if parts.len() > MAX_GLOB_PARTS {
            return Err(GlobError::TooManyParts {
                max: MAX_GLOB_PARTS,
            });
        }
        if parts.is_empty() || parts.iter().any(|p| p.is_empty()) {
            return Err(GlobError::EmptyPart);
        }
        let source = source.unwrap_or_else(|| parts.join(".").into_boxed_str());
        let parts = parts
            .into_iter()
            .map(|pattern| Part {
                lower: pattern.to_lowercase().into_boxed_str(),
                pattern,
            })
            .collect();
        Ok(Self { source, parts })
    }

    /// Whether the source is the parts joined by dots, so the compiled form can leave it out.
    fn source_is_joined_parts(&self) -> bool {
        let mut rest = &*self.source;
        for (i, p) in self.parts.iter().enumerate() {
            if p.pattern.contains('.') {
                return false;
            }
            if i > 0 {
                match rest.strip_prefix('.') {
                    Some(r) => rest = r,
                    None => return false,
                }
            }
            match rest.strip_prefix(&*p.pattern) {
                Some(r) => rest = r,
                None => return false,
            }
        }
        rest.is_empty()
    }
}

impl Serialize for Glob {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        /// Borrows the parts, so serializing a large policy copies no pattern.
        struct Parts<'a>(&'a [Part]);
        impl Serialize for Parts<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_seq(self.0.iter().map(|p| &*p.pattern))
            }
        }
        if self.source_is_joined_parts() {
            return Parts(&self.parts).serialize(s);
        }
        let mut m = s.serialize_struct("Glob", 2)?;
        m.serialize_field("source", &*self.source)?;
        m.serialize_field("parts", &Parts(&self.parts))?;
        m.end()
    }
}

impl<'de> Deserialize<'de> for Glob {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Glob;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a compiled glob: a list of parts, or {source, parts}")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Glob, A::Error> {
                let mut parts = Vec::with_capacity(seq.size_hint().unwrap_or(2).min(4));
                while let Some(p) = seq.next_element::<Box<str>>()? {
                    parts.push(p);
                }
                Glob::from_compiled(None, parts).map_err(de::Error::custom)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Glob, A::Error> {
                let (mut source, mut parts) = (None, None);
                while let Some(key) = map.next_key::<Box<str>>()? {
                    match &*key {
                        "source" if source.is_none() => source = Some(map.next_value()?),
                        "parts" if parts.is_none() => parts = Some(map.next_value()?),
                        "source" | "parts" => return Err(de::Error::duplicate_field("parts")),
                        other => return Err(de::Error::unknown_field(other, &["source", "parts"])),
                    }
                }
                let source = source.ok_or_else(|| de::Error::missing_field("source"))?;
                let parts = parts.ok_or_else(|| de::Error::missing_field("parts"))?;
                Glob::from_compiled(Some(source), parts).map_err(de::Error::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// Why a glob was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GlobError {
    /// The glob was empty or had an empty part (`public.`).
    #[error("empty name part")]
    EmptyPart,
    /// More dot-separated parts than the name kind allows.
    #[error("too many name parts (at most {max})")]
    TooManyParts {
        /// The most parts this kind of name has.
        max: usize,
    },
    /// A double quote was opened and never closed.
    #[error("unterminated quoted identifier")]
    UnterminatedQuote,
    /// A quote appeared in the middle of an unquoted part (`ab"c"`).
    #[error("unexpected quote inside an unquoted name part")]
    StrayQuote,
}

impl Glob {
    /// Parses `text` as a glob of at most `max_parts` dot-separated parts.
    pub fn parse(text: &str, max_parts: usize) -> Result<Self, GlobError> {
        let mut parts = Vec::new();
        let mut chars = text.trim().chars().peekable();
        loop {
            let mut part = String::new();
            if chars.peek() == Some(&'"') {
                chars.next();
                loop {
                    match chars.next() {
                        None => return Err(GlobError::UnterminatedQuote),
                        Some('"') if chars.peek() == Some(&'"') => {
                            chars.next();
                            part.push('"');
                        }
                        Some('"') => break,
                        Some(c) => part.push(c),
                    }
                }
                if !matches!(chars.peek(), None | Some('.')) {
                    return Err(GlobError::StrayQuote);
                }
            } else {
                while let Some(&c) = chars.peek() {
                    match c {
                        '.' => break,
                        '"' => return Err(GlobError::StrayQuote),
                        c => {
                            // PostgreSQL folds only ASCII letters in unquoted identifiers.
                            part.push(c.to_ascii_lowercase());
                            chars.next();
                        }
                    }
                }
                if part.trim().is_empty() {
                    return Err(GlobError::EmptyPart);
                }
                part = part.trim().to_owned();
            }
            if part.is_empty() {
                return Err(GlobError::EmptyPart);
            }
            let lower = part.to_lowercase().into_boxed_str();
            parts.push(Part {
                pattern: part.into_boxed_str(),
                lower,
            });
            match chars.next() {
                None => break,
                Some('.') => continue,
                Some(_) => return Err(GlobError::StrayQuote),
            }
        }
        if parts.len() > max_parts {
            return Err(GlobError::TooManyParts { max: max_parts });
        }
        Ok(Self {
            source: text.into(),
            parts,
        })
    }

    /// The glob as written in the policy.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// How many dot-separated parts the glob has.
    pub(crate) fn part_count(&self) -> usize {
        self.parts.len()
    }

    /// Whether the already-folded name `parts` (e.g. `["public", "orders"]`) matches.
    ///
    /// The glob's parts are aligned to the end of the name; a name with fewer parts than the
    /// glob (an unqualified name against `schema.table`) does not match; callers resolve
    /// unqualified names to candidate schemas first.
    pub fn matches(&self, name: &[&str], case: Case) -> bool {
        if name.len() < self.parts.len() {
            return false;
        }
        let offset = name.len() - self.parts.len();
        self.parts
            .iter()
            .zip(&name[offset..])
            .all(|(p, n)| match case {
                Case::Exact => wildcard(&p.pattern, n),
                Case::Insensitive => {
                    // Names are short; lower-casing one here is cheaper than keeping two copies of
                    // every analysed name.
                    if n.chars().any(char::is_uppercase) {
                        wildcard(&p.lower, &n.to_lowercase())
                    } else {
                        wildcard(&p.lower, n)
                    }
                }
            })
    }
}

impl fmt::Display for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

/// `*` / `?` matching; bytes when both sides are ASCII (the usual case), chars otherwise.
pub(crate) fn wildcard(pattern: &str, text: &str) -> bool {
    if pattern.is_ascii() && text.is_ascii() {
        wildcard_slice(pattern.as_bytes(), text.as_bytes(), b'*', b'?')
    } else {
        let p: Vec<char> = pattern.chars().collect();
        let t: Vec<char> = text.chars().collect();
        wildcard_slice(&p, &t, '*', '?')
    }
}

/// The classic linear-time backtracking glob match (one remembered star).
fn wildcard_slice<T: PartialEq + Copy>(p: &[T], t: &[T], star_c: T, any_c: T) -> bool {
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == star_c {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && (p[pi] == any_c || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == star_c {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(s: &str) -> Glob {
        Glob::parse(s, 3).unwrap()
    }

    #[test]
    fn wildcards() {
        assert!(wildcard("*", ""));
        assert!(wildcard("a*c", "abbbc"));
        assert!(wildcard("a?c", "abc"));
        assert!(!wildcard("a?c", "ac"));
        assert!(wildcard("*_log", "audit_log"));
        assert!(!wildcard("*_log", "audit_logs"));
        assert!(wildcard("a*b*c", "axxbyyc"));
    }

    #[test]
    fn folding_and_quotes() {
        assert!(g("Public.Secrets").matches(&["public", "secrets"], Case::Exact));
        assert!(!g("public.secrets").matches(&["public", "Secrets"], Case::Exact));
        assert!(g("public.secrets").matches(&["public", "Secrets"], Case::Insensitive));
        assert!(g("\"Audit\".\"Log\"").matches(&["Audit", "Log"], Case::Exact));
        assert!(!g("\"Audit\".\"Log\"").matches(&["audit", "log"], Case::Exact));
        assert!(g("\"a.b\".c").matches(&["a.b", "c"], Case::Exact));
        assert!(g("secrets").matches(&["any", "secrets"], Case::Exact));
        assert!(!g("public.secrets").matches(&["secrets"], Case::Exact));
    }

    #[test]
    fn compiled_form_round_trips_without_parsing() {
        use serde_json::json;
        for (text, compiled) in [
            ("public.secret_*", json!(["public", "secret_*"])),
            ("secrets", json!(["secrets"])),
            (
                "Public.\"Log?\"",
                json!({"source": "Public.\"Log?\"", "parts": ["public", "Log?"]}),
            ),
            (
                "\"a.b\".c",
                json!({"source": "\"a.b\".c", "parts": ["a.b", "c"]}),
            ),
            (" x.y", json!({"source": " x.y", "parts": ["x", "y"]})),
        ] {
            let g = g(text);
            let v = serde_json::to_value(&g).unwrap();
            assert_eq!(v, compiled, "{text}");
            let back: Glob = serde_json::from_value(v).unwrap();
            assert_eq!(back, g, "{text}");
        }
        let back: Glob = serde_json::from_value(json!(["public", "Log?"])).unwrap();
        assert!(back.matches(&["public", "log1"], Case::Insensitive));
        assert!(!back.matches(&["public", "log1"], Case::Exact));
        for bad in [
            json!([]),
            json!(["a", ""]),
            json!(["a", "b", "c", "d"]),
            json!({"source": "x", "parts": []}),
            json!({"source": "x"}),
            json!({"source": "x", "parts": ["a"], "lower": ["a"]}),
            json!("a.b"),
        ] {
            assert!(
                serde_json::from_value::<Glob>(bad.clone()).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn rejects_malformed() {
        assert_eq!(Glob::parse("", 2), Err(GlobError::EmptyPart));
        assert_eq!(Glob::parse("public.", 2), Err(GlobError::EmptyPart));
        assert_eq!(Glob::parse("\"open", 2), Err(GlobError::UnterminatedQuote));
        assert_eq!(Glob::parse("a\"b\"", 2), Err(GlobError::StrayQuote));
        assert_eq!(
            Glob::parse("a.b.c", 2),
            Err(GlobError::TooManyParts { max: 2 })
        );
    }
}
