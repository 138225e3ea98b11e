//! PostgreSQL values in their text form → database-neutral [`Cell`]s, by the column's type OID.
//!
//! Both halves of the source read text: pgoutput sends every value in its type's text output,
//! and the snapshot selects every mapped column `::text`. Both sessions run with
//! `TimeZone=UTC`, `DateStyle=ISO` and `bytea_output=hex`, so a row gives the same cells — and
//! the same document — whether it was snapshotted or streamed.

use exhub_connect::Cell;

/// Type OIDs this module knows (`pg_type.oid`, stable across PostgreSQL versions).
mod oid {
    pub const BOOL: u32 = 16;
    pub const BYTEA: u32 = 17;
    pub const INT8: u32 = 20;
    pub const INT2: u32 = 21;
    pub const INT4: u32 = 23;
    pub const OID: u32 = 26;
    pub const FLOAT4: u32 = 700;
    pub const FLOAT8: u32 = 701;
    pub const NUMERIC: u32 = 1700;
    pub const MONEY: u32 = 790;
    pub const DATE: u32 = 1082;
    pub const TIMESTAMP: u32 = 1114;
    pub const TIMESTAMPTZ: u32 = 1184;
}

/// The element type of a one-dimensional array type (`text[]` → `text`, …), for the array
/// types a mapping is likely to meet.
fn element_of(array_oid: u32) -> Option<u32> {
    Some(match array_oid {
        1000 => oid::BOOL,
        1005 => oid::INT2,
        1007 => oid::INT4,
        1016 => oid::INT8,
        1021 => oid::FLOAT4,
        1022 => oid::FLOAT8,
        1231 => oid::NUMERIC,
        1182 => oid::DATE,
        1115 => oid::TIMESTAMP,
        1185 => oid::TIMESTAMPTZ,
        1009 => 25,   // text
        1015 => 1043, // varchar
        1014 => 1042, // bpchar
        _ => return None,
    })
}

/// A one-dimensional array literal (`{a,"b c",NULL}`) → its elements as text (`None`: NULL);
/// `None` for what is not one (nested arrays, bounds decorations).
fn array_items(text: &str) -> Option<Vec<Option<String>>> {
    let inner = text.strip_prefix('{')?.strip_suffix('}')?;
    let mut items = Vec::new();
    if inner.is_empty() {
        return Some(items);
    }
    let mut chars = inner.chars().peekable();
    loop {
        let item = if chars.peek() == Some(&'"') {
            chars.next();
            let mut s = String::new();
            loop {
                match chars.next()? {
                    '\\' => s.push(chars.next()?),
                    '"' => break,
                    c => s.push(c),
                }
            }
            Some(s)
        } else {
            let mut s = String::new();
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                if c == '{' || c == '"' {
                    return None;
                }
                s.push(c);
                chars.next();
            }
            (s != "NULL").then_some(s)
        };
        items.push(item);
        match chars.next() {
            None => return Some(items),
            Some(',') => {}
            Some(_) => return None,
        }
    }
}

/// The cell for `text` (`None`: SQL NULL) from a column of type `type_oid`. A value that does
/// not parse as its type says (it stays text, and the mapping reports it if the field wants
/// another type).
pub fn cell(type_oid: u32, text: Option<&str>) -> Cell {
    let Some(text) = text else { return Cell::Null };
    if let Some(element) = element_of(type_oid) {
        return array_items(text).map_or_else(
            || Cell::Text(text.to_owned()),
            |items| Cell::List(items.iter().map(|i| cell(element, i.as_deref())).collect()),
        );
    }
    let parsed = match type_oid {
        oid::BOOL => match text {
            "t" => Some(Cell::Bool(true)),
            "f" => Some(Cell::Bool(false)),
            _ => None,
        },
        oid::INT2 | oid::INT4 | oid::INT8 | oid::OID => text.parse().ok().map(Cell::Int),
        oid::FLOAT4 | oid::FLOAT8 => text.parse().ok().map(Cell::Float),
        oid::NUMERIC => Some(Cell::Decimal(text.to_owned())),
        oid::MONEY => None,
        oid::BYTEA => hex(text).map(Cell::Bytes),
        oid::DATE => date(text).map(|(y, m, d)| Cell::Date(y, m, d)),
        oid::TIMESTAMP => date_time(text).map(Cell::DateTime),
        oid::TIMESTAMPTZ => instant(text).map(Cell::Instant),
        _ => None,
    };
    parsed.unwrap_or_else(|| Cell::Text(text.to_owned()))
}

