//! SQL Server log sequence numbers and the source's position in the change stream.
//!
//! An LSN is `binary(10)`: virtual log file sequence (4 bytes), log block offset (4), slot (2),
//! big-endian, so byte order is log order. exhub writes it as SQL Server displays it,
//! `0x` and 20 upper-case hex digits: fixed width, so the text sorts like the LSN too (which is
//! what [`exhub_connect::mapping::order_key`] relies on for `mssql` positions).

use std::fmt;

use serde::{Deserialize, Serialize};

/// A SQL Server LSN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn([u8; 10]);

/// Text that is not an LSN.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a SQL Server LSN (0x and 20 hex digits, or 10 bytes)")]
pub struct LsnError(String);

impl Lsn {
    /// The LSN of 10 bytes as the server returns a `binary(10)`.
    pub fn from_bytes(bytes: &[u8]) -> Result<Lsn, LsnError> {
        let array: [u8; 10] = bytes.try_into().map_err(|_| LsnError(format!("{bytes:02x?}")))?;
        Ok(Lsn(array))
    }

    /// Parses `0x0000002A000001B80003` (the `0x` is optional, case does not matter).
    pub fn parse(text: &str) -> Result<Lsn, LsnError> {
        let digits = text
            .strip_prefix("0x")
            .or_else(|| text.strip_prefix("0X"))
            .unwrap_or(text);
        if digits.len() != 20 || !digits.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(LsnError(text.to_owned()));
        }
        let mut bytes = [0u8; 10];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = u8::from_str_radix(&digits[2 * i..2 * i + 2], 16).map_err(|_| LsnError(text.to_owned()))?;
        }
        Ok(Lsn(bytes))
    }

    /// The 10 bytes (for binding as `binary(10)`).
    pub fn bytes(&self) -> &[u8; 10] {
        &self.0
    }

    /// The next LSN, as `sys.fn_cdc_increment_lsn` gives it: the 80-bit number plus one
    /// (`None` past the largest).
    pub fn increment(self) -> Option<Lsn> {
        let mut bytes = self.0;
        for b in bytes.iter_mut().rev() {
            let (v, carry) = b.overflowing_add(1);
            *b = v;
            if !carry {
                return Some(Lsn(bytes));
            }
        }
        None
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("0x")?;
        for b in self.0 {
            write!(f, "{b:02X}")?;
        }
        Ok(())
    }
}

/// Where the source is: every change of transactions committed before `lsn` is confirmed, and
/// the first `rows` rows of the transaction committed at `lsn` (in `__$seqval` order). A
/// restart reads from `lsn` inclusive and skips those rows, so a transaction flushed in parts
/// (a huge one) resumes where it stopped, its rows numbered as before.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// The commit LSN of the transaction in progress (or the next one to read).
    #[serde(with = "lsn_text")]
    pub lsn: Lsn,
    /// Rows of that transaction already confirmed.
    pub rows: u64,
}

impl Position {
    /// Whether the row numbered `seq` (from 1) of the transaction at `lsn` is already confirmed.
    pub fn covers(&self, lsn: Lsn, seq: u64) -> bool {
        lsn < self.lsn || (lsn == self.lsn && seq <= self.rows)
    }
}

mod lsn_text {
    use serde::{Deserialize, Deserializer, Serializer};

    use super::Lsn;

    pub fn serialize<S: Serializer>(lsn: &Lsn, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&lsn.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Lsn, D::Error> {
        let text = String::deserialize(d)?;
        Lsn::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_prints_orders_and_increments() {
        let a = Lsn::parse("0x0000002A000001B80003").unwrap();
        assert_eq!(a.to_string(), "0x0000002A000001B80003");
        assert_eq!(Lsn::parse("0000002a000001b80003").unwrap(), a);
        let b = Lsn::parse("0x0000002A000001C00001").unwrap();
        assert!(a < b);
        // Text order is LSN order (fixed width, one case).
        assert!(a.to_string() < b.to_string());
        assert_eq!(a.increment().unwrap().to_string(), "0x0000002A000001B80004");
        assert_eq!(
            Lsn::parse("0x0000002A0000FFFFFFFF")
                .unwrap()
                .increment()
                .unwrap()
                .to_string(),
            "0x0000002A000100000000"
        );
        assert_eq!(Lsn::parse("0xFFFFFFFFFFFFFFFFFFFF").unwrap().increment(), None);
        assert_eq!(Lsn::from_bytes(a.bytes()).unwrap(), a);
        for bad in ["", "0x12", "0x0000002A000001B8000G", "0x0000002A000001B800031"] {
            assert!(Lsn::parse(bad).is_err(), "{bad}");
        }
        assert!(Lsn::from_bytes(&[0; 9]).is_err());
    }

    #[test]
    fn sinks_order_mssql_positions_like_the_log() {
        let key = |lsn: &str, seq: u64| {
            exhub_connect::mapping::order_key(&exhub_schemas::SourceInfo {
                kind: "mssql".into(),
                db: None,
                table: None,
                position: Some(Lsn::parse(lsn).unwrap().to_string()),
                committed_at: None,
                tx: None,
                seq: Some(seq),
            })
            .unwrap()
        };
        // A snapshot row (seq 0) sorts before the changes streamed after its label; rows of a
        // transaction by their sequence; transactions by LSN whatever their sequences.
        assert!(key("0x0000002A000001B80003", 0) < key("0x0000002A000001B80003", 1));
        assert!(key("0x0000002A000001B80003", 2) < key("0x0000002A000001B80003", 10));
        assert!(key("0x0000002A000001B80003", 999) < key("0x0000002A000001B80004", 1));
        assert!(key("0x0000002A000001B8FFFF", 1) < key("0x0000002B000000000001", 1));
    }

    #[test]
    fn a_position_covers_what_was_confirmed() {
        let lsn = Lsn::parse("0x0000002A000001B80003").unwrap();
        let p = Position { lsn, rows: 2 };
        assert!(p.covers(Lsn::parse("0x0000002A000001B80002").unwrap(), 99));
        assert!(p.covers(lsn, 2));
        assert!(!p.covers(lsn, 3));
        assert!(!p.covers(lsn.increment().unwrap(), 1));
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(json, r#"{"lsn":"0x0000002A000001B80003","rows":2}"#);
        assert_eq!(serde_json::from_str::<Position>(&json).unwrap(), p);
        assert!(serde_json::from_str::<Position>(r#"{"lsn":"0x12","rows":2}"#).is_err());
    }
}
