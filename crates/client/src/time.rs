//! Epoch milliseconds as a UTC calendar time, for the timestamps the CLI prints and the
//! control plane exports (no time-zone database needed: always UTC).

/// A UTC calendar time, proleptic Gregorian.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Utc {
    pub year: i64,
    pub month: i64,
    pub day: i64,
    pub hour: i64,
    pub minute: i64,
    pub second: i64,
    pub millis: i64,
}

impl Utc {
    /// The UTC time `ms` milliseconds after 1970-01-01T00:00:00Z (before it when negative).
    pub fn from_epoch_ms(ms: i64) -> Self {
        let secs = ms.div_euclid(1000);
        let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
        let (year, month, day) = civil_from_days(days);
        Self {
            year,
            month,
            day,
            hour: rem / 3600,
            minute: rem % 3600 / 60,
            second: rem % 60,
            millis: ms.rem_euclid(1000),
        }
    }
}

/// The date of a day count since 1970-01-01 (Howard Hinnant's days-to-civil).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::Utc;

    #[test]
    fn epoch_milliseconds_become_utc_calendar_times() {
        let t = Utc::from_epoch_ms(1_796_316_561_042);
        assert_eq!(
            (t.year, t.month, t.day, t.hour, t.minute, t.second, t.millis),
            (2026, 12, 3, 16, 49, 21, 42)
        );
        let leap = Utc::from_epoch_ms(951_782_400_000);
        assert_eq!((leap.year, leap.month, leap.day), (2000, 2, 29));
        let before = Utc::from_epoch_ms(-1);
        assert_eq!(
            (
                before.year,
                before.month,
                before.day,
                before.second,
                before.millis
            ),
            (1969, 12, 31, 59, 999)
        );
    }
}
