//! Typed values of an exchange document: the eight scalar types, lists and maps, and the
//! strict text grammars that let each type survive JSON and XML unchanged.
//!
//! Every string this module accepts is also a legal XML 1.0 character sequence, so a value that
//! exists can always be encoded in both encodings (the rule in [`check_text`]).

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine as _;

/// One value in a document body (or a business key).
///
/// `Null` is a value: a field that is present and null differs from a field that is absent
/// (absent fields are simply not in the enclosing map).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    /// An explicit null.
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// A 64-bit signed integer. Larger numbers must travel as [`Value::Decimal`].
    Int(i64),
    /// An exact decimal number kept as its text, e.g. `1200000.00` (never a float).
    Decimal(Decimal),
    /// Text.
    Text(String),
    /// A calendar date, `YYYY-MM-DD`.
    Date(Date),
    /// An instant with its UTC offset, RFC 3339, e.g. `2026-11-22T08:00:00+08:00`.
    Timestamp(Timestamp),
    /// Bytes; base64 (standard alphabet, padded) in both encodings.
    Binary(Vec<u8>),
    /// An ordered list.
    List(Vec<Value>),
    /// A map from field name to value, ordered by name.
    Map(BTreeMap<String, Value>),
}

/// The type of a [`Value`], as named in XML `t` attributes and in error messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// [`Value::Null`]
    Null,
    /// [`Value::Bool`]
    Boolean,
    /// [`Value::Int`]
    Integer,
    /// [`Value::Decimal`]
    Decimal,
    /// [`Value::Text`]
    String,
    /// [`Value::Date`]
    Date,
    /// [`Value::Timestamp`]
    Timestamp,
    /// [`Value::Binary`]
    Binary,
    /// [`Value::List`]
    List,
    /// [`Value::Map`]
    Map,
}

impl Kind {
    /// The name used on the wire (`t="decimal"`) and in messages.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Null => "null",
            Kind::Boolean => "boolean",
            Kind::Integer => "integer",
            Kind::Decimal => "decimal",
            Kind::String => "string",
            Kind::Date => "date",
            Kind::Timestamp => "timestamp",
            Kind::Binary => "binary",
            Kind::List => "list",
            Kind::Map => "map",
        }
    }

    /// The inverse of [`Kind::name`].
    pub fn from_name(name: &str) -> Option<Kind> {
        Some(match name {
            "null" => Kind::Null,
            "boolean" => Kind::Boolean,
            "integer" => Kind::Integer,
            "decimal" => Kind::Decimal,
            "string" => Kind::String,
            "date" => Kind::Date,
            "timestamp" => Kind::Timestamp,
            "binary" => Kind::Binary,
            "list" => Kind::List,
            "map" => Kind::Map,
            _ => return None,
        })
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Value {
    /// The type of this value.
    pub fn kind(&self) -> Kind {
        match self {
            Value::Null => Kind::Null,
            Value::Bool(_) => Kind::Boolean,
            Value::Int(_) => Kind::Integer,
            Value::Decimal(_) => Kind::Decimal,
            Value::Text(_) => Kind::String,
            Value::Date(_) => Kind::Date,
            Value::Timestamp(_) => Kind::Timestamp,
            Value::Binary(_) => Kind::Binary,
            Value::List(_) => Kind::List,
            Value::Map(_) => Kind::Map,
        }
    }

    /// The text form of a scalar as both encodings carry it (`None` for null, lists and maps).
    pub fn scalar_text(&self) -> Option<String> {
        Some(match self {
            Value::Bool(b) => b.to_string(),
            Value::Int(i) => i.to_string(),
            Value::Decimal(d) => d.as_str().to_owned(),
            Value::Text(s) => s.clone(),
            Value::Date(d) => d.as_str().to_owned(),
            Value::Timestamp(t) => t.as_str().to_owned(),
            Value::Binary(b) => base64::engine::general_purpose::STANDARD.encode(b),
            Value::Null | Value::List(_) | Value::Map(_) => return None,
        })
    }

    /// Parses the text form of a scalar of kind `kind`; `None` when the text is not in that
    /// type's grammar (or `kind` is not a scalar).
    pub fn parse_scalar(kind: Kind, text: &str) -> Option<Value> {
        Some(match kind {
            Kind::Boolean => match text {
                "true" => Value::Bool(true),
                "false" => Value::Bool(false),
                _ => return None,
            },
            Kind::Integer => {
                let i: i64 = text.parse().ok()?;
                // Only the canonical spelling, so that the text round-trips exactly.
                if i.to_string() != text {
                    return None;
                }
                Value::Int(i)
            }
            Kind::Decimal => Value::Decimal(Decimal::parse(text)?),
            Kind::String => Value::Text(text.to_owned()),
            Kind::Date => Value::Date(Date::parse(text)?),
            Kind::Timestamp => Value::Timestamp(Timestamp::parse(text)?),
            Kind::Binary => Value::Binary(decode_base64(text)?),
            Kind::Null | Kind::List | Kind::Map => return None,
        })
    }

    /// Nesting depth: 0 for a scalar, 1 + the deepest child for lists and maps.
    pub fn depth(&self) -> usize {
        match self {
            Value::List(items) => 1 + items.iter().map(Value::depth).max().unwrap_or(0),
            Value::Map(map) => 1 + map.values().map(Value::depth).max().unwrap_or(0),
            _ => 0,
        }
    }
}

/// Decodes canonical base64 (standard alphabet, padded, no stray bits).
pub fn decode_base64(text: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD.decode(text).ok()
}

macro_rules! text_newtype {
    ($(#[$doc:meta])* $name:ident, $check:path, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(String);

        impl $name {
            /// Accepts `text` only if it is in this type's grammar.
            pub fn parse(text: &str) -> Option<Self> {
                $check(text).then(|| Self(text.to_owned()))
            }
            /// The text, exactly as it travels.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s).ok_or_else(|| format!("{s:?} is not {}", $what))
            }
        }
    };
}

text_newtype!(
    /// An exact decimal: `-?(0|[1-9][0-9]*)(\.[0-9]+)?`, kept as written so that its scale
    /// (`1.50` vs `1.5`) survives.
    Decimal,
    is_decimal_text,
    "a decimal like 1200000.00"
);
text_newtype!(
    /// A calendar date `YYYY-MM-DD` (years 0001–9999, real days only).
    Date,
    is_date,
    "a date like 2019-03-01"
);
text_newtype!(
    /// An RFC 3339 timestamp that always names its offset: `YYYY-MM-DDTHH:MM:SS[.f{1,9}](Z|±HH:MM)`.
    Timestamp,
    is_timestamp,
    "a timestamp like 2026-11-22T08:00:00+08:00"
);

fn all_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// Whether `s` is in the decimal grammar (see [`Decimal`]).
pub fn is_decimal_text(s: &str) -> bool {
    let s = s.strip_prefix('-').unwrap_or(s);
    let (int, frac) = match s.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (s, None),
    };
    all_digits(int) && (int == "0" || !int.starts_with('0')) && frac.is_none_or(all_digits) && s.len() <= 100
}

