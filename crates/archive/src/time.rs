//! UTC days: partition names and bounds, without a calendar crate.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::ArchiveError;

const DAY_SECS: i64 = 86_400;
/// 0001-01-01 .. 9999-12-31 is what names of the form `pYYYYMMDD` can hold; the archive
/// only takes 1970 on (SystemTime before the epoch is refused).
const LAST_DAY: i64 = 2_932_896; // 9999-12-31

/// A UTC calendar day, as days since 1970-01-01.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Day(pub i64);

impl Day {
    /// The UTC day `time` falls in.
    pub fn of(time: SystemTime) -> Result<Day, ArchiveError> {
        let secs = time
            .duration_since(UNIX_EPOCH)
            .map_err(|_| ArchiveError::TimeOutOfRange)?
            .as_secs();
        let day =
            i64::try_from(secs / DAY_SECS as u64).map_err(|_| ArchiveError::TimeOutOfRange)?;
        if day > LAST_DAY {
            return Err(ArchiveError::TimeOutOfRange);
        }
        Ok(Day(day))
    }

    /// Midnight UTC at the start of the day.
    pub fn start(self) -> SystemTime {
        // 0 <= self.0 <= LAST_DAY for every Day made by `of` or `parse`.
        UNIX_EPOCH + Duration::from_secs(self.0.max(0).unsigned_abs() * DAY_SECS as u64)
    }

    /// The day after.
    pub fn next(self) -> Day {
        Day(self.0 + 1)
    }

    /// `n` days later (earlier when negative).
    pub fn plus(self, n: i64) -> Day {
        Day(self.0 + n)
    }

    /// (year, month, day) in the proleptic Gregorian calendar.
    pub fn civil(self) -> (i64, u32, u32) {
        // Howard Hinnant's civil_from_days.
        let z = self.0 + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
        let y = yoe + era * 400;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let d = doy - (153 * mp + 2) / 5 + 1;
        let m = if mp < 10 { mp + 3 } else { mp - 9 };
        let y = if m <= 2 { y + 1 } else { y };
        (y, m as u32, d as u32)
    }

    /// The day of a civil date (no range check on month and day beyond 1..=12, 1..=31).
    pub fn from_civil(y: i64, m: u32, d: u32) -> Day {
        let (m, d) = (i64::from(m), i64::from(d));
        let y = if m <= 2 { y - 1 } else { y };
        let era = y.div_euclid(400);
        let yoe = y.rem_euclid(400);
        let mp = if m > 2 { m - 3 } else { m + 9 };
        let doy = (153 * mp + 2) / 5 + d - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        Day(era * 146_097 + doe - 719_468)
    }

    /// `YYYYMMDD`, the suffix of the day's partitions.
    pub fn suffix(self) -> String {
        let (y, m, d) = self.civil();
        format!("{y:04}{m:02}{d:02}")
    }

    /// The day of a `YYYYMMDD` suffix; `None` when it is not a valid date from 1970 on.
    pub fn parse(suffix: &str) -> Option<Day> {
        if suffix.len() != 8 || !suffix.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let y: i64 = suffix[..4].parse().ok()?;
        let m: u32 = suffix[4..6].parse().ok()?;
        let d: u32 = suffix[6..].parse().ok()?;
        let day = Day::from_civil(y, m, d);
        // Round trip rejects 20240230 and the like.
        (day.0 >= 0 && day.0 <= LAST_DAY && day.civil() == (y, m, d)).then_some(day)
    }

    /// `'YYYY-MM-DD 00:00:00+00'`, a `timestamptz` literal of the day's start (UTC, so
    /// the bound does not depend on the session's `TimeZone`).
    pub fn bound(self) -> String {
        let (y, m, d) = self.civil();
        format!("'{y:04}-{m:02}-{d:02} 00:00:00+00'")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_round_trip_over_the_range() {
        for n in (0..LAST_DAY)
            .step_by(97)
            .chain([0, 59, 60, 11_016, LAST_DAY])
        {
            let day = Day(n);
            let (y, m, d) = day.civil();
            assert_eq!(Day::from_civil(y, m, d), day);
            assert_eq!(Day::parse(&day.suffix()), Some(day));
        }
    }

    #[test]
    fn known_dates() {
        assert_eq!(Day(0).suffix(), "19700101");
        assert_eq!(Day::parse("20000229"), Some(Day(11_016)));
        assert_eq!(Day::parse("20240230"), None);
        assert_eq!(Day::parse("2024013"), None);
        assert_eq!(Day::parse("19691231"), None);
        assert_eq!(Day(19_875).bound(), "'2024-06-01 00:00:00+00'");
        let t = UNIX_EPOCH + Duration::from_secs(19_875 * 86_400 + 86_399);
        assert_eq!(Day::of(t).unwrap(), Day(19_875));
        assert_eq!(
            Day(19_875).start(),
            UNIX_EPOCH + Duration::from_secs(19_875 * 86_400)
        );
        assert!(Day::of(UNIX_EPOCH - Duration::from_secs(1)).is_err());
    }
}
