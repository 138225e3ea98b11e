//! The SQL a sink sends, per database: PostgreSQL takes a batch as one JSON parameter and lets
//! `jsonb_populate_recordset` give every value its column's type; MySQL/MariaDB take multi-row
//! `VALUES` with text parameters that the server converts. Identifiers are always quoted.

/// A target database's SQL flavour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// PostgreSQL.
    Postgres,
    /// MySQL / MariaDB.
    Mysql,
}

/// The bookkeeping table: the newest source position applied per (source, table, key).
pub const APPLIED: &str = "exhub_applied";

impl Dialect {
    /// A quoted identifier.
    pub fn quote(self, name: &str) -> String {
        match self {
            Dialect::Postgres => format!("\"{}\"", name.replace('"', "\"\"")),
            Dialect::Mysql => format!("`{}`", name.replace('`', "``")),
        }
    }

    /// Creates the bookkeeping table if missing.
    pub fn create_applied(self) -> String {
        match self {
            Dialect::Postgres => format!(
                "CREATE TABLE IF NOT EXISTS {APPLIED} (source TEXT NOT NULL, tbl TEXT NOT NULL, doc_key TEXT NOT NULL, \
                 position TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now(), PRIMARY KEY (source, tbl, doc_key))"
            ),
            Dialect::Mysql => format!(
                "CREATE TABLE IF NOT EXISTS {APPLIED} (source VARCHAR(190) NOT NULL, tbl VARCHAR(64) NOT NULL, \
                 doc_key VARCHAR(500) NOT NULL, position VARCHAR(100) NOT NULL, \
                 applied_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6), PRIMARY KEY (source, tbl, doc_key)) \
                 DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin"
            ),
        }
    }

    /// MySQL: reads the recorded positions of `n` keys of one (source, table); parameters are
    /// the source, the table, then the keys.
    pub fn mysql_select_applied(n: usize) -> String {
        format!(
            "SELECT doc_key, position FROM {APPLIED} WHERE source = ? AND tbl = ? AND doc_key IN ({})",
            vec!["?"; n.max(1)].join(", ")
        )
    }

    /// Records positions. PostgreSQL takes one JSON array of `{source, tbl, doc_key, position}`,
    /// replaces only older positions (compared bytewise, as [`exhub_connect::mapping::order_key`]
    /// is built) and returns the keys it recorded; MySQL takes `n` rows of four parameters
    /// already known to be newer.
    pub fn record_applied(self, n: usize) -> String {
        match self {
            Dialect::Postgres => format!(
                "INSERT INTO {APPLIED} (source, tbl, doc_key, position) \
                 SELECT source, tbl, doc_key, position FROM jsonb_to_recordset($1::jsonb) \
                 AS x(source TEXT, tbl TEXT, doc_key TEXT, position TEXT) \
                 ON CONFLICT (source, tbl, doc_key) DO UPDATE SET position = EXCLUDED.position, applied_at = now() \
                 WHERE {APPLIED}.position COLLATE \"C\" < EXCLUDED.position COLLATE \"C\" RETURNING doc_key"
            ),
            Dialect::Mysql => format!(
                "INSERT INTO {APPLIED} (source, tbl, doc_key, position) VALUES {} \
                 ON DUPLICATE KEY UPDATE position = VALUES(position), applied_at = CURRENT_TIMESTAMP(6)",
                vec!["(?, ?, ?, ?)"; n.max(1)].join(", ")
            ),
        }
    }

