//! MySQL/MariaDB values → database-neutral [`Cell`]s, for rows read by `SELECT` (the snapshot)
//! and rows decoded from the binlog alike, so that a snapshot row and a streamed row of the same
//! record become the same document.
//!
//! The column type decides: `DECIMAL` arrives as text and stays exact; `DATE` is a date;
//! `DATETIME` is a wall-clock time in the source's zone; `TIMESTAMP` is an instant (the binlog
//! carries Unix seconds; the snapshot session runs in UTC so `SELECT` gives UTC); text columns
//! are UTF-8 unless their character set is `binary`.

use exhub_connect::Cell;
use mysql_async::Value;
use mysql_async::consts::ColumnType;

/// The character set number of binary strings.
const BINARY_CHARSET: u16 = 63;

/// The cell for `value` from a column of type `ty` and character set `charset`.
pub fn cell(value: Value, ty: ColumnType, charset: u16) -> Cell {
    use ColumnType::*;
    match value {
        Value::NULL => Cell::Null,
        Value::Int(i) => Cell::Int(i),
        Value::UInt(u) => Cell::UInt(u),
        Value::Float(f) => Cell::Float(f64::from(f)),
        Value::Double(f) => Cell::Float(f),
        Value::Date(y, m, d, h, mi, s, us) => {
            let (y, m, d) = (u32::from(y), u32::from(m), u32::from(d));
            match ty {
                MYSQL_TYPE_DATE | MYSQL_TYPE_NEWDATE => Cell::Date(y, m, d),
                MYSQL_TYPE_TIMESTAMP | MYSQL_TYPE_TIMESTAMP2 => {
                    // Read in a UTC session: the wall clock is UTC.
                    exhub_schemas::Timestamp::from_local([y, m, d, h.into(), mi.into(), s.into(), us], 0)
                        .map_or(Cell::Null, |t| Cell::Instant(t.unix_micros()))
                }
                _ => Cell::DateTime([y, m, d, h.into(), mi.into(), s.into(), us]),
            }
        }
        Value::Time(neg, days, h, mi, s, us) => {
            let hours = days * 24 + u32::from(h);
            let sign = if neg { "-" } else { "" };
            Cell::Text(format!("{sign}{hours:02}:{mi:02}:{s:02}{}", fraction(us)))
        }
        Value::Bytes(b) => match ty {
            MYSQL_TYPE_DECIMAL | MYSQL_TYPE_NEWDECIMAL => Cell::Decimal(String::from_utf8_lossy(&b).into_owned()),
            MYSQL_TYPE_TIMESTAMP | MYSQL_TYPE_TIMESTAMP2 => binlog_timestamp(&b).unwrap_or(Cell::Bytes(b)),
            MYSQL_TYPE_TINY | MYSQL_TYPE_SHORT | MYSQL_TYPE_LONG | MYSQL_TYPE_LONGLONG | MYSQL_TYPE_INT24
            | MYSQL_TYPE_YEAR => {
                let text = String::from_utf8_lossy(&b);
                text.parse::<i64>().map_or(Cell::Text(text.into_owned()), Cell::Int)
            }
            _ if charset == BINARY_CHARSET => Cell::Bytes(b),
            _ => match String::from_utf8(b) {
                Ok(t) => Cell::Text(t),
                Err(e) => Cell::Bytes(e.into_bytes()),
            },
        },
    }
}

/// `TIMESTAMP` values in the binlog: Unix seconds, with a fraction when the column has one.
fn binlog_timestamp(bytes: &[u8]) -> Option<Cell> {
    let text = std::str::from_utf8(bytes).ok()?;
    let (secs, frac) = text.split_once('.').unwrap_or((text, ""));
    let secs: i64 = secs.parse().ok()?;
    let mut digits: String = frac.chars().take(6).collect();
    while digits.len() < 6 {
        digits.push('0');
    }
    let micros: i64 = digits.parse().ok()?;
    Some(Cell::Instant(secs * 1_000_000 + micros))
}

fn fraction(us: u32) -> String {
    if us == 0 { String::new() } else { format!(".{us:06}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_type_becomes_its_cell() {
        use ColumnType::*;
        assert_eq!(
            cell(Value::Bytes(b"12.50".to_vec()), MYSQL_TYPE_NEWDECIMAL, 63),
            Cell::Decimal("12.50".into())
        );
        assert_eq!(
            cell(Value::Date(2019, 3, 1, 0, 0, 0, 0), MYSQL_TYPE_DATE, 63),
            Cell::Date(2019, 3, 1)
        );
        assert_eq!(
            cell(Value::Date(2026, 11, 22, 16, 0, 1, 5), MYSQL_TYPE_DATETIME2, 63),
            Cell::DateTime([2026, 11, 22, 16, 0, 1, 5])
        );
        assert_eq!(
            cell(Value::Date(1970, 1, 1, 0, 0, 1, 0), MYSQL_TYPE_TIMESTAMP2, 63),
            Cell::Instant(1_000_000)
        );
        assert_eq!(
            cell(Value::Bytes(b"1.5".to_vec()), MYSQL_TYPE_TIMESTAMP2, 63),
            Cell::Instant(1_500_000)
        );
        assert_eq!(
            cell(Value::Bytes("南海".as_bytes().to_vec()), MYSQL_TYPE_VARCHAR, 45),
            Cell::Text("南海".into())
        );
        assert_eq!(
            cell(Value::Bytes(vec![0xff, 0]), MYSQL_TYPE_BLOB, 63),
            Cell::Bytes(vec![0xff, 0])
        );
        assert_eq!(cell(Value::Bytes(b"42".to_vec()), MYSQL_TYPE_LONG, 63), Cell::Int(42));
        assert_eq!(
            cell(Value::Time(true, 1, 2, 3, 4, 0), MYSQL_TYPE_TIME2, 63),
            Cell::Text("-26:03:04".into())
        );
        assert_eq!(cell(Value::NULL, MYSQL_TYPE_LONG, 63), Cell::Null);
    }
}
