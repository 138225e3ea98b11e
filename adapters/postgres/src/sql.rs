//! SQL and replication-protocol text the PostgreSQL source sends, built for given tables and
//! tested as text (the catalog queries stay beside their use in [`crate::source`]).

/// A quoted identifier.
pub fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Creates logical slot `slot` for pgoutput, exporting a snapshot when `export`.
pub fn create_slot(slot: &str, export: bool) -> String {
    let export = if export { "EXPORT_SNAPSHOT" } else { "NOEXPORT_SNAPSHOT" };
    format!("CREATE_REPLICATION_SLOT {} LOGICAL pgoutput {export}", quote(slot))
}

/// Imports exported snapshot `id` into the current transaction.
pub fn set_snapshot(id: &str) -> String {
    format!("SET TRANSACTION SNAPSHOT '{}'", id.replace('\'', "''"))
}

/// One chunk of a table's snapshot: the `key` columns (name, type), then `columns`, all as
/// text, in key order, after the key bound to `$1…` (text, cast back to each key's type) when
/// `after`, at most `limit` rows. `qualified` is the quoted `schema.table`.
pub fn snapshot_chunk(qualified: &str, key: &[(&str, &str)], columns: &[&str], after: bool, limit: usize) -> String {
    let select: Vec<String> = key
        .iter()
        .map(|(name, _)| *name)
        .chain(columns.iter().copied())
        .map(|c| format!("{}::text", quote(c)))
        .collect();
    let keys: Vec<String> = key.iter().map(|(name, _)| quote(name)).collect();
    let filter = if after {
        let bounds: Vec<String> = key
            .iter()
            .enumerate()
            .map(|(i, (_, type_name))| format!("${}::text::{type_name}", i + 1))
            .collect();
        format!(" WHERE ({}) > ({})", keys.join(", "), bounds.join(", "))
    } else {
        String::new()
    };
    format!(
        "SELECT {} FROM {qualified}{filter} ORDER BY {} LIMIT {limit}",
        select.join(", "),
        keys.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements() {
        assert_eq!(quote("a\"b"), "\"a\"\"b\"");
        assert_eq!(
            create_slot("exhub_legacy", true),
            "CREATE_REPLICATION_SLOT \"exhub_legacy\" LOGICAL pgoutput EXPORT_SNAPSHOT"
        );
        assert_eq!(set_snapshot("00000003-1'"), "SET TRANSACTION SNAPSHOT '00000003-1'''");
        assert_eq!(
            snapshot_chunk("\"public\".\"t\"", &[("id", "bigint")], &["name"], false, 2000),
            "SELECT \"id\"::text, \"name\"::text FROM \"public\".\"t\" ORDER BY \"id\" LIMIT 2000"
        );
        assert_eq!(
            snapshot_chunk("\"t\"", &[("a", "integer"), ("b", "text")], &["c"], true, 5),
            "SELECT \"a\"::text, \"b\"::text, \"c\"::text FROM \"t\" WHERE (\"a\", \"b\") > ($1::text::integer, $2::text::text) ORDER BY \"a\", \"b\" LIMIT 5"
        );
    }
}
