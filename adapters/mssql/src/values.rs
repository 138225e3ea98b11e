//! SQL Server values (as tiberius decodes them) → database-neutral [`Cell`]s.
//!
//! - `decimal`/`numeric` stay exact (text with the column's scale);
//! - `money`/`smallmoney`: tiberius decodes them as `f64`, which is not exact, so the adapter
//!   selects them `CAST(… AS decimal(19, 4))` (see [`crate::sql`]) and they arrive as decimals;
//! - `datetime2`, `datetime`, `smalldatetime` are wall-clock times (read in the source's
//!   `time_zone`); `datetimeoffset` is an instant; `date` a date; `time` text;
//! - `nvarchar`/`varchar`/`nchar`/`char`/`ntext`/`xml` text; `uniqueidentifier` its canonical
//!   text (lower case, as SQL Server's `CONVERT(char(36), …)` gives it but lower-cased);
//!   `varbinary`/`binary`/`image`/`rowversion` bytes; `bit` a boolean; integers; floats.

use exhub_connect::Cell;
use tiberius::ColumnData;
use tiberius::time::{Date, DateTime, DateTime2, SmallDateTime, Time};

/// Days from 0001-01-01 to 1970-01-01.
const DAYS_0001_TO_1970: i64 = 719_162;
/// Days from 1900-01-01 to 1970-01-01.
const DAYS_1900_TO_1970: i64 = 25_567;

/// The cell for one value.
pub fn cell(value: &ColumnData<'_>) -> Cell {
    match value {
        ColumnData::U8(v) => v.map_or(Cell::Null, |v| Cell::Int(i64::from(v))),
        ColumnData::I16(v) => v.map_or(Cell::Null, |v| Cell::Int(i64::from(v))),
        ColumnData::I32(v) => v.map_or(Cell::Null, |v| Cell::Int(i64::from(v))),
        ColumnData::I64(v) => v.map_or(Cell::Null, Cell::Int),
        ColumnData::F32(v) => v.map_or(Cell::Null, |v| Cell::Float(f64::from(v))),
        ColumnData::F64(v) => v.map_or(Cell::Null, Cell::Float),
        ColumnData::Bit(v) => v.map_or(Cell::Null, Cell::Bool),
        ColumnData::String(v) => v.as_ref().map_or(Cell::Null, |s| Cell::Text(s.to_string())),
        ColumnData::Guid(v) => v.map_or(Cell::Null, |g| Cell::Text(g.to_string())),
        ColumnData::Binary(v) => v.as_ref().map_or(Cell::Null, |b| Cell::Bytes(b.to_vec())),
        ColumnData::Numeric(v) => v.map_or(Cell::Null, |n| Cell::Decimal(decimal_text(n.value(), n.scale()))),
        ColumnData::Xml(v) => v.as_ref().map_or(Cell::Null, |x| Cell::Text(x.to_string())),
        ColumnData::DateTime(v) => v.map_or(Cell::Null, |d| Cell::DateTime(datetime(d))),
        ColumnData::SmallDateTime(v) => v.map_or(Cell::Null, |d| Cell::DateTime(small_datetime(d))),
        ColumnData::Time(v) => v.map_or(Cell::Null, |t| Cell::Text(time_text(t))),
        ColumnData::Date(v) => v.map_or(Cell::Null, |d| {
            let (y, m, day) = civil(i64::from(d.days()) - DAYS_0001_TO_1970);
            Cell::Date(y, m, day)
        }),
        ColumnData::DateTime2(v) => v.map_or(Cell::Null, |d| Cell::DateTime(datetime2(d))),
        ColumnData::DateTimeOffset(v) => v.map_or(Cell::Null, |d| {
            // The date and time part is UTC on the wire; the offset only says where it was written.
            Cell::Instant(unix_micros(d.datetime2().date(), d.datetime2().time()))
        }),
    }
}

/// `value / 10^scale` as text with exactly `scale` decimals.
fn decimal_text(value: i128, scale: u8) -> String {
    let sign = if value < 0 { "-" } else { "" };
    let digits = value.unsigned_abs().to_string();
    let scale = usize::from(scale);
    if scale == 0 {
        return format!("{sign}{digits}");
    }
    let padded = format!("{digits:0>width$}", width = scale + 1);
    let (int, frac) = padded.split_at(padded.len() - scale);
    format!("{sign}{int}.{frac}")
}

/// Microseconds since midnight of a `time` value.
fn time_micros(t: Time) -> i64 {
    let increments = i128::from(t.increments());
    let per_second = 10i128.pow(u32::from(t.scale()));
    i64::try_from(increments * 1_000_000 / per_second).unwrap_or(0)
}

fn unix_micros(d: Date, t: Time) -> i64 {
    (i64::from(d.days()) - DAYS_0001_TO_1970) * 86_400_000_000 + time_micros(t)
}

fn datetime2(d: DateTime2) -> [u32; 7] {
    parts(unix_micros(d.date(), d.time()))
}

/// `datetime`: days since 1900-01-01 and 1/300 s ticks since midnight.
fn datetime(d: DateTime) -> [u32; 7] {
    let micros = (i64::from(d.days()) - DAYS_1900_TO_1970) * 86_400_000_000
        + (i64::from(d.seconds_fragments()) * 1_000_000 + 150) / 300;
    parts(micros)
}

/// `smalldatetime`: days since 1900-01-01 and minutes since midnight.
fn small_datetime(d: SmallDateTime) -> [u32; 7] {
    let micros =
        (i64::from(d.days()) - DAYS_1900_TO_1970) * 86_400_000_000 + i64::from(d.seconds_fragments()) * 60_000_000;
    parts(micros)
}