fn is_date(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return false;
    }
    let (Some(y), Some(m), Some(d)) = (num(&s[0..4]), num(&s[5..7]), num(&s[8..10])) else {
        return false;
    };
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let days = match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return false,
    };
    y >= 1 && (1..=days).contains(&d)
}

fn num(s: &str) -> Option<u32> {
    if all_digits(s) { s.parse().ok() } else { None }
}

fn is_timestamp(s: &str) -> bool {
    if s.len() < 20 || !s.is_char_boundary(10) || !is_date(&s[..10]) {
        return false;
    }
    let rest = &s[10..];
    let Some(rest) = rest.strip_prefix('T') else {
        return false;
    };
    let b = rest.as_bytes();
    if b.len() < 9 || b[2] != b':' || b[5] != b':' {
        return false;
    }
    let (Some(h), Some(mi), Some(se)) = (num(&rest[0..2]), num(&rest[3..5]), num(&rest[6..8])) else {
        return false;
    };
    if h > 23 || mi > 59 || se > 59 {
        return false;
    }
    let mut zone = &rest[8..];
    if let Some(frac) = zone.strip_prefix('.') {
        let n = frac.bytes().take_while(u8::is_ascii_digit).count();
        if !(1..=9).contains(&n) {
            return false;
        }
        zone = &frac[n..];
    }
    if zone == "Z" {
        return true;
    }
    let zb = zone.as_bytes();
    zb.len() == 6
        && (zb[0] == b'+' || zb[0] == b'-')
        && zb[3] == b':'
        && num(&zone[1..3]).is_some_and(|h| h <= 23)
        && num(&zone[4..6]).is_some_and(|m| m <= 59)
}

/// Whether `c` is a character XML 1.0 can carry (`#x9 | #xA | #xD | [#x20-#xD7FF] |
/// [#xE000-#xFFFD] | [#x10000-#x10FFFF]`).
pub fn is_xml_char(c: char) -> bool {
    matches!(c, '\u{9}' | '\u{A}' | '\u{D}' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..='\u{10FFFF}')
}

