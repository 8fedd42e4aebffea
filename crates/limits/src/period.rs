//! Budget periods: the UTC day and the UTC month a moment falls in.

/// The day and month windows of one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Periods {
    /// `d2026-11-27`
    pub day: String,
    pub day_start_ms: i64,
    pub day_end_ms: i64,
    /// `m2026-11`
    pub month: String,
    pub month_start_ms: i64,
    pub month_end_ms: i64,
    /// The minute (since the epoch) for rate limits, and when it ends.
    pub minute: i64,
    pub minute_end_ms: i64,
}

const DAY_MS: i64 = 86_400_000;

impl Periods {
    pub fn at(now_ms: i64) -> Self {
        let days = now_ms.div_euclid(DAY_MS);
        let (y, m, d) = civil_from_days(days);
        let month_start = days_from_civil(y, m, 1);
        let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
        let month_end = days_from_civil(ny, nm, 1);
        let minute = now_ms.div_euclid(60_000);
        Self {
            day: format!("d{y:04}-{m:02}-{d:02}"),
            day_start_ms: days * DAY_MS,
            day_end_ms: (days + 1) * DAY_MS,
            month: format!("m{y:04}-{m:02}"),
            month_start_ms: month_start * DAY_MS,
            month_end_ms: month_end * DAY_MS,
            minute,
            minute_end_ms: (minute + 1) * 60_000,
        }
    }
}

// Howard Hinnant's civil calendar algorithms (public domain): days since 1970-01-01 <-> (year, month, day).
// Written out rather than pulling in a date crate for two conversions.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_and_months_in_utc() {
        // 2026-11-27T10:00:00Z
        let p = Periods::at(1_795_773_600_000);
        assert_eq!((p.day.as_str(), p.month.as_str()), ("d2026-11-27", "m2026-11"));
        assert_eq!(p.day_start_ms, 1_795_737_600_000);
        assert_eq!(p.day_end_ms - p.day_start_ms, DAY_MS);
        assert_eq!(p.month_start_ms, 1_793_491_200_000); // 2026-11-01
        assert_eq!(p.month_end_ms, 1_796_083_200_000); // 2026-12-01
        // Leap day and year end.
        assert_eq!(Periods::at(1_709_164_800_000).day, "d2024-02-29");
        let dec = Periods::at(1_798_761_600_000 - 1); // 2026-12-31T23:59:59.999Z
        assert_eq!((dec.day.as_str(), dec.month.as_str()), ("d2026-12-31", "m2026-12"));
        assert_eq!(dec.month_end_ms, 1_798_761_600_000);
        for days in [-1000, 0, 59, 60, 365, 10_000, 20_000, 40_000] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }
}
