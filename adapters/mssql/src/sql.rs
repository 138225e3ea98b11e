//! The SQL text the SQL Server adapter sends, built for given tables and tested as text.
//!
//! Parameters are tiberius's `@P1, @P2, …`; a request takes at most 2,100 of them, so the sink
//! splits its rows into statements of [`rows_per_statement`]. Identifiers are bracket-quoted.
//! `money`/`smallmoney` columns are selected `CAST(… AS decimal(19, 4))`: tiberius decodes money
//! as a binary float, which is not exact.

/// Most parameters one request may carry (SQL Server's limit).
pub const MAX_PARAMS: usize = 2_100;

/// Whether the database has CDC enabled (one row, `is_cdc_enabled`).
pub const DB_CDC_ENABLED: &str = "SELECT CAST(is_cdc_enabled AS bit) FROM sys.databases WHERE name = DB_NAME()";

/// The highest LSN the capture job has written to the change tables.
pub const MAX_LSN: &str = "SELECT sys.fn_cdc_get_max_lsn()";

/// The lowest LSN a capture instance still holds (`@P1`: the instance); older changes were
/// removed by the cleanup job.
pub const MIN_LSN: &str = "SELECT sys.fn_cdc_get_min_lsn(@P1)";

/// The capture instances of a table (`@P1` schema, `@P2` table), newest first: instance name,
/// start LSN, creation time. A table has one, or two while a DBA moves it to a new column list
/// after a DDL.
pub const CAPTURE_INSTANCES: &str = "SELECT ct.capture_instance, ct.start_lsn, ct.create_date \
     FROM cdc.change_tables ct JOIN sys.tables t ON t.object_id = ct.source_object_id \
     JOIN sys.schemas s ON s.schema_id = t.schema_id WHERE s.name = @P1 AND t.name = @P2 \
     ORDER BY ct.create_date DESC";

/// The columns a capture instance captures (`@P1`: the instance).
pub const CAPTURED_COLUMNS: &str = "SELECT cc.column_name FROM cdc.captured_columns cc \
     JOIN cdc.change_tables ct ON ct.object_id = cc.object_id WHERE ct.capture_instance = @P1";

/// A table's columns, their types and whether CDC tracks the table (`@P1` schema, `@P2`
/// table).
pub const TABLE_COLUMNS: &str = "SELECT c.name, ty.name, t.is_tracked_by_cdc FROM sys.tables t \
     JOIN sys.schemas s ON s.schema_id = t.schema_id JOIN sys.columns c ON c.object_id = t.object_id \
     JOIN sys.types ty ON ty.user_type_id = c.user_type_id WHERE s.name = @P1 AND t.name = @P2";

/// A table's row count (`@P1`: `schema.table`), for the snapshot's progress bar.
pub const ROW_ESTIMATE: &str = "SELECT CAST(SUM(row_count) AS bigint) FROM sys.dm_db_partition_stats \
     WHERE object_id = OBJECT_ID(@P1) AND index_id IN (0, 1)";

/// The LSN a capture instance starts at (`@P1`: the instance).
pub const START_LSN: &str = "SELECT start_lsn FROM cdc.change_tables WHERE capture_instance = @P1";

/// The snapshot's transaction: every chunk reads the same committed data.
pub const BEGIN_SNAPSHOT: &str = "SET TRANSACTION ISOLATION LEVEL SNAPSHOT; BEGIN TRANSACTION";

/// The bookkeeping table of the sink, created when missing.
pub const CREATE_APPLIED: &str = "IF OBJECT_ID(N'dbo.exhub_applied', N'U') IS NULL \
     CREATE TABLE dbo.exhub_applied (source nvarchar(190) NOT NULL, tbl nvarchar(128) NOT NULL, \
     doc_key nvarchar(450) NOT NULL, position varchar(100) NOT NULL, \
     applied_at datetime2 NOT NULL DEFAULT SYSUTCDATETIME(), PRIMARY KEY (source, tbl, doc_key))";

