//! Working time (承诺时限): which days are working days at the office's offset from UTC —
//! Monday to Friday, less `holidays`, plus `workdays` (the make-up working weekends of Chinese
//! public holidays) — and deadlines counted in working days or working hours, or in plain time
//! ([`Deadline`]).

use std::collections::BTreeSet;

use serde::Deserialize;

const DAY: i64 = 86_400_000_000;
const HOUR: i64 = 3_600_000_000;

/// `[calendar]` in routes.toml.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CalendarConfig {
    /// The office's offset from UTC (`+08:00`; default `+00:00`).
    pub offset: Option<String>,
    /// Non-working days that would be working days (`2026-10-01`).
    #[serde(default)]
    pub holidays: Vec<String>,
    /// Working days that would be weekends (`2026-10-10`).
    #[serde(default)]
    pub workdays: Vec<String>,
}

/// A calendar of working days.
#[derive(Debug, Clone, Default)]
pub struct Calendar {
    offset_micros: i64,
    holidays: BTreeSet<i64>,
    workdays: BTreeSet<i64>,
}

/// A day number (days since 1970-01-01) of `YYYY-MM-DD`.
fn day_of(text: &str) -> Option<i64> {
    if text.len() != 10 {
        return None;
    }
    let t = exhub_schemas::Timestamp::parse(&format!("{text}T00:00:00Z"))?;
    Some(t.unix_micros().div_euclid(DAY))
}

impl Calendar {
    /// The calendar of `config`; the first date or offset that does not parse is the error.
    pub fn new(config: &CalendarConfig) -> Result<Calendar, String> {
        let offset = crate::stats::parse_offset(config.offset.as_deref().unwrap_or("+00:00"))?;
        let days = |list: &[String]| -> Result<BTreeSet<i64>, String> {
            list.iter()
                .map(|d| day_of(d).ok_or_else(|| format!("{d:?} is not a date like 2026-10-01")))
                .collect()
        };
        Ok(Calendar {
            offset_micros: i64::from(offset) * 1_000_000,
            holidays: days(&config.holidays)?,
            workdays: days(&config.workdays)?,
        })
    }

    /// Whether local day `day` (days since 1970-01-01) is a working day.
    pub fn is_working(&self, day: i64) -> bool {
        if self.workdays.contains(&day) {
            return true;
        }
        // 1970-01-01 was a Thursday: weekday 0 is Monday.
        let weekday = (day + 3).rem_euclid(7);
        weekday < 5 && !self.holidays.contains(&day)
    }

    /// The instant `deadline` after `start` (Unix µs).
    pub fn due(&self, start: i64, deadline: Deadline) -> i64 {
        match deadline {
            Deadline::Elapsed(micros) => start.saturating_add(micros),
            Deadline::WorkingDays(n) => {
                // The same local time of day, `n` working days later.
                let local = start + self.offset_micros;
                let (mut day, time) = (local.div_euclid(DAY), local.rem_euclid(DAY));
                let mut left = n;
                while left > 0 {
                    day += 1;
                    if self.is_working(day) {
                        left -= 1;
                    }
                }
                day * DAY + time - self.offset_micros
            }
            Deadline::WorkingHours(n) => {
                // Hours count only on working days, around the clock.
                let mut at = start + self.offset_micros;
                let mut left = i64::from(n) * HOUR;
                while left > 0 {
                    let day = at.div_euclid(DAY);
                    let end_of_day = (day + 1) * DAY;
                    if self.is_working(day) {
                        let step = left.min(end_of_day - at);
                        at += step;
                        left -= step;
                    } else {
                        at = end_of_day;
                    }
                }
                at - self.offset_micros
            }
        }
    }
}

/// How long a stage may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deadline {
    /// `2d`: working days.
    WorkingDays(u32),
    /// `4h`: working hours.
    WorkingHours(u32),
    /// `30s`, `10m`: plain elapsed time (for tests and round-the-clock services), µs.
    Elapsed(i64),
}

impl std::str::FromStr for Deadline {
    type Err = String;

    fn from_str(text: &str) -> Result<Deadline, String> {
        let bad = || format!("{text:?} is not a deadline like 5d (working days), 4h (working hours), 10m or 30s");
        let split = text.len().checked_sub(1).ok_or_else(bad)?;
        let (n, unit) = text.split_at(split);
        let n: u32 = n.parse().map_err(|_| bad())?;
        if n == 0 || n > 10_000 {
            return Err(bad());
        }
        match unit {
            "d" => Ok(Deadline::WorkingDays(n)),
            "h" => Ok(Deadline::WorkingHours(n)),
            "m" => Ok(Deadline::Elapsed(i64::from(n) * 60_000_000)),
            "s" => Ok(Deadline::Elapsed(i64::from(n) * 1_000_000)),
            _ => Err(bad()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> i64 {
        exhub_schemas::Timestamp::parse(text).unwrap().unix_micros()
    }

    fn china() -> Calendar {
        Calendar::new(&CalendarConfig {
            offset: Some("+08:00".into()),
            holidays: vec!["2026-10-01".into(), "2026-10-02".into()],
            workdays: vec!["2026-10-10".into()],
        })
        .unwrap()
    }

    #[test]
    fn working_days_skip_weekends_and_holidays_and_keep_make_up_days() {
        let c = china();
        // Friday 2026-09-25 10:00 +08:00 + 2 working days = Tuesday 09-29 10:00.
        let due = c.due(at("2026-09-25T10:00:00+08:00"), Deadline::WorkingDays(2));
        assert_eq!(due, at("2026-09-29T10:00:00+08:00"));
        // Wednesday 09-30 + 1: 10-01 and 10-02 are holidays, 10-03/04 a weekend: Monday 10-05.
        let due = c.due(at("2026-09-30T09:00:00+08:00"), Deadline::WorkingDays(1));
        assert_eq!(due, at("2026-10-05T09:00:00+08:00"));
        // Friday 10-09 + 1 = Saturday 10-10, a make-up working day.
        let due = c.due(at("2026-10-09T09:00:00+08:00"), Deadline::WorkingDays(1));
        assert_eq!(due, at("2026-10-10T09:00:00+08:00"));
    }

    #[test]
    fn working_hours_pause_over_the_weekend_and_plain_time_does_not() {
        let c = china();
        // Friday 2026-09-25 22:00 +08:00 + 4 working hours: 2 on Friday, then Monday 02:00.
        let due = c.due(at("2026-09-25T22:00:00+08:00"), Deadline::WorkingHours(4));
        assert_eq!(due, at("2026-09-28T02:00:00+08:00"));
        let start = at("2026-09-26T12:00:00+08:00");
        assert_eq!(c.due(start, "30s".parse().unwrap()), start + 30_000_000);
    }

    #[test]
    fn deadlines_parse_and_bad_ones_say_why() {
        assert_eq!("5d".parse(), Ok(Deadline::WorkingDays(5)));
        assert_eq!("4h".parse(), Ok(Deadline::WorkingHours(4)));
        assert_eq!("10m".parse(), Ok(Deadline::Elapsed(600_000_000)));
        for bad in ["", "d", "0d", "5", "5w", "-1d", "1.5d"] {
            assert!(bad.parse::<Deadline>().is_err(), "{bad}");
        }
        assert!(
            Calendar::new(&CalendarConfig {
                offset: None,
                holidays: vec!["2026-13-01".into()],
                workdays: vec![],
            })
            .is_err()
        );
    }
}
