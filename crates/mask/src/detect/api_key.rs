//! The API key detector: AWS, GitHub, GitLab, Google, OpenAI, Stripe and Slack tokens, PEM
//! private keys, JWTs, and (strict) the value of a `password=` / `"token": ...` assignment.

use std::ops::Range;

use memchr::memmem;

use super::{at, before, is_alnum, C_ASSIGN, C_DASH, C_UNDERSCORE, C_UPPER};

fn is_b64url(b: u8) -> bool {
    is_alnum(b) || b == b'-' || b == b'_'
}

/// Run of bytes matching `f` starting at `i`.
fn run(hay: &[u8], i: usize, f: impl Fn(u8) -> bool) -> usize {
    hay.get(i..)
        .map_or(0, |s| s.iter().take_while(|&&b| f(b)).count())
}

/// Substring searchers for the key prefixes, built once.
struct Finders {
    akia: memmem::Finder<'static>,
    asia: memmem::Finder<'static>,
    k_live: memmem::Finder<'static>,
    k_test: memmem::Finder<'static>,
    sk_dash: memmem::Finder<'static>,
    aiza: memmem::Finder<'static>,
    glpat: memmem::Finder<'static>,
    xox: memmem::Finder<'static>,
    begin: memmem::Finder<'static>,
    eyj: memmem::Finder<'static>,
}

fn finders() -> &'static Finders {
    static FINDERS: std::sync::OnceLock<Finders> = std::sync::OnceLock::new();
    FINDERS.get_or_init(|| Finders {
        akia: memmem::Finder::new(b"AKIA"),
        asia: memmem::Finder::new(b"ASIA"),
        k_live: memmem::Finder::new(b"k_live_"),
        k_test: memmem::Finder::new(b"k_test_"),
        sk_dash: memmem::Finder::new(b"sk-"),
        aiza: memmem::Finder::new(b"AIza"),
        glpat: memmem::Finder::new(b"glpat-"),
        xox: memmem::Finder::new(b"xox"),
        begin: memmem::Finder::new(b"-----BEGIN "),
        eyj: memmem::Finder::new(b"eyJ"),
    })
}

/// The next key at or after `from`, of the shapes `classes` allows.
pub(super) fn next_api_key(
    hay: &[u8],
    from: usize,
    classes: u8,
    strict: bool,
) -> Option<Range<usize>> {
    let rest = hay.get(from..)?;
    let f = finders();
    let upper = classes & C_UPPER != 0;
    let underscore = classes & C_UNDERSCORE != 0;
    let dash = classes & C_DASH != 0;
    let assign = strict && classes & C_ASSIGN != 0;
    // Each shape's earliest match; the earliest overall wins.
    let candidates = [
        upper.then(|| aws_key(f, hay, from, rest)).flatten(),
        upper.then(|| google_key(f, hay, from, rest)).flatten(),
        underscore.then(|| github_token(hay, from, rest)).flatten(),
        underscore
            .then(|| stripe_key(f, hay, from, rest, strict))
            .flatten(),
        dash.then(|| prefixed(&f.sk_dash, hay, from, rest, 3, 20))
            .flatten(),
        dash.then(|| prefixed(&f.glpat, hay, from, rest, 6, 20))
            .flatten(),
        dash.then(|| slack_token(f, hay, from, rest)).flatten(),
        dash.then(|| pem_private_key(f, hay, from, rest)).flatten(),
        upper.then(|| jwt(f, hay, from, rest)).flatten(),
        assign.then(|| secret_assignment(hay, from, rest)).flatten(),
    ];
    candidates.into_iter().flatten().min_by_key(|r| r.start)
}