/// A quoted identifier: `[name]`, with `]` doubled.
pub fn quote(name: &str) -> String {
    format!("[{}]", name.replace(']', "]]"))
}

/// `schema.table` quoted (`dbo` when the name has no schema).
pub fn qualified(table: &str) -> String {
    match table.split_once('.') {
        Some((schema, name)) => format!("{}.{}", quote(schema), quote(name)),
        None => format!("[dbo].{}", quote(table)),
    }
}

/// A column as selected: money types cast to an exact decimal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// The column's name.
    pub name: String,
    /// Its type name (`sys.types.name`: `decimal`, `money`, `nvarchar`, …).
    pub type_name: String,
}

impl Column {
    fn select(&self) -> String {
        let q = quote(&self.name);
        match self.type_name.as_str() {
            "money" | "smallmoney" => format!("CAST({q} AS decimal(19, 4)) AS {q}"),
            _ => q,
        }
    }
}

/// All changes of a capture instance between `@P1` and `@P2` (LSNs, inclusive), one row per
/// insert (operation 2), delete (1, with the deleted row) and update (4, the after-image), in
/// commit then sequence order: commit LSN, sequence, operation, commit time (the server's
/// local time), then the columns.
pub fn changes(instance: &str, columns: &[Column]) -> String {
    let cols: Vec<String> = columns.iter().map(Column::select).collect();
    format!(
        "SELECT __$start_lsn, __$seqval, __$operation, sys.fn_cdc_map_lsn_to_time(__$start_lsn), {} \
         FROM cdc.{}(@P1, @P2, N'all') ORDER BY __$start_lsn, __$seqval",
        cols.join(", "),
        quote(&format!("fn_cdc_get_all_changes_{instance}"))
    )
}

/// One snapshot chunk of `table`: `limit` rows in key order, after the key bound in
/// `@P1…@Pn` when `resume` (SQL Server has no row-value comparison, so the bound is spelled
/// out: `k1 > @P1 OR (k1 = @P1 AND k2 > @P2) …`).
pub fn snapshot_chunk(table: &str, columns: &[Column], key: &[String], limit: usize, resume: bool) -> String {
    let cols: Vec<String> = columns.iter().map(Column::select).collect();
    let order: Vec<String> = key.iter().map(|k| quote(k)).collect();
    let filter = if resume {
        let alternatives: Vec<String> = (0..key.len())
            .map(|i| {
                let mut terms: Vec<String> = (0..i).map(|j| format!("{} = @P{}", quote(&key[j]), j + 1)).collect();
                terms.push(format!("{} > @P{}", quote(&key[i]), i + 1));
                format!("({})", terms.join(" AND "))
            })
            .collect();
        format!(" WHERE {}", alternatives.join(" OR "))
    } else {
        String::new()
    };
    format!(
        "SELECT TOP ({limit}) {} FROM {}{filter} ORDER BY {}",
        cols.join(", "),
        qualified(table),
        order.join(", ")
    )
}

/// Rows of `width` parameters one statement may carry.
pub fn rows_per_statement(width: usize) -> usize {
    (MAX_PARAMS / width.max(1)).clamp(1, 1000)
}