/// `\x0aff` → bytes.
fn hex(text: &str) -> Option<Vec<u8>> {
    let digits = text.strip_prefix("\\x")?;
    if digits.len() % 2 != 0 {
        return None;
    }
    (0..digits.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(digits.get(i..i + 2)?, 16).ok())
        .collect()
}

/// `2026-11-22` → (y, m, d); BC dates and infinities are not dates here.
fn date(text: &str) -> Option<(u32, u32, u32)> {
    let mut parts = text.splitn(3, '-');
    let y = parts.next()?.parse().ok()?;
    let m = parts.next()?.parse().ok()?;
    let d = parts.next()?.parse().ok()?;
    Some((y, m, d))
}

/// `2026-11-22 16:00:01.5` → `[y, m, d, h, mi, s, micros]`.
fn date_time(text: &str) -> Option<[u32; 7]> {
    let (day, time) = text.split_once(' ')?;
    let (y, m, d) = date(day)?;
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let mut parts = hms.splitn(3, ':');
    let h = parts.next()?.parse().ok()?;
    let mi = parts.next()?.parse().ok()?;
    let s = parts.next()?.parse().ok()?;
    let mut digits: String = frac.chars().take(6).collect();
    if !digits.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    while digits.len() < 6 {
        digits.push('0');
    }
    Some([y, m, d, h, mi, s, digits.parse().ok()?])
}

/// `2026-11-22 08:00:01.5+00` (a UTC session's output) → Unix micros.
fn instant(text: &str) -> Option<i64> {
    let cut = text.rfind(['+', '-']).filter(|&i| i > 10)?;
    let (local, zone) = text.split_at(cut);
    let sign = if zone.starts_with('-') { -1 } else { 1 };
    let mut z = zone[1..].split(':');
    let zh: i32 = z.next()?.parse().ok()?;
    let zm: i32 = z.next().map_or(Some(0), |m| m.parse().ok())?;
    let offset = sign * (zh * 3600 + zm * 60);
    let t = exhub_schemas::Timestamp::from_local(date_time(local)?, offset)?;
    Some(t.unix_micros())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_type_becomes_its_cell() {
        assert_eq!(cell(oid::BOOL, Some("t")), Cell::Bool(true));
        assert_eq!(cell(oid::INT8, Some("-42")), Cell::Int(-42));
        assert_eq!(
            cell(oid::NUMERIC, Some("1200000.50")),
            Cell::Decimal("1200000.50".into())
        );
        assert_eq!(cell(oid::FLOAT8, Some("1.5")), Cell::Float(1.5));
        assert_eq!(cell(oid::BYTEA, Some("\\x00ff")), Cell::Bytes(vec![0, 255]));
        assert_eq!(cell(oid::DATE, Some("2024-02-29")), Cell::Date(2024, 2, 29));
        assert_eq!(
            cell(oid::TIMESTAMP, Some("2026-11-22 16:00:01.5")),
            Cell::DateTime([2026, 11, 22, 16, 0, 1, 500_000])
        );
        assert_eq!(
            cell(oid::TIMESTAMPTZ, Some("1970-01-01 00:00:01+00")),
            Cell::Instant(1_000_000)
        );
        assert_eq!(
            cell(oid::TIMESTAMPTZ, Some("1970-01-01 08:00:01.25+08")),
            Cell::Instant(1_250_000)
        );
        assert_eq!(
            cell(oid::TIMESTAMPTZ, Some("1970-01-01 00:00:00-05:30")),
            Cell::Instant(19_800_000_000)
        );
        assert_eq!(cell(25, Some("南海")), Cell::Text("南海".into()));
        assert_eq!(cell(3802, Some("{\"a\": 1}")), Cell::Text("{\"a\": 1}".into()));
        assert_eq!(cell(oid::INT4, None), Cell::Null);
        // One-dimensional arrays become lists of their element type.
        assert_eq!(
            cell(1009, Some(r#"{110,"310 医疗",NULL,"a\"b"}"#)),
            Cell::List(vec![
                Cell::Text("110".into()),
                Cell::Text("310 医疗".into()),
                Cell::Null,
                Cell::Text("a\"b".into())
            ])
        );
        assert_eq!(
            cell(1007, Some("{1,-2}")),
            Cell::List(vec![Cell::Int(1), Cell::Int(-2)])
        );
        assert_eq!(cell(1231, Some("{}")), Cell::List(vec![]));
        assert_eq!(cell(1007, Some("{{1,2},{3,4}}")), Cell::Text("{{1,2},{3,4}}".into()));
        // What does not parse stays text rather than being lost.
        assert_eq!(cell(oid::DATE, Some("infinity")), Cell::Text("infinity".into()));
        assert_eq!(cell(oid::BYTEA, Some("\\x0")), Cell::Text("\\x0".into()));
    }
}