    /// Upserts rows into `table` by `key`, setting `columns` (the key columns among them):
    /// PostgreSQL takes one JSON array of row objects; MySQL `n` rows of `columns.len()`
    /// parameters.
    pub fn upsert(self, table: &str, columns: &[String], key: &[String], n: usize) -> String {
        let t = self.quote(table);
        let cols: Vec<String> = columns.iter().map(|c| self.quote(c)).collect();
        let non_key: Vec<&String> = columns.iter().filter(|c| !key.contains(c)).collect();
        match self {
            Dialect::Postgres => {
                let keys: Vec<String> = key.iter().map(|c| self.quote(c)).collect();
                let action = if non_key.is_empty() {
                    "DO NOTHING".to_owned()
                } else {
                    let sets: Vec<String> = non_key
                        .iter()
                        .map(|c| format!("{0} = EXCLUDED.{0}", self.quote(c)))
                        .collect();
                    format!("DO UPDATE SET {}", sets.join(", "))
                };
                format!(
                    "INSERT INTO {t} ({cols}) SELECT {cols} FROM jsonb_populate_recordset(NULL::{t}, $1::jsonb) \
                     ON CONFLICT ({keys}) {action}",
                    cols = cols.join(", "),
                    keys = keys.join(", "),
                )
            }
            Dialect::Mysql => {
                let row = format!("({})", vec!["?"; columns.len()].join(", "));
                let sets: Vec<String> = if non_key.is_empty() {
                    key.iter().map(|c| format!("{0} = {0}", self.quote(c))).collect()
                } else {
                    non_key
                        .iter()
                        .map(|c| format!("{0} = VALUES({0})", self.quote(c)))
                        .collect()
                };
                format!(
                    "INSERT INTO {t} ({}) VALUES {} ON DUPLICATE KEY UPDATE {}",
                    cols.join(", "),
                    vec![row; n.max(1)].join(", "),
                    sets.join(", ")
                )
            }
        }
    }

    /// Deletes rows of `table` by `key`: PostgreSQL takes one JSON array of key objects; MySQL
    /// `n` keys of `key.len()` parameters.
    pub fn delete(self, table: &str, key: &[String], n: usize) -> String {
        let t = self.quote(table);
        match self {
            Dialect::Postgres => {
                let on: Vec<String> = key.iter().map(|c| format!("t.{0} = d.{0}", self.quote(c))).collect();
                format!(
                    "DELETE FROM {t} AS t USING jsonb_populate_recordset(NULL::{t}, $1::jsonb) AS d WHERE {}",
                    on.join(" AND ")
                )
            }
            Dialect::Mysql => {
                let cols: Vec<String> = key.iter().map(|c| self.quote(c)).collect();
                let row = format!("({})", vec!["?"; key.len()].join(", "));
                format!(
                    "DELETE FROM {t} WHERE ({}) IN ({})",
                    cols.join(", "),
                    vec![row; n.max(1)].join(", ")
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| (*x).to_owned()).collect()
    }

    #[test]
    fn statements_per_dialect() {
        let cols = s(&["taxpayer_id", "name"]);
        let key = s(&["taxpayer_id"]);
        assert_eq!(
            Dialect::Postgres.upsert("tax", &cols, &key, 3),
            "INSERT INTO \"tax\" (\"taxpayer_id\", \"name\") SELECT \"taxpayer_id\", \"name\" FROM \
             jsonb_populate_recordset(NULL::\"tax\", $1::jsonb) ON CONFLICT (\"taxpayer_id\") DO UPDATE SET \"name\" = EXCLUDED.\"name\""
        );
        assert_eq!(
            Dialect::Mysql.upsert("tax", &cols, &key, 2),
            "INSERT INTO `tax` (`taxpayer_id`, `name`) VALUES (?, ?), (?, ?) ON DUPLICATE KEY UPDATE `name` = VALUES(`name`)"
        );
        assert_eq!(
            Dialect::Mysql.delete("t", &s(&["a", "b"]), 2),
            "DELETE FROM `t` WHERE (`a`, `b`) IN ((?, ?), (?, ?))"
        );
        assert!(
            Dialect::Postgres
                .delete("t", &key, 1)
                .contains("t.\"taxpayer_id\" = d.\"taxpayer_id\"")
        );
        assert!(Dialect::mysql_select_applied(3).ends_with("IN (?, ?, ?)"));
        assert!(Dialect::Postgres.record_applied(1).ends_with("RETURNING doc_key"));
        assert_eq!(Dialect::Mysql.quote("a`b"), "`a``b`");
        assert_eq!(Dialect::Postgres.quote("a\"b"), "\"a\"\"b\"");
    }
}