/// A prefix found by `finder` (`prefix_len` bytes, not glued to a preceding letter or digit)
/// and at least `min_body` of `[A-Za-z0-9_-]`: OpenAI's `sk-`, GitLab's `glpat-`.
fn prefixed(
    finder: &memmem::Finder<'_>,
    hay: &[u8],
    from: usize,
    rest: &[u8],
    prefix_len: usize,
    min_body: usize,
) -> Option<Range<usize>> {
    finder.find_iter(rest).map(|k| k + from).find_map(|s| {
        let body = run(hay, s + prefix_len, is_b64url);
        (!is_alnum(before(hay, s)) && body >= min_body).then_some(s..s + prefix_len + body)
    })
}

/// Google API keys: `AIza` + 35 of `[A-Za-z0-9_-]`.
fn google_key(f: &Finders, hay: &[u8], from: usize, rest: &[u8]) -> Option<Range<usize>> {
    prefixed(&f.aiza, hay, from, rest, 4, 35)
}

/// Names whose assigned value is a secret (matched at the end of the lowercased name, so
/// `DB_PASSWORD`, `client_secret` and `apiKey` count).
const SECRET_NAMES: [&[u8]; 9] = [
    b"password",
    b"passwd",
    b"pwd",
    b"secret",
    b"token",
    b"apikey",
    b"api_key",
    b"access_key",
    b"private_key",
];

/// Strict only: `name = value`, `name: value`, `"name": "value"`, `?name=value&` where the name
/// ends in one of [`SECRET_NAMES`]: the value (6 or more bytes up to a space, quote, `,`, `;`,
/// `&` or `}`).
fn secret_assignment(hay: &[u8], from: usize, rest: &[u8]) -> Option<Range<usize>> {
    for p in memchr::memchr2_iter(b'=', b':', rest).map(|k| k + from) {
        let mut n = p;
        while n > 0 && hay[n - 1] == b' ' {
            n -= 1;
        }
        if n > 0 && matches!(hay[n - 1], b'"' | b'\'') {
            n -= 1;
        }
        // Every name in the list ends in d, t, n or y: most `:` and `=` stop here.
        if n == 0 || !matches!(hay[n - 1] | 0x20, b'd' | b't' | b'n' | b'y') {
            continue;
        }
        let mut s = n;
        while s > 0 && n - s < 64 && (is_alnum(hay[s - 1]) || matches!(hay[s - 1], b'_' | b'-')) {
            s -= 1;
        }
        let name = &hay[s..n];
        let secret = SECRET_NAMES
            .iter()
            .any(|k| name.len() >= k.len() && name[name.len() - k.len()..].eq_ignore_ascii_case(k));
        if !secret {
            continue;
        }
        let mut v = p + 1;
        while at(hay, v) == b' ' {
            v += 1;
        }
        if matches!(at(hay, v), b'"' | b'\'') {
            v += 1;
        }
        let len = run(hay, v, |b| {
            !b.is_ascii_whitespace() && !matches!(b, b'"' | b'\'' | b',' | b';' | b'&' | b'}')
        });
        if len >= 6 {
            return Some(v..v + len);
        }
    }
    None
}

/// `AKIA`/`ASIA` + 16 of `[0-9A-Z]`.
fn aws_key(f: &Finders, hay: &[u8], from: usize, rest: &[u8]) -> Option<Range<usize>> {
    [&f.akia, &f.asia]
        .into_iter()
        .filter_map(|finder| {
            finder.find_iter(rest).map(|k| k + from).find(|&s| {
                run(hay, s + 4, |b| b.is_ascii_digit() || b.is_ascii_uppercase()) == 16
                    && !is_alnum(before(hay, s))
            })
        })
        .min()
        .map(|s| s..s + 20)
}