/// `(@P1, @P2), (@P3, @P4)…`: `rows` rows of `width` parameters from `@P{first}`.
fn values(rows: usize, width: usize, first: usize) -> String {
    (0..rows)
        .map(|r| {
            let row: Vec<String> = (0..width).map(|c| format!("@P{}", first + r * width + c)).collect();
            format!("({})", row.join(", "))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Upserts `rows` rows of `columns` into `table` by `key` in one MERGE (`HOLDLOCK`, so two sinks
/// cannot both insert the same key).
pub fn merge(table: &str, columns: &[String], key: &[String], rows: usize) -> String {
    let cols: Vec<String> = columns.iter().map(|c| quote(c)).collect();
    let on: Vec<String> = key.iter().map(|k| format!("t.{0} = s.{0}", quote(k))).collect();
    let sets: Vec<String> = columns
        .iter()
        .filter(|c| !key.contains(c))
        .map(|c| format!("t.{0} = s.{0}", quote(c)))
        .collect();
    let matched = if sets.is_empty() {
        String::new()
    } else {
        format!(" WHEN MATCHED THEN UPDATE SET {}", sets.join(", "))
    };
    let inserted: Vec<String> = cols.iter().map(|c| format!("s.{c}")).collect();
    format!(
        "MERGE INTO {} WITH (HOLDLOCK) AS t USING (VALUES {}) AS s ({}) ON {}{matched} \
         WHEN NOT MATCHED THEN INSERT ({}) VALUES ({});",
        qualified(table),
        values(rows, columns.len(), 1),
        cols.join(", "),
        on.join(" AND "),
        cols.join(", "),
        inserted.join(", ")
    )
}

/// Deletes `rows` keys of `key` columns from `table`.
pub fn delete(table: &str, key: &[String], rows: usize) -> String {
    let cols: Vec<String> = key.iter().map(|k| quote(k)).collect();
    let on: Vec<String> = key.iter().map(|k| format!("t.{0} = d.{0}", quote(k))).collect();
    format!(
        "DELETE t FROM {} AS t JOIN (VALUES {}) AS d ({}) ON {};",
        qualified(table),
        values(rows, key.len(), 1),
        cols.join(", "),
        on.join(" AND ")
    )
}

/// Claims `rows` (source, tbl, doc_key, position) versions: records those newer than what
/// `exhub_applied` holds (compared bytewise, as the positions are built to sort) and returns
/// their keys — the versions to apply; the others are stale.
pub fn claim_applied(rows: usize) -> String {
    format!(
        "MERGE INTO dbo.exhub_applied WITH (HOLDLOCK) AS a USING (VALUES {}) AS s (source, tbl, doc_key, position) \
         ON a.source = s.source AND a.tbl = s.tbl AND a.doc_key = s.doc_key \
         WHEN MATCHED AND a.position COLLATE Latin1_General_BIN2 < s.position COLLATE Latin1_General_BIN2 \
         THEN UPDATE SET position = s.position, applied_at = SYSUTCDATETIME() \
         WHEN NOT MATCHED THEN INSERT (source, tbl, doc_key, position) VALUES (s.source, s.tbl, s.doc_key, s.position) \
         OUTPUT s.doc_key;",
        values(rows, 4, 1)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| (*x).to_owned()).collect()
    }

    fn col(name: &str, type_name: &str) -> Column {
        Column {
            name: name.into(),
            type_name: type_name.into(),
        }
    }

    #[test]
    fn change_query_reads_the_instance_in_order_with_exact_money() {
        assert_eq!(
            changes("dbo_cbdj", &[col("grbh", "nvarchar"), col("jfjs", "money")]),
            "SELECT __$start_lsn, __$seqval, __$operation, sys.fn_cdc_map_lsn_to_time(__$start_lsn), [grbh], \
             CAST([jfjs] AS decimal(19, 4)) AS [jfjs] FROM cdc.[fn_cdc_get_all_changes_dbo_cbdj](@P1, @P2, N'all') \
             ORDER BY __$start_lsn, __$seqval"
        );
    }

    #[test]
    fn snapshot_chunks_resume_after_a_compound_key() {
        let cols = [col("a", "int"), col("b", "nvarchar"), col("c", "date")];
        assert_eq!(
            snapshot_chunk("si.cbdj", &cols, &s(&["a"]), 2000, false),
            "SELECT TOP (2000) [a], [b], [c] FROM [si].[cbdj] ORDER BY [a]"
        );
        assert_eq!(
            snapshot_chunk("cbdj", &cols, &s(&["a", "b"]), 10, true),
            "SELECT TOP (10) [a], [b], [c] FROM [dbo].[cbdj] WHERE ([a] > @P1) OR ([a] = @P1 AND [b] > @P2) ORDER BY [a], [b]"
        );
    }

    /// Every `q.column` in a query must name a table alias the query declares, or a schema:
    /// a Rust rename once rewrote `s.name` to `s.common.name` inside a SQL string.
    fn qualifiers_are_declared(sql: &str) -> Result<(), String> {
        let words: Vec<&str> = sql
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '$'))
            .filter(|w| !w.is_empty())
            .collect();
        let mut aliases: Vec<&str> = vec!["sys", "cdc", "dbo"];
        for pair in words.windows(2) {
            if pair[0].contains('.') && !pair[1].contains('.') && pair[1].chars().all(|c| c.is_ascii_lowercase()) {
                aliases.push(pair[1]);
            }
        }
        for w in words.iter().filter(|w| w.contains('.')) {
            let parts: Vec<&str> = w.split('.').collect();
            if parts.len() != 2 || !aliases.contains(&parts[0]) {
                return Err(format!("{w:?} in {sql:?}"));
            }
        }
        Ok(())
    }

    #[test]
    fn catalog_queries_name_only_their_own_aliases() {
        for sql in [
            DB_CDC_ENABLED,
            MAX_LSN,
            MIN_LSN,
            CAPTURE_INSTANCES,
            CAPTURED_COLUMNS,
            TABLE_COLUMNS,
            ROW_ESTIMATE,
            START_LSN,
        ] {
            qualifiers_are_declared(sql).unwrap();
        }
        assert!(qualifiers_are_declared("SELECT c.name FROM sys.tables t WHERE s.common.name = @P1").is_err());
        assert_eq!(
            TABLE_COLUMNS,
            "SELECT c.name, ty.name, t.is_tracked_by_cdc FROM sys.tables t JOIN sys.schemas s ON s.schema_id = \
             t.schema_id JOIN sys.columns c ON c.object_id = t.object_id JOIN sys.types ty ON ty.user_type_id = \
             c.user_type_id WHERE s.name = @P1 AND t.name = @P2"
        );
    }

    #[test]
    fn sink_statements() {
        assert_eq!(
            merge("cbdj", &s(&["id", "name"]), &s(&["id"]), 2),
            "MERGE INTO [dbo].[cbdj] WITH (HOLDLOCK) AS t USING (VALUES (@P1, @P2), (@P3, @P4)) AS s ([id], [name]) \
             ON t.[id] = s.[id] WHEN MATCHED THEN UPDATE SET t.[name] = s.[name] \
             WHEN NOT MATCHED THEN INSERT ([id], [name]) VALUES (s.[id], s.[name]);"
        );
        // A table of key columns only: nothing to update.
        assert!(!merge("k", &s(&["id"]), &s(&["id"]), 1).contains("WHEN MATCHED"));
        assert_eq!(
            delete("cbdj", &s(&["a", "b"]), 2),
            "DELETE t FROM [dbo].[cbdj] AS t JOIN (VALUES (@P1, @P2), (@P3, @P4)) AS d ([a], [b]) ON t.[a] = d.[a] AND t.[b] = d.[b];"
        );
        let claim = claim_applied(2);
        assert!(
            claim.contains("(VALUES (@P1, @P2, @P3, @P4), (@P5, @P6, @P7, @P8))"),
            "{claim}"
        );
        assert!(claim.ends_with("OUTPUT s.doc_key;"));
        assert_eq!(quote("a]b"), "[a]]b]");
        assert_eq!(rows_per_statement(4), 525);
        assert_eq!(rows_per_statement(1), 1000);
        assert_eq!(rows_per_statement(5000), 1);
        assert!(rows_per_statement(14) * 14 <= MAX_PARAMS);
    }
}
