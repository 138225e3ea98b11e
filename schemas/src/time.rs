//! Instants for [`Timestamp`]: conversion to and from microseconds since the Unix epoch, so that
//! archives can store and compare times as integers and every component prints them alike
//! (RFC 3339, UTC, microseconds). Proleptic Gregorian calendar, no leap seconds.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::value::Timestamp;

impl Timestamp {
    /// The current time, in UTC with microseconds.
    pub fn now() -> Timestamp {
        Timestamp::from_unix_micros(unix_micros_now())
    }

    /// The instant `micros` after 1970-01-01T00:00:00Z, written in UTC with six fraction digits.
    /// Instants outside years 0001–9999 are clamped to those bounds.
    pub fn from_unix_micros(micros: i64) -> Timestamp {
        Timestamp::from_unix_micros_at(micros, 0)
    }

    /// The instant `micros` after the epoch, written as local time at `offset_secs` east of
    /// UTC (whole minutes; e.g. `28800` gives `…+08:00`), with six fraction digits. Instants
    /// outside years 0001–9999 are clamped.
    pub fn from_unix_micros_at(micros: i64, offset_secs: i32) -> Timestamp {
        const MIN: i64 = -62_135_596_800_000_000; // 0001-01-01T00:00:00Z
        const MAX: i64 = 253_402_300_799_999_999; // 9999-12-31T23:59:59.999999Z
        let offset_secs = i64::from(offset_secs / 60 * 60).clamp(-86_340, 86_340);
        let local = (micros + offset_secs * 1_000_000).clamp(MIN, MAX);
        let secs = local.div_euclid(1_000_000);
        let frac = local.rem_euclid(1_000_000);
        let (days, sod) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
        let (y, m, d) = civil_from_days(days);
        let zone = if offset_secs == 0 {
            "Z".to_owned()
        } else {
            let sign = if offset_secs < 0 { '-' } else { '+' };
            let o = offset_secs.abs();
            format!("{sign}{:02}:{:02}", o / 3600, o / 60 % 60)
        };
        let text = format!(
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{frac:06}{zone}",
            sod / 3600,
            sod / 60 % 60,
            sod % 60
        );
        // The text is in the grammar by construction; parse() only re-checks it.
        Timestamp::parse(&text).unwrap_or_else(|| Timestamp::from_unix_micros(0))
    }

    /// The local wall-clock time `y-m-d h:mi:s.micros` at `offset_secs` east of UTC, as an
    /// instant (`None` when it is not a real date and time).
    pub fn from_local(parts: [u32; 7], offset_secs: i32) -> Option<Timestamp> {
        let [y, mo, d, h, mi, s, us] = parts;
        if !(1..=9999).contains(&y) || !(1..=12).contains(&mo) || h > 23 || mi > 59 || s > 59 || us > 999_999 {
            return None;
        }
        let days = days_from_civil(i64::from(y), i64::from(mo), i64::from(d));
        if civil_from_days(days) != (i64::from(y), i64::from(mo), i64::from(d)) {
            return None;
        }
        let local =
            (days * 86_400 + i64::from(h) * 3600 + i64::from(mi) * 60 + i64::from(s)) * 1_000_000 + i64::from(us);
        Some(Timestamp::from_unix_micros_at(
            local - i64::from(offset_secs / 60 * 60) * 1_000_000,
            offset_secs,
        ))
    }

    /// Microseconds since 1970-01-01T00:00:00Z of this instant (its offset applied; digits
    /// beyond microseconds dropped).
    pub fn unix_micros(&self) -> i64 {
        let s = self.as_str();
        let n = |r: std::ops::Range<usize>| s.get(r).and_then(|t| t.parse::<i64>().ok()).unwrap_or(0);
        let days = days_from_civil(n(0..4), n(5..7), n(8..10));
        let mut secs = days * 86_400 + n(11..13) * 3600 + n(14..16) * 60 + n(17..19);
        let mut rest = &s[19..];
        let mut micros = 0;
        if let Some(frac) = rest.strip_prefix('.') {
            let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
            let mut text: String = frac[..digits].chars().take(6).collect();
            while text.len() < 6 {
                text.push('0');
            }
            micros = text.parse::<i64>().unwrap_or(0);
            rest = &frac[digits..];
        }
        if rest != "Z" {
            let sign = if rest.starts_with('-') { -1 } else { 1 };
            let offset = rest.get(1..3).and_then(|h| h.parse::<i64>().ok()).unwrap_or(0) * 3600
                + rest.get(4..6).and_then(|m| m.parse::<i64>().ok()).unwrap_or(0) * 60;
            secs -= sign * offset;
        }
        secs * 1_000_000 + micros
    }
}

/// Microseconds since the Unix epoch, now.
pub fn unix_micros_now() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_micros()).unwrap_or(i64::MAX),
    }
}

/// Days since 1970-01-01 of a civil date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil date of a day count since 1970-01-01 (inverse of [`days_from_civil`]).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { yoe + era * 400 + 1 } else { yoe + era * 400 }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        Timestamp::parse(s).unwrap()
    }

    #[test]
    fn epoch_offsets_and_fractions() {
        assert_eq!(ts("1970-01-01T00:00:00Z").unix_micros(), 0);
        assert_eq!(ts("1970-01-01T08:00:00+08:00").unix_micros(), 0);
        assert_eq!(ts("1969-12-31T19:00:00.5-05:00").unix_micros(), 500_000);
        assert_eq!(
            ts("2026-11-22T08:00:00.123456789Z").unix_micros(),
            1_795_334_400_123_456
        );
        assert_eq!(ts("2000-02-29T00:00:00Z").unix_micros(), 951_782_400_000_000);
    }

    #[test]
    fn round_trips_through_micros() {
        for micros in [
            0,
            1,
            -1,
            951_782_400_000_000,
            1_795_334_400_123_456,
            -62_135_596_800_000_000,
        ] {
            let t = Timestamp::from_unix_micros(micros);
            assert_eq!(t.unix_micros(), micros, "{t}");
        }
        assert_eq!(Timestamp::from_unix_micros(0).as_str(), "1970-01-01T00:00:00.000000Z");
        assert!(Timestamp::now().unix_micros() > 1_700_000_000_000_000);
    }

    #[test]
    fn offsets_and_local_times() {
        let t = Timestamp::from_unix_micros_at(0, 8 * 3600);
        assert_eq!(t.as_str(), "1970-01-01T08:00:00.000000+08:00");
        assert_eq!(t.unix_micros(), 0);
        assert_eq!(
            Timestamp::from_unix_micros_at(0, -5 * 3600).as_str(),
            "1969-12-31T19:00:00.000000-05:00"
        );
        let local = Timestamp::from_local([2026, 11, 22, 16, 0, 0, 5], 8 * 3600).unwrap();
        assert_eq!(local.as_str(), "2026-11-22T16:00:00.000005+08:00");
        assert_eq!(local.unix_micros(), ts("2026-11-22T08:00:00.000005Z").unix_micros());
        assert!(Timestamp::from_local([2026, 2, 30, 0, 0, 0, 0], 0).is_none());
        assert!(Timestamp::from_local([0, 1, 1, 0, 0, 0, 0], 0).is_none());
    }
}
