//! The detectors against a generated corpus: seeded true positives (valid and edge-case SSNs and
//! ITINs, Luhn cards of every common length and grouping, emails, phones, IBANs, API keys) and
//! true negatives (numbers, dates, order ids, UUIDs, prose). Asserts recall and false-positive
//! bounds per detector and sensitivity; with `--nocapture` it prints the table BENCHMARKS.md
//! quotes:
//!
//! `cargo test -p sluice-mask --release --test detector_corpus -- --nocapture`

use sluice_mask::{DetectorKind, Detectors, Sensitivity};

/// SplitMix64: small, seeded, the same sequence everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    fn digits(&mut self, n: usize) -> String {
        (0..n)
            .map(|_| char::from(b'0' + self.below(10) as u8))
            .collect()
    }

    fn alnum(&mut self, n: usize) -> String {
        const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
        (0..n).map(|_| char::from(*self.pick(A))).collect()
    }

    fn upper_digits(&mut self, n: usize) -> String {
        const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
        (0..n).map(|_| char::from(*self.pick(A))).collect()
    }

    fn b64url(&mut self, n: usize) -> String {
        const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        (0..n).map(|_| char::from(*self.pick(A))).collect()
    }

    fn lower(&mut self, n: usize) -> String {
        (0..n)
            .map(|_| char::from(b'a' + self.below(26) as u8))
            .collect()
    }
}

/// A planted value: which detector should find it, whether it is an edge case (valid-looking
/// but failing a check balanced applies), and the text around it.
struct Positive {
    kind: DetectorKind,
    edge: bool,
    text: String,
    value: std::ops::Range<usize>,
}

const CONTEXTS: [(&str, &str); 8] = [
    ("", ""),
    ("value: ", ""),
    ("contact ", " today."),
    ("\"", "\""),
    ("(", ")"),
    ("a, ", ", b"),
    ("[", "]"),
    ("note\t", "\n"),
];

fn plant(rng: &mut Rng, kind: DetectorKind, edge: bool, v: &str) -> Positive {
    let (pre, post) = rng.pick(&CONTEXTS);
    Positive {
        kind,
        edge,
        text: format!("{pre}{v}{post}"),
        value: pre.len()..pre.len() + v.len(),
    }
}

fn luhn_complete(body: &str) -> String {
    let mut sum = 0;
    for (k, c) in body.bytes().rev().enumerate() {
        let d = u32::from(c - b'0');
        sum += if k % 2 == 0 {
            let x = d * 2;
            if x > 9 {
                x - 9
            } else {
                x
            }
        } else {
            d
        };
    }
    format!("{body}{}", (10 - sum % 10) % 10)
}

fn group(digits: &str, groups: &[usize], sep: char) -> String {
    let mut out = String::new();
    let mut i = 0;
    for (n, g) in groups.iter().enumerate() {
        if n > 0 {
            out.push(sep);
        }
        out.push_str(&digits[i..i + g]);
        i += g;
    }
    out
}

/// (prefix, length, groups) for issuer ranges of every common length.
const CARDS: [(&str, usize, &[usize]); 14] = [
    ("4", 16, &[4, 4, 4, 4]),
    ("4", 13, &[4, 4, 5]),
    ("4", 19, &[4, 4, 4, 4, 3]),
    ("51", 16, &[4, 4, 4, 4]),
    ("55", 16, &[4, 4, 4, 4]),
    ("2221", 16, &[4, 4, 4, 4]),
    ("2720", 16, &[4, 4, 4, 4]),
    ("34", 15, &[4, 6, 5]),
    ("37", 15, &[4, 6, 5]),
    ("6011", 16, &[4, 4, 4, 4]),
    ("65", 16, &[4, 4, 4, 4]),
    ("3530", 16, &[4, 4, 4, 4]),
    ("36", 14, &[4, 6, 4]),
    ("62", 19, &[4, 4, 4, 4, 3]),
];