fn time_text(t: Time) -> String {
    let us = time_micros(t);
    let (h, m, s, frac) = (
        us / 3_600_000_000,
        us / 60_000_000 % 60,
        us / 1_000_000 % 60,
        us % 1_000_000,
    );
    if frac == 0 {
        format!("{h:02}:{m:02}:{s:02}")
    } else {
        format!("{h:02}:{m:02}:{s:02}.{frac:06}")
    }
}

/// Unix micros (read as a wall clock) → `[y, m, d, h, mi, s, micros]`.
fn parts(micros: i64) -> [u32; 7] {
    let days = micros.div_euclid(86_400_000_000);
    let in_day = micros.rem_euclid(86_400_000_000);
    let (y, m, d) = civil(days);
    let secs = in_day / 1_000_000;
    let n = |v: i64| u32::try_from(v).unwrap_or(0);
    [
        y,
        m,
        d,
        n(secs / 3600),
        n(secs / 60 % 60),
        n(secs % 60),
        n(in_day % 1_000_000),
    ]
}

/// Days since 1970-01-01 → (year, month, day) in the proleptic Gregorian calendar (Howard
/// Hinnant's `civil_from_days`).
fn civil(days: i64) -> (u32, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let n = |v: i64| u32::try_from(v).unwrap_or(0);
    (n(y), n(m), n(d))
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use tiberius::numeric::Numeric;

    use super::*;

    fn date(y: i64, m: u32, d: u32) -> Date {
        // Days since 0001-01-01, found by search over civil() (independent of the code under
        // test's direction of conversion).
        let mut days = (y - 1970) * 365 + (y - 1970) / 4;
        while civil(days) < (u32::try_from(y).unwrap(), m, d) {
            days += 1;
        }
        while civil(days) > (u32::try_from(y).unwrap(), m, d) {
            days -= 1;
        }
        Date::new(u32::try_from(days + DAYS_0001_TO_1970).unwrap())
    }

    #[test]
    fn every_mapped_type_becomes_its_cell() {
        assert_eq!(
            cell(&ColumnData::Numeric(Some(Numeric::new_with_scale(123_450, 2)))),
            Cell::Decimal("1234.50".into())
        );
        assert_eq!(
            cell(&ColumnData::Numeric(Some(Numeric::new_with_scale(-5, 4)))),
            Cell::Decimal("-0.0005".into())
        );
        // money, as the adapter selects it: decimal(19, 4).
        assert_eq!(
            cell(&ColumnData::Numeric(Some(Numeric::new_with_scale(
                9_223_372_036_854_775_807,
                4
            )))),
            Cell::Decimal("922337203685477.5807".into())
        );
        assert_eq!(
            cell(&ColumnData::String(Some(Cow::Borrowed("南海")))),
            Cell::Text("南海".into())
        );
        let guid = uuid_of("6F9619FF-8B86-D011-B42D-00C04FC964FF");
        assert_eq!(
            cell(&ColumnData::Guid(Some(guid))),
            Cell::Text("6f9619ff-8b86-d011-b42d-00c04fc964ff".into())
        );
        assert_eq!(
            cell(&ColumnData::Binary(Some(Cow::Borrowed(&[0, 255][..])))),
            Cell::Bytes(vec![0, 255])
        );
        assert_eq!(cell(&ColumnData::Bit(Some(true))), Cell::Bool(true));
        assert_eq!(cell(&ColumnData::I64(Some(-7))), Cell::Int(-7));
        assert_eq!(cell(&ColumnData::U8(Some(255))), Cell::Int(255));
        assert_eq!(cell(&ColumnData::I32(None)), Cell::Null);
        assert_eq!(
            cell(&ColumnData::Date(Some(date(2024, 2, 29)))),
            Cell::Date(2024, 2, 29)
        );
        assert_eq!(cell(&ColumnData::Date(Some(Date::new(0)))), Cell::Date(1, 1, 1));
        // datetime2(7) 2026-11-22 16:00:01.1234567 → micros truncated.
        let t = Time::new(16 * 36_000_000_000 + 11_234_567, 7);
        assert_eq!(
            cell(&ColumnData::DateTime2(Some(DateTime2::new(date(2026, 11, 22), t)))),
            Cell::DateTime([2026, 11, 22, 16, 0, 1, 123_456])
        );
        // datetimeoffset: the UTC instant (1970-01-01 00:00:01 UTC), whatever the offset.
        let utc = DateTime2::new(date(1970, 1, 1), Time::new(1, 0));
        assert_eq!(
            cell(&ColumnData::DateTimeOffset(Some(tiberius::time::DateTimeOffset::new(
                utc, 480
            )))),
            Cell::Instant(1_000_000)
        );
        // datetime: 1900-01-01 + 1 day, 300 ticks = 1 s.
        assert_eq!(
            cell(&ColumnData::DateTime(Some(DateTime::new(1, 300)))),
            Cell::DateTime([1900, 1, 2, 0, 0, 1, 0])
        );
        assert_eq!(
            cell(&ColumnData::SmallDateTime(Some(SmallDateTime::new(0, 61)))),
            Cell::DateTime([1900, 1, 1, 1, 1, 0, 0])
        );
        assert_eq!(
            cell(&ColumnData::Time(Some(Time::new(37_235, 1)))),
            Cell::Text("01:02:03.500000".into())
        );
    }

    fn uuid_of(text: &str) -> tiberius::Uuid {
        tiberius::Uuid::parse_str(text).unwrap()
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil(0), (1970, 1, 1));
        assert_eq!(civil(-1), (1969, 12, 31));
        assert_eq!(civil(19_782), (2024, 2, 29));
        assert_eq!(decimal_text(5, 0), "5");
        assert_eq!(decimal_text(5, 3), "0.005");
    }
}
