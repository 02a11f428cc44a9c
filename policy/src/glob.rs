//! Name globs (`schema.table`, `*` and `?`) folded per PostgreSQL identifier rules.

use std::fmt;

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
/// In a snapshot a glob travels compiled: `{"source": "Public.\"Log?\"", "parts": ["public",
/// "Log?"]}`, its parts already split, unquoted and folded, so loading one parses nothing.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "CompiledGlob")]
pub struct Glob {
    source: Box<str>,
    parts: Vec<Part>,
}

/// The most parts any glob has (`schema.table.column` in masking rules).
pub(crate) const MAX_GLOB_PARTS: usize = 3;

/// The wire form of a [`Glob`]: the source (for messages) and the folded parts.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CompiledGlob {
    source: Box<str>,
    parts: Vec<Box<str>>,
}

impl TryFrom<CompiledGlob> for Glob {
    type Error = GlobError;

    /// Checks the shape only (1 to [`MAX_GLOB_PARTS`] non-empty parts); the folding was done
    /// by [`Glob::parse`] on the control plane and is not repeated. The lower-case copies
    /// are derived here rather than carried, so they always agree with the patterns.
    fn try_from(g: CompiledGlob) -> Result<Self, GlobError> {
        if g.parts.len() > MAX_GLOB_PARTS {
            return Err(GlobError::TooManyParts {
                max: MAX_GLOB_PARTS,
            });
        }
        if g.parts.is_empty() || g.parts.iter().any(|p| p.is_empty()) {
            return Err(GlobError::EmptyPart);
        }
        let parts = g
            .parts
            .into_iter()
            .map(|pattern| Part {
                lower: pattern.to_lowercase().into_boxed_str(),
                pattern,
            })
            .collect();
        Ok(Self {
            source: g.source,
            parts,
        })
    }
}

impl Serialize for Glob {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        /// Borrows the glob, so serializing a large policy copies no pattern.
        #[derive(Serialize)]
        struct View<'a> {
            source: &'a str,
            parts: PartsView<'a>,
        }
        struct PartsView<'a>(&'a [Part]);
        impl Serialize for PartsView<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_seq(self.0.iter().map(|p| &*p.pattern))
            }
        }
        View {
            source: &self.source,
            parts: PartsView(&self.parts),
        }
        .serialize(s)
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
        let g = g("Public.\"Log?\"");
        let v = serde_json::to_value(&g).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"source": "Public.\"Log?\"", "parts": ["public", "Log?"]})
        );
        let back: Glob = serde_json::from_value(v).unwrap();
        assert_eq!(back, g);
        assert!(back.matches(&["public", "log1"], Case::Insensitive));
        for bad in [
            serde_json::json!({"source": "x", "parts": []}),
            serde_json::json!({"source": "x", "parts": ["a", ""]}),
            serde_json::json!({"source": "x", "parts": ["a", "b", "c", "d"]}),
            serde_json::json!({"source": "x", "parts": ["a"], "lower": ["a"]}),
        ] {
            assert!(serde_json::from_value::<Glob>(bad).is_err());
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