/// Luhn-valid numbers outside the issuer table: private-label, fleet and new-range cards.
const ODD_CARDS: [(&str, usize, &[usize]); 4] = [
    ("7", 16, &[4, 4, 4, 4]),
    ("8", 16, &[4, 4, 4, 4]),
    ("1", 16, &[4, 4, 4, 4]),
    ("9", 18, &[4, 4, 4, 4, 2]),
];

fn card(rng: &mut Rng, table: &[(&str, usize, &[usize])]) -> String {
    let (prefix, len, groups) = rng.pick(table);
    let body = format!("{prefix}{}", rng.digits(len - prefix.len() - 1));
    let number = luhn_complete(&body);
    match rng.below(3) {
        0 => number,
        1 => group(&number, groups, ' '),
        _ => group(&number, groups, '-'),
    }
}

fn iban_check(cc: &str, bban: &str) -> String {
    let moved = format!("{bban}{cc}00");
    let mut rem = 0u32;
    for b in moved.bytes() {
        rem = match b {
            b'0'..=b'9' => (rem * 10 + u32::from(b - b'0')) % 97,
            _ => (rem * 100 + u32::from(b - b'A') + 10) % 97,
        };
    }
    format!("{cc}{:02}{bban}", 98 - rem)
}

/// Country, total length, BBAN pattern (`n` digit, `a` upper letter, `c` either).
const IBANS: [(&str, usize, &str); 8] = [
    ("DE", 22, "nnnnnnnnnnnnnnnnnn"),
    ("GB", 22, "aaaannnnnnnnnnnnnn"),
    ("FR", 27, "nnnnnnnnnnnnnnnnnnnnnnn"),
    ("ES", 24, "nnnnnnnnnnnnnnnnnnnn"),
    ("NL", 18, "aaaannnnnnnnnn"),
    ("IT", 27, "annnnnnnnnnnccccccccccc"),
    ("CH", 21, "nnnnnnnnnnnnnnnnn"),
    ("NO", 15, "nnnnnnnnnnn"),
];

/// Countries that joined the registry after the table was written (or use IBANs outside it).
const NEW_IBANS: [(&str, usize, &str); 5] = [
    ("NI", 28, "aaaannnnnnnnnnnnnnnnnnnn"),
    ("RU", 33, "nnnnnnnnnnnnnnnnnnnnnnnnnnnnn"),
    ("SD", 18, "nnnnnnnnnnnnnn"),
    ("LY", 25, "nnnnnnnnnnnnnnnnnnnnn"),
    ("MN", 20, "nnnnnnnnnnnnnnnn"),
];

