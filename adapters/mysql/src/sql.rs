//! Every SQL text the MySQL/MariaDB source sends, built for given tables and tested as text.

/// The server's binlog settings: `log_bin`, `binlog_format`, `binlog_row_image`.
pub const BINLOG_SETTINGS: &str = "SELECT @@GLOBAL.log_bin, @@GLOBAL.binlog_format, @@GLOBAL.binlog_row_image";
/// `binlog_row_metadata` (MySQL 8.0.1+, MariaDB 10.5+; older servers have none).
pub const ROW_METADATA: &str = "SELECT @@GLOBAL.binlog_row_metadata";
/// The server's offset from UTC, seconds.
pub const UTC_OFFSET: &str = "SELECT TIMESTAMPDIFF(SECOND, UTC_TIMESTAMP(), NOW())";
/// Whether binlog events carry a checksum.
pub const CHECKSUMMED: &str = "SELECT @@GLOBAL.binlog_checksum <> 'NONE'";
/// A table's columns (schema, table).
pub const COLUMNS: &str =
    "SELECT COLUMN_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?";
/// A table's row estimate (schema, table).
pub const ROW_ESTIMATE: &str =
    "SELECT TABLE_ROWS FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?";
/// A consistent snapshot's binlog position (MariaDB).
pub const SNAPSHOT_POSITION: &str = "SHOW STATUS LIKE 'binlog_snapshot_%'";

/// The binlog files the server keeps, oldest first: name, size (and more columns on MySQL 8).
pub const BINARY_LOGS: &str = "SHOW BINARY LOGS";
/// How long the server keeps binlogs, seconds (MySQL 8, MariaDB 10.6+; 0 = for ever).
pub const EXPIRY_SECONDS: &str = "SELECT @@GLOBAL.binlog_expire_logs_seconds";
/// The same on older servers, days.
pub const EXPIRY_DAYS: &str = "SELECT @@GLOBAL.expire_logs_days";

/// A quoted identifier.
pub fn quote(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// One chunk of a table's snapshot: `columns`, then the `key` columns, in key order, after the
/// key bound to the `?` parameters when `after`, at most `limit` rows.
pub fn snapshot_chunk(table: &str, columns: &[&str], key: &[String], after: bool, limit: usize) -> String {
    let select: Vec<String> = columns
        .iter()
        .map(|c| quote(c))
        .chain(key.iter().map(|k| quote(k)))
        .collect();
    let key_list = key.iter().map(|k| quote(k)).collect::<Vec<_>>().join(", ");
    let filter = if after {
        format!(" WHERE ({key_list}) > ({})", vec!["?"; key.len()].join(", "))
    } else {
        String::new()
    };
    format!(
        "SELECT {} FROM {}{filter} ORDER BY {key_list} LIMIT {limit}",
        select.join(", "),
        quote(table)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_chunks_read_in_key_order_after_the_last_key() {
        let key = vec!["nsrsbh".to_owned(), "x`y".to_owned()];
        assert_eq!(
            snapshot_chunk("nsr_djxx", &["nsrmc", "nsrsbh"], &key, false, 2000),
            "SELECT `nsrmc`, `nsrsbh`, `nsrsbh`, `x``y` FROM `nsr_djxx` ORDER BY `nsrsbh`, `x``y` LIMIT 2000"
        );
        assert_eq!(
            snapshot_chunk("t", &["a"], &key[..1], true, 5),
            "SELECT `a`, `nsrsbh` FROM `t` WHERE (`nsrsbh`) > (?) ORDER BY `nsrsbh` LIMIT 5"
        );
    }
}