/// The text rule of the exchange standard: every string in a document (values, names, header
/// fields) consists of characters XML 1.0 can carry. Anything else — NUL, most C0 control
/// characters, U+FFFE, U+FFFF — is refused with the offending code point, in both encodings,
/// so that no document exists that one encoding could carry and the other could not.
/// Binary data belongs in a `binary` field.
pub fn check_text(s: &str) -> Result<(), String> {
    match s.chars().find(|&c| !is_xml_char(c)) {
        None => Ok(()),
        Some(c) => Err(format!(
            "character U+{:04X} is not allowed in text (XML 1.0 cannot carry it; send such data as a binary field)",
            c as u32
        )),
    }
}

/// The name rule for fields (body keys at every depth, business key names):
/// `[A-Za-z_][A-Za-z0-9_]*`, at most 64 characters. Such a name is a valid XML element name,
/// a JSON Schema property name and an SQL identifier alike.
pub fn check_field_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let ok_first = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if ok_first && name.len() <= 64 && chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        Ok(())
    } else {
        Err(format!(
            "field name {name:?} is not allowed (use [A-Za-z_][A-Za-z0-9_]*, at most 64 characters)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_keep_their_text_and_refuse_floats() {
        for ok in [
            "0",
            "-1",
            "1200000.00",
            "0.5",
            "-0.001",
            "123456789012345678901234567890.12",
        ] {
            assert_eq!(Decimal::parse(ok).map(|d| d.to_string()), Some(ok.to_owned()));
        }
        for bad in ["", "01", "1.", ".5", "1e5", "1.5E3", "+1", "NaN", "1,5", " 1", "1.2.3"] {
            assert!(Decimal::parse(bad).is_none(), "{bad} accepted");
        }
    }

    #[test]
    fn dates_are_real_days() {
        for ok in ["2019-03-01", "2024-02-29", "2000-02-29", "0001-01-01", "9999-12-31"] {
            assert!(Date::parse(ok).is_some(), "{ok} refused");
        }
        for bad in [
            "2023-02-29",
            "1900-02-29",
            "2019-13-01",
            "2019-00-10",
            "2019-3-1",
            "0000-01-01",
            "2019-03-01T00:00:00Z",
            "２０１９-03-01",
        ] {
            assert!(Date::parse(bad).is_none(), "{bad} accepted");
        }
    }

    #[test]
    fn timestamps_need_a_zone() {
        for ok in [
            "2026-11-22T08:00:00Z",
            "2026-11-22T08:00:00.123Z",
            "2026-11-22T08:00:00.123456789+08:00",
            "2026-11-22T23:59:59-05:30",
        ] {
            assert!(Timestamp::parse(ok).is_some(), "{ok} refused");
        }
        for bad in [
            "2026-11-22T08:00:00",
            "2026-11-22 08:00:00Z",
            "2026-11-22T24:00:00Z",
            "2026-11-22T08:00:00.Z",
            "2026-11-22T08:00:00.1234567890Z",
            "2026-11-22T08:00:00+0800",
            "2026-11-22t08:00:00z",
            "2026-11-22T08:00:00+08:00日",
        ] {
            assert!(Timestamp::parse(bad).is_none(), "{bad} accepted");
        }
    }

    #[test]
    fn scalars_parse_only_their_canonical_text() {
        assert_eq!(Value::parse_scalar(Kind::Integer, "42"), Some(Value::Int(42)));
        assert_eq!(Value::parse_scalar(Kind::Integer, "042"), None);
        assert_eq!(Value::parse_scalar(Kind::Integer, "+42"), None);
        assert_eq!(Value::parse_scalar(Kind::Integer, "99999999999999999999"), None);
        assert_eq!(Value::parse_scalar(Kind::Boolean, "1"), None);
        assert_eq!(
            Value::parse_scalar(Kind::Binary, "AAEC/w=="),
            Some(Value::Binary(vec![0, 1, 2, 255]))
        );
        assert_eq!(Value::parse_scalar(Kind::Binary, "AAEC/x=="), None, "stray bits");
        assert_eq!(Value::parse_scalar(Kind::Binary, "AAEC/w"), None, "unpadded");
    }

    #[test]
    fn text_rule_refuses_what_xml_cannot_carry() {
        assert!(check_text("南海区税务局 <&> \"' \t\r\n 😀").is_ok());
        let err = check_text("a\u{1}b").unwrap_err();
        assert!(err.contains("U+0001"), "{err}");
        assert!(check_text("\u{FFFE}").is_err());
        assert!(check_text("\0").is_err());
    }

    #[test]
    fn field_names() {
        assert!(check_field_name("taxpayer_id").is_ok());
        assert!(check_field_name("_x9").is_ok());
        for bad in ["", "9a", "a-b", "a b", "名称", &"x".repeat(65)] {
            assert!(check_field_name(bad).is_err(), "{bad} accepted");
        }
    }
}