fn iban(rng: &mut Rng, table: &[(&str, usize, &str)]) -> String {
    let (cc, len, pattern) = rng.pick(table);
    assert_eq!(pattern.len() + 4, *len);
    let bban: String = pattern
        .bytes()
        .map(|p| match p {
            b'n' => char::from(b'0' + rng.below(10) as u8),
            b'a' => char::from(b'A' + rng.below(26) as u8),
            _ => char::from(*rng.pick(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")),
        })
        .collect();
    let plain = iban_check(cc, &bban);
    if rng.below(2) == 0 {
        plain
    } else {
        plain
            .as_bytes()
            .chunks(4)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect::<Vec<_>>()
            .join(" ")
    }
}

fn ssn(rng: &mut Rng, edge: bool) -> String {
    if !edge {
        let area = loop {
            let a = rng.range(1, 899);
            if a != 666 {
                break a;
            }
        };
        return format!(
            "{area:03}-{:02}-{:04}",
            rng.range(1, 99),
            rng.range(1, 9999)
        );
    }
    match rng.below(6) {
        // ITIN: area 9xx, group 50–65 or 70–99.
        0 | 1 => format!(
            "9{:02}-{}-{:04}",
            rng.below(100),
            rng.pick(&[50, 55, 65, 70, 78, 88, 92, 99]),
            rng.below(10_000)
        ),
        2 => format!("000-{:02}-{:04}", rng.range(1, 99), rng.range(1, 9999)),
        3 => format!("666-{:02}-{:04}", rng.range(1, 99), rng.range(1, 9999)),
        4 => format!("{:03}-00-{:04}", rng.range(1, 899), rng.range(1, 9999)),
        _ => format!(
            "{:03} {:02} {:04}",
            rng.range(1, 899),
            rng.range(1, 99),
            rng.range(1, 9999)
        ),
    }
}

fn email(rng: &mut Rng, edge: bool) -> String {
    let local = match rng.below(4) {
        0 => rng.lower(6),
        1 => format!("{}.{}", rng.lower(4), rng.lower(7)),
        2 => format!("{}+{}", rng.lower(5), rng.lower(3)),
        _ => format!("{}_{}", rng.lower(3), rng.digits(2)),
    };
    if edge {
        return match rng.below(2) {
            0 => format!(
                "{local}@{}",
                rng.pick(&["localhost", "intranet", "mailhost"])
            ),
            _ => format!("{local}@{}.xn--p1ai", rng.lower(5)),
        };
    }
    let domain = match rng.below(3) {
        0 => format!("{}.com", rng.lower(7)),
        1 => format!("mail.{}.co.uk", rng.lower(5)),
        _ => format!("{}-{}.io", rng.lower(3), rng.lower(4)),
    };
    if rng.below(5) == 0 {
        format!("{local}@{domain}").to_uppercase()
    } else {
        format!("{local}@{domain}")
    }
}

fn phone(rng: &mut Rng, edge: bool) -> String {
    let code = |rng: &mut Rng| {
        if edge {
            format!("{}{}", rng.range(0, 1), rng.digits(2))
        } else {
            format!("{}{}", rng.range(2, 9), rng.digits(2))
        }
    };
    let (a, e, n) = (code(rng), code(rng), rng.digits(4));
    if edge {
        return match rng.below(2) {
            0 => format!("{a}-{e}-{n}"),
            _ => format!("({a}) {e}-{n}"),
        };
    }
    match rng.below(7) {
        0 => format!("({a}) {e}-{n}"),
        1 => format!("{a}-{e}-{n}"),
        2 => format!("{a}.{e}.{n}"),
        3 => format!("1-{a}-{e}-{n}"),
        4 => format!("+1 {a} {e} {n}"),
        5 => format!("+44 20 {} {}", rng.digits(4), rng.digits(4)),
        _ => format!("+49 30 {}", rng.digits(7)),
    }
}

fn api_key(rng: &mut Rng, edge: bool) -> (String, Option<String>) {
    if edge {
        return match rng.below(3) {
            0 => (format!("sk_test_{}", rng.alnum(24)), None),
            1 => {
                let v = rng.alnum(12);
                (format!("DB_PASSWORD={v}"), Some(v))
            }
            _ => {
                let v = rng.b64url(20);
                (format!("{{\"auth_token\": \"{v}\"}}"), Some(v))
            }
        };
    }
    let k = match rng.below(10) {
        0 => format!("AKIA{}", rng.upper_digits(16)),
        1 => format!("ghp_{}", rng.alnum(36)),
        2 => format!("github_pat_{}", rng.alnum(82)),
        3 => format!("sk_live_{}", rng.alnum(24)),
        4 => format!("xoxb-{}-{}", rng.digits(12), rng.alnum(24)),
        5 => format!(
            "eyJ{}.eyJ{}.{}",
            rng.b64url(20),
            rng.b64url(30),
            rng.b64url(43)
        ),
        6 => format!(
            "-----BEGIN RSA PRIVATE KEY-----\nMIIE{}\n-----END RSA PRIVATE KEY-----",
            rng.alnum(60)
        ),
        7 => format!("sk-proj-{}", rng.b64url(40)),
        8 => format!("AIza{}", rng.b64url(35)),
        _ => format!("glpat-{}", rng.b64url(20)),
    };
    (k, None)
}

fn positives(rng: &mut Rng, per_kind: usize) -> Vec<Positive> {
    let mut out = Vec::new();
    for i in 0..per_kind {
        let edge = i % 4 == 3; // a quarter are edge cases
        let v = ssn(rng, edge);
        out.push(plant(rng, DetectorKind::Ssn, edge, &v));
        let v = if edge {
            card(rng, &ODD_CARDS)
        } else {
            card(rng, &CARDS)
        };
        out.push(plant(rng, DetectorKind::Card, edge, &v));
        let v = email(rng, edge);
        out.push(plant(rng, DetectorKind::Email, edge, &v));
        let v = phone(rng, edge);
        out.push(plant(rng, DetectorKind::Phone, edge, &v));
        let v = if edge {
            iban(rng, &NEW_IBANS)
        } else {
            iban(rng, &IBANS)
        };
        out.push(plant(rng, DetectorKind::Iban, edge, &v));
        let (text, secret) = api_key(rng, edge);
        let mut p = plant(rng, DetectorKind::ApiKey, edge, &text);
        if let Some(s) = secret {
            let at = p.text[p.value.clone()].find(&s).unwrap() + p.value.start;
            p.value = at..at + s.len();
        }
        out.push(p);
    }
    out
}

const WORDS: [&str; 16] = [
    "the", "order", "shipped", "customer", "invoice", "total", "was", "updated", "after", "review",
    "on", "for", "account", "balance", "pending", "report",
];

/// A true negative, and whether it is a look-alike (shaped like what strict takes).
fn negative(rng: &mut Rng) -> (String, bool) {
    let which = rng.below(17);
    let text = match which {
        // Look-alikes strict pays for: part numbers in phone groups, `pkg@tag`, status text.
        14 => format!(
            "part {}{}-{}-{}",
            rng.range(0, 1),
            rng.digits(2),
            rng.digits(3),
            rng.digits(4)
        ),
        15 => format!(
            "npm install {}@{}",
            rng.lower(6),
            rng.pick(&["latest", "next", "beta", "1.2.3"])
        ),
        16 => format!(
            "{}: {}",
            rng.pick(&["token", "password", "status", "secret"]),
            rng.pick(&["expired", "reset", "changed", "none", "rotated", "ok"])
        ),
        0 => rng.range(0, 999_999_999).to_string(),
        1 => format!("{}.{:02}", rng.range(0, 99_999), rng.below(100)),
        2 => format!(
            "${},{:03}.{:02}",
            rng.range(1, 999),
            rng.below(1000),
            rng.below(100)
        ),
        3 => format!(
            "{}-{:02}-{:02}",
            rng.range(1990, 2030),
            rng.range(1, 12),
            rng.range(1, 28)
        ),
        4 => format!(
            "{:02}/{:02}/{}",
            rng.range(1, 12),
            rng.range(1, 28),
            rng.range(1990, 2030)
        ),
        5 => format!(
            "{}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            rng.range(1990, 2030),
            rng.range(1, 12),
            rng.range(1, 28),
            rng.below(24),
            rng.below(60),
            rng.below(60)
        ),
        6 => format!("ORD-{}-{:06}", rng.range(2000, 2030), rng.below(1_000_000)),
        7 => format!("INV{}", rng.digits(8)),
        8 => {
            let h = format!("{:016x}{:016x}", rng.next(), rng.next());
            format!(
                "{}-{}-{}-{}-{}",
                &h[..8],
                &h[8..12],
                &h[12..16],
                &h[16..20],
                &h[20..32]
            )
        }
        9 => format!(
            "{}.{}.{}.{}",
            rng.below(256),
            rng.below(256),
            rng.below(256),
            rng.below(256)
        ),
        10 => format!("v{}.{}.{}", rng.below(20), rng.below(50), rng.below(100)),
        // Long ids: 16–19 digits (a tenth pass Luhn by chance).
        11 => {
            let n = rng.range(16, 19) as usize;
            rng.digits(n)
        }
        12 => format!("{:016x}{:016x}", rng.next(), rng.next()),
        _ => {
            let n = rng.range(5, 12) as usize;
            let words: Vec<&str> = (0..n).map(|_| *rng.pick(&WORDS)).collect();
            format!("{} {}.", words.join(" "), rng.range(1, 500))
        }
    };
    (text, which >= 14)
}

/// One row of the table: a detector at one sensitivity.
struct Score {
    kind: DetectorKind,
    sensitivity: Sensitivity,
    valid: (usize, usize),
    edge: (usize, usize),
    fp: (usize, usize),
    fp_alike: (usize, usize),
}

impl Score {
    fn recall_valid(&self) -> f64 {
        1.0 - rate(self.valid)
    }
}

/// Missed / total as a fraction.
fn rate((missed, total): (usize, usize)) -> f64 {
    if total == 0 {
        0.0
    } else {
        missed as f64 / total as f64
    }
}

fn covers(set: Detectors, text: &str, value: &std::ops::Range<usize>) -> bool {
    set.find_all(text.as_bytes())
        .iter()
        .any(|s| s.range.start <= value.start && s.range.end >= value.end)
}

fn score(pos: &[Positive], neg: &[(String, bool)]) -> Vec<Score> {
    let mut rows = Vec::new();
    for s in Sensitivity::ALL {
        for kind in DetectorKind::ALL {
            let set = Detectors::NONE.with(kind).with_sensitivity(s);
            let mut row = Score {
                kind,
                sensitivity: s,
                valid: (0, 0),
                edge: (0, 0),
                fp: (0, 0),
                fp_alike: (0, 0),
            };
            for p in pos.iter().filter(|p| p.kind == kind) {
                let bucket = if p.edge {
                    &mut row.edge
                } else {
                    &mut row.valid
                };
                bucket.1 += 1;
                if !covers(set, &p.text, &p.value) {
                    if std::env::var_os("CORPUS_MISSES").is_some() {
                        println!("miss {} {}: {:?}", kind.name(), s.name(), p.text);
                    }
                    bucket.0 += 1;
                }
            }
            for (n, alike) in neg {
                let bucket = if *alike {
                    &mut row.fp_alike
                } else {
                    &mut row.fp
                };
                bucket.1 += 1;
                if !set.find_all(n.as_bytes()).is_empty() {
                    bucket.0 += 1;
                }
            }
            rows.push(row);
        }
    }
    rows
}

fn pct(r: (usize, usize)) -> String {
    format!("{:.2}% ({}/{})", 100.0 * rate(r), r.0, r.1)
}

#[test]
fn detector_corpus() {
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let pos = positives(&mut rng, 2000);
    let neg: Vec<(String, bool)> = (0..20_000).map(|_| negative(&mut rng)).collect();
    let rows = score(&pos, &neg);

    println!(
        "| detector | sensitivity | FN valid | FN edge cases | FP ordinary negatives | FP look-alikes |"
    );
    println!("|---|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            r.kind.name(),
            r.sensitivity.name(),
            pct(r.valid),
            pct(r.edge),
            pct(r.fp),
            pct(r.fp_alike)
        );
    }

    for r in &rows {
        let what = format!("{} {}", r.kind.name(), r.sensitivity.name());
        // Every setting finds the ordinary, valid identifiers.
        assert!(
            r.recall_valid() >= 0.99,
            "{what}: recall on valid {}",
            pct(r.valid)
        );
        match r.sensitivity {
            // Strict errs toward masking: it also finds the edge cases...
            Sensitivity::Strict => {
                assert!(rate(r.edge) <= 0.01, "{what}: edge FN {}", pct(r.edge));
                // ...at a bounded cost in masked ordinary values (look-alikes are its price).
                assert!(rate(r.fp) <= 0.01, "{what}: FP {}", pct(r.fp));
            }
            // Balanced keeps false positives down and misses the look-alikes by design.
            Sensitivity::Balanced => {
                assert!(rate(r.fp) <= 0.005, "{what}: FP {}", pct(r.fp));
                assert!(
                    rate(r.fp_alike) <= 0.005,
                    "{what}: FP on look-alikes {}",
                    pct(r.fp_alike)
                );
            }
        }
    }
}
