//! The email detector: `local@domain.tld` around each `@`.

use std::ops::Range;

use super::{at, is_alnum};

fn is_local_char(b: u8) -> bool {
    is_alnum(b) || matches!(b, b'.' | b'_' | b'%' | b'+' | b'-')
}

/// The next email at or after `from`. Balanced wants two or more domain labels and an
/// alphabetic top-level label; strict also takes one label (`root@localhost`) and a top-level
/// label with digits or dashes (`xn--p1ai`), as long as it holds a letter.
pub(super) fn next_email(hay: &[u8], from: usize, strict: bool) -> Option<Range<usize>> {
    for at_sign in memchr::memchr_iter(b'@', hay.get(from..)?).map(|i| i + from) {
        // Local part: up to 64 characters back, not starting or ending with '.'.
        let mut start = at_sign;
        while start > from && at_sign - start < 64 && is_local_char(hay[start - 1]) {
            start -= 1;
        }
        while start < at_sign && hay[start] == b'.' {
            start += 1;
        }
        if start == at_sign || hay[at_sign - 1] == b'.' {
            continue;
        }
        // Domain: labels of [A-Za-z0-9-], at least two, the last alphabetic and 2+ long.
        let mut end = at_sign + 1;
        let mut labels = 0;
        let mut last_label = end..end;
        loop {
            let label_start = end;
            while end < hay.len() && (is_alnum(hay[end]) || hay[end] == b'-') {
                end += 1;
            }
            if end == label_start || hay[label_start] == b'-' || hay[end - 1] == b'-' {
                break; // an empty or dash-edged label ends the domain before it
            }
            labels += 1;
            last_label = label_start..end;
            if at(hay, end) == b'.' && is_alnum(at(hay, end + 1)) {
                end += 1;
            } else {
                break;
            }
        }
        let tld = &hay[last_label.clone()];
        let tld_ok = if strict {
            tld.iter().any(u8::is_ascii_alphabetic)
        } else {
            labels >= 2 && tld.iter().all(u8::is_ascii_alphabetic)
        };
        if tld.len() >= 2 && tld_ok {
            return Some(start..last_label.end);
        }
    }
    None
}
