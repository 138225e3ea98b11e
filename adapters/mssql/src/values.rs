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

use std::borrow::Cow;

use exhub_connect::Cell;
use exhub_schemas::Value;
use tiberius::ColumnData;
use tiberius::numeric::Numeric;
use tiberius::time::{Date, DateTime, DateTime2, DateTimeOffset, SmallDateTime, Time};

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

/// A document value as a typed SQL Server parameter (the sink's binds): decimals as exact
/// `numeric`, dates as `date`, timestamps as `datetimeoffset` (a `datetime2` column takes its
/// wall-clock part, a `datetimeoffset` column the instant), lists and maps as JSON text.
pub fn column_data(value: &Value) -> ColumnData<'static> {
    match value {
        Value::Null => ColumnData::String(None),
        Value::Bool(b) => ColumnData::Bit(Some(*b)),
        Value::Int(i) => ColumnData::I64(Some(*i)),
        Value::Text(t) => ColumnData::String(Some(Cow::Owned(t.clone()))),
        Value::Binary(b) => ColumnData::Binary(Some(Cow::Owned(b.clone()))),
        Value::Decimal(d) => numeric(d.as_str()).map_or_else(
            || ColumnData::String(Some(Cow::Owned(d.as_str().to_owned()))),
            |n| ColumnData::Numeric(Some(n)),
        ),
        Value::Date(d) => date_of(d.as_str()).map_or_else(
            || ColumnData::String(Some(Cow::Owned(d.as_str().to_owned()))),
            |d| ColumnData::Date(Some(d)),
        ),
        Value::Timestamp(t) => {
            let offset = offset_minutes(t.as_str()).unwrap_or(0);
            let micros = t.unix_micros();
            let days = micros.div_euclid(86_400_000_000) + DAYS_0001_TO_1970;
            let in_day = micros.rem_euclid(86_400_000_000);
            match u32::try_from(days) {
                Ok(days) if days >> 24 == 0 => ColumnData::DateTimeOffset(Some(DateTimeOffset::new(
                    DateTime2::new(Date::new(days), Time::new(u64::try_from(in_day).unwrap_or(0) * 10, 7)),
                    offset,
                ))),
                _ => ColumnData::String(Some(Cow::Owned(t.as_str().to_owned()))),
            }
        }
        Value::List(_) | Value::Map(_) => {
            ColumnData::String(Some(Cow::Owned(exhub_schemas::json::to_json_value(value).to_string())))
        }
    }
}

/// `-1234.50` → numeric(value -123450, scale 2); `None` beyond 38 digits.
fn numeric(text: &str) -> Option<Numeric> {
    let (int, frac) = text.split_once('.').unwrap_or((text, ""));
    let scale = u8::try_from(frac.len()).ok()?;
    let digits: i128 = format!("{int}{frac}").parse().ok()?;
    (scale <= 37 && digits.unsigned_abs() < 10u128.pow(38)).then(|| Numeric::new_with_scale(digits, scale))
}

/// `2024-02-29` → days since 0001-01-01.
fn date_of(text: &str) -> Option<Date> {
    let mut parts = text.splitn(3, '-');
    let y: i64 = parts.next()?.parse().ok()?;
    let m: i64 = parts.next()?.parse().ok()?;
    let d: i64 = parts.next()?.parse().ok()?;
    let days = u32::try_from(days_from_civil(y, m, d) + DAYS_0001_TO_1970).ok()?;
    (days >> 24 == 0).then(|| Date::new(days))
}

/// The offset of an RFC 3339 timestamp, in minutes (`Z` → 0).
fn offset_minutes(text: &str) -> Option<i16> {
    if text.ends_with('Z') || text.ends_with('z') {
        return Some(0);
    }
    let zone = text.get(text.len().checked_sub(6)?..)?;
    let sign = match zone.as_bytes().first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let h: i16 = zone.get(1..3)?.parse().ok()?;
    let m: i16 = zone.get(4..6)?.parse().ok()?;
    Some(sign * (h * 60 + m))
}

/// (year, month, day) → days since 1970-01-01 (Howard Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
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
    fn document_values_bind_as_typed_parameters_and_read_back() {
        let decimal = Value::Decimal(exhub_schemas::Decimal::parse("-1234.50").unwrap());
        assert_eq!(cell(&column_data(&decimal)), Cell::Decimal("-1234.50".into()));
        let date = Value::Date(exhub_schemas::Date::parse("2024-02-29").unwrap());
        assert_eq!(cell(&column_data(&date)), Cell::Date(2024, 2, 29));
        let ts = exhub_schemas::Timestamp::parse("2026-11-22T16:00:00.5+08:00").unwrap();
        match column_data(&Value::Timestamp(ts.clone())) {
            ColumnData::DateTimeOffset(Some(d)) => {
                assert_eq!(d.offset(), 480);
                assert_eq!(
                    cell(&ColumnData::DateTimeOffset(Some(d))),
                    Cell::Instant(ts.unix_micros())
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(offset_minutes("2026-11-22T08:00:00Z"), Some(0));
        assert_eq!(offset_minutes("2026-11-22T08:00:00-05:30"), Some(-330));
        assert_eq!(cell(&column_data(&Value::Int(7))), Cell::Int(7));
        assert_eq!(
            cell(&column_data(&Value::Text("南海".into()))),
            Cell::Text("南海".into())
        );
        assert_eq!(cell(&column_data(&Value::Null)), Cell::Null);
        let list = Value::List(vec![Value::Text("pension".into())]);
        assert_eq!(cell(&column_data(&list)), Cell::Text(r#"["pension"]"#.into()));
        assert!(numeric("1234567890123456789012345678901234567890").is_none());
        for days in [-719_162, -1, 0, 19_782, 2_932_896] {
            let (y, m, d) = civil(days);
            assert_eq!(days_from_civil(i64::from(y), i64::from(m), i64::from(d)), days);
        }
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