/// `gh[pousr]_` + 36 alphanumerics, or `github_pat_` + 82 of `[A-Za-z0-9_]`.
fn github_token(hay: &[u8], from: usize, rest: &[u8]) -> Option<Range<usize>> {
    for u in memchr::memchr_iter(b'_', rest).map(|k| k + from) {
        if u >= 3 && &hay[u - 3..u - 1] == b"gh" && b"pousr".contains(&hay[u - 1]) {
            let s = u - 3;
            if !is_alnum(before(hay, s)) && run(hay, u + 1, is_alnum) >= 36 {
                return Some(s..u + 1 + run(hay, u + 1, is_alnum));
            }
        }
        if u >= 6 && &hay[u - 6..u] == b"github" && hay.get(u..u + 5) == Some(b"_pat_") {
            let s = u - 6;
            let body = run(hay, u + 5, |b| is_alnum(b) || b == b'_');
            if !is_alnum(before(hay, s)) && body >= 40 {
                return Some(s..u + 5 + body);
            }
        }
    }
    None
}

/// `sk_live_` / `rk_live_` (strict: also `_test_`) + at least 10 alphanumerics.
fn stripe_key(
    f: &Finders,
    hay: &[u8],
    from: usize,
    rest: &[u8],
    strict: bool,
) -> Option<Range<usize>> {
    let test = strict
        .then(|| f.k_test.find_iter(rest))
        .into_iter()
        .flatten();
    let mut found: Option<Range<usize>> = None;
    for k in f.k_live.find_iter(rest).chain(test).map(|k| k + from) {
        let Some(s) = k.checked_sub(1) else {
            continue;
        };
        let body = run(hay, k + 7, is_alnum);
        if matches!(hay[s], b's' | b'r')
            && !is_alnum(before(hay, s))
            && body >= 10
            && found.as_ref().is_none_or(|r| s < r.start)
        {
            found = Some(s..k + 7 + body);
        }
    }
    found
}

/// `xox[abpr]-` + at least 10 of `[A-Za-z0-9-]`.
fn slack_token(f: &Finders, hay: &[u8], from: usize, rest: &[u8]) -> Option<Range<usize>> {
    for s in f.xox.find_iter(rest).map(|k| k + from) {
        if b"abpr".contains(&at(hay, s + 3)) && at(hay, s + 4) == b'-' && !is_alnum(before(hay, s))
        {
            let body = run(hay, s + 5, |b| is_alnum(b) || b == b'-');
            if body >= 10 {
                return Some(s..s + 5 + body);
            }
        }
    }
    None
}

/// `-----BEGIN ... PRIVATE KEY-----` through its `-----END ...-----` line, or to the end of the
/// buffer if the end line is missing (fail closed).
fn pem_private_key(f: &Finders, hay: &[u8], from: usize, rest: &[u8]) -> Option<Range<usize>> {
    for s in f.begin.find_iter(rest).map(|k| k + from) {
        let label_start = s + 11;
        let label_len = memmem::find(&hay[label_start..], b"-----")?;
        let label = &hay[label_start..label_start + label_len];
        if label.len() > 40 || memmem::find(label, b"PRIVATE KEY").is_none() {
            continue;
        }
        let body = label_start + label_len + 5;
        let end = match memmem::find(&hay[body..], b"-----END ") {
            Some(e) => {
                let e = body + e + 9;
                memmem::find(&hay[e..], b"-----").map_or(hay.len(), |k| e + k + 5)
            }
            None => hay.len(),
        };
        return Some(s..end);
    }
    None
}

/// `eyJ<b64url>.eyJ<b64url>.<b64url>`: a JWT (header and payload are JSON objects).
fn jwt(f: &Finders, hay: &[u8], from: usize, rest: &[u8]) -> Option<Range<usize>> {
    for s in f.eyj.find_iter(rest).map(|k| k + from) {
        if is_b64url(before(hay, s)) {
            continue;
        }
        let h = run(hay, s, is_b64url);
        let p = s + h;
        if h < 10 || at(hay, p) != b'.' || hay.get(p + 1..p + 4) != Some(b"eyJ") {
            continue;
        }
        let pl = run(hay, p + 1, is_b64url);
        let q = p + 1 + pl;
        if pl < 10 || at(hay, q) != b'.' {
            continue;
        }
        let sig = run(hay, q + 1, is_b64url);
        return Some(s..q + 1 + sig);
    }
    None
}
