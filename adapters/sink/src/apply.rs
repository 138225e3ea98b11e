//! Applying a batch of documents in one transaction, effectively once: the newest version of
//! each key wins (by source position, see [`exhub_connect::mapping::order_key`]), versions not
//! newer than what `exhub_applied` records are skipped, and the data and the bookkeeping commit
//! together.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};

use exhub_connect::mapping::order_key;
use exhub_schemas::{Document, Op, Value};
use futures_util::future::BoxFuture;
use sqlx::any::{AnyArguments, AnyPoolOptions};
use sqlx::query::Query;
use sqlx::{Any, AnyPool, AssertSqlSafe, Row as _};

use crate::dialect::Dialect;

/// Rows per MySQL statement (its parameters are limited to 65,535).
const MYSQL_ROWS: usize = 400;

/// One doc type's target table.
#[derive(Debug, Clone)]
pub struct TableTarget {
    /// The doc type.
    pub doc_type: String,
    /// The target table.
    pub table: String,
    /// Document field → column, where they differ (default: the field's name).
    pub columns: BTreeMap<String, String>,
}

impl TableTarget {
    /// The column field `field` is written to.
    pub fn column<'a>(&'a self, field: &'a str) -> &'a str {
        self.columns.get(field).map_or(field, String::as_str)
    }
}

/// What one batch did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// Rows upserted.
    pub upserted: usize,
    /// Rows deleted (or already absent).
    pub deleted: usize,
    /// Versions skipped: not newer than what was applied before (redeliveries, replays).
    pub stale: usize,
    /// Documents of doc types this subscriber does not apply.
    pub ignored: usize,
}

/// Why a batch was not applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// PostgreSQL or MySQL.
    #[error(transparent)]
    Sql(#[from] sqlx::Error),
    /// Another database's driver.
    #[error("{error}")]
    Driver {
        /// The driver's error.
        error: Box<dyn std::error::Error + Send + Sync>,
        /// Whether the database refused the data rather than failed.
        data: bool,
    },
}

impl ApplyError {
    /// Whether the database refused the data (a constraint, a type: the document goes to the
    /// DLQ) rather than failed (the batch is retried).
    pub fn is_data_error(&self) -> bool {
        match self {
            ApplyError::Sql(e) => matches!(
                e,
                sqlx::Error::Database(_) | sqlx::Error::ColumnDecode { .. } | sqlx::Error::Encode(_)
            ),
            ApplyError::Driver { data, .. } => *data,
        }
    }
}

/// A database documents are applied to: the effectively-once algorithm's last step, spoken
/// in the database's own SQL. One transaction per call: claim in `exhub_applied` the versions
/// newer than what it records (see [`fresh`]), delete, upsert, commit — or nothing.
pub trait Target: Send + Sync {
    /// Applies `groups` (the newest version of each key, grouped by (table, source)) in one
    /// transaction, counting into `outcome`.
    fn apply<'a>(&'a self, groups: Groups<'a>, outcome: &'a mut Outcome) -> BoxFuture<'a, Result<(), ApplyError>>;
    /// Closes its connections.
    fn close(&self) -> BoxFuture<'_, ()>;
}

/// Applies documents to one database.
pub struct Applier {
    target: Box<dyn Target>,
    targets: HashMap<String, TableTarget>,
}

/// One version of one key, ready to apply.
pub struct Version<'d> {
    /// The document.
    pub doc: &'d Document,
    /// The body to write: the document's, plus the fields it left out as unchanged that an
    /// older version of the same key in the same batch had.
    pub body: Cow<'d, BTreeMap<String, Value>>,
    /// Where it goes.
    pub target: &'d TableTarget,
    source: String,
    /// Its key's values, joined.
    pub key: String,
    /// Its order key (newer versions sort after older ones).
    pub order: String,
}

/// The versions to apply, grouped by (table, source) for the bookkeeping.
pub type Groups<'d> = BTreeMap<(String, String), Vec<Version<'d>>>;

impl Applier {
    /// An applier on `target` for `tables`.
    pub fn new(target: Box<dyn Target>, tables: Vec<TableTarget>) -> Applier {
        Applier {
            target,
            targets: tables.into_iter().map(|t| (t.doc_type.clone(), t)).collect(),
        }
    }

    /// Closes the connections.
    pub async fn close(&self) {
        self.target.close().await;
    }

    /// Applies `docs` (in delivery order) in one transaction.
    pub async fn apply(&self, docs: &[&Document]) -> Result<Outcome, ApplyError> {
        let mut outcome = Outcome::default();
        // The newest version of each (table, source, key) in this batch.
        let mut newest: BTreeMap<(String, String, String), Version<'_>> = BTreeMap::new();
        for doc in docs {
            let Some(target) = self.targets.get(&doc.header.doc_type) else {
                outcome.ignored += 1;
                continue;
            };
            if !matches!(doc.header.op, Op::Upsert | Op::Snapshot | Op::Delete) {
                outcome.ignored += 1;
                continue;
            }
            let v = version(doc, target);
            let slot = (target.table.clone(), v.source.clone(), v.key.clone());
            match newest.remove(&slot) {
                Some(old) => {
                    outcome.stale += 1;
                    let (mut newer, older) = if old.order >= v.order { (old, v) } else { (v, old) };
                    newer.inherit(&older);
                    newest.insert(slot, newer);
                }
                None => {
                    newest.insert(slot, v);
                }
            }
        }
        if newest.is_empty() {
            return Ok(outcome);
        }
        // Group by (table, source) for the bookkeeping.
        let mut groups: Groups<'_> = BTreeMap::new();
        for ((table, source, _), v) in newest {
            groups.entry((table, source)).or_default().push(v);
        }
        self.target.apply(groups, &mut outcome).await?;
        Ok(outcome)
    }
}

/// The versions whose keys were claimed (the others counted stale), split into deletes and
/// upserts.
pub fn fresh<'v, 'd>(
    versions: &'v [Version<'d>],
    claimed: &HashSet<String>,
    outcome: &mut Outcome,
) -> (Vec<&'v Version<'d>>, Vec<&'v Version<'d>>) {
    let (deletes, upserts): (Vec<&Version<'_>>, Vec<&Version<'_>>) = versions
        .iter()
        .filter(|v| claimed.contains(&v.key))
        .partition(|v| v.doc.header.op == Op::Delete);
    outcome.stale += versions.len() - deletes.len() - upserts.len();
    outcome.deleted += deletes.len();
    outcome.upserted += upserts.len();
    (deletes, upserts)
}

/// Upserts grouped by their field set (masks and left-out values make sets differ); each group
/// is one statement shape.
pub fn by_fields<'v, 'd>(versions: &[&'v Version<'d>]) -> BTreeMap<Vec<&'v str>, Vec<&'v Version<'d>>> {
    let mut groups: BTreeMap<Vec<&str>, Vec<&Version<'_>>> = BTreeMap::new();
    for v in versions {
        groups
            .entry(v.body.keys().map(String::as_str).collect())
            .or_default()
            .push(v);
    }
    groups
}

/// PostgreSQL or MySQL/MariaDB through sqlx `Any`: one transaction per batch; what differs is
/// a few SQL strings ([`Dialect`]).
pub struct SqlTarget {
    pool: AnyPool,
    dialect: Dialect,
}

impl Target for SqlTarget {
    fn apply<'a>(&'a self, groups: Groups<'a>, outcome: &'a mut Outcome) -> BoxFuture<'a, Result<(), ApplyError>> {
        Box::pin(async move { Ok(self.transaction(groups, outcome).await?) })
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.pool.close())
    }
}

impl SqlTarget {
    /// Connects to `url` (a `dialect` database), creates the bookkeeping table when missing,
    /// and checks every table of `tables` can be written.
    pub async fn connect(url: &str, dialect: Dialect, tables: &[TableTarget]) -> Result<SqlTarget, String> {
        sqlx::any::install_default_drivers();
        let pool = AnyPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(std::time::Duration::from_secs(10))
            .connect(url)
            .await
            .map_err(|e| format!("cannot connect to the target database: {e}"))?;
        sqlx::query(AssertSqlSafe(dialect.create_applied()))
            .execute(&pool)
            .await
            .map_err(|e| format!("cannot create the bookkeeping table exhub_applied: {e}"))?;
        for t in tables {
            let probe = format!("SELECT * FROM {} WHERE 1 = 0", dialect.quote(&t.table));
            sqlx::query(AssertSqlSafe(probe))
                .execute(&pool)
                .await
                .map_err(|e| format!("target table {} is not usable: {e}", t.table))?;
        }
        Ok(SqlTarget { pool, dialect })
    }

    async fn transaction(&self, groups: Groups<'_>, outcome: &mut Outcome) -> Result<(), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        for ((table, source), versions) in groups {
            let claimed = self.claim(&mut tx, &source, &table, &versions).await?;
            let (deletes, upserts) = fresh(&versions, &claimed, outcome);
            self.delete(&mut tx, &deletes).await?;
            self.upsert(&mut tx, &upserts).await?;
        }
        tx.commit().await
    }

    /// Records in `exhub_applied` the versions newer than what it holds, and returns their
    /// keys: those are the ones to apply; the others are stale. PostgreSQL does it in one
    /// conditional upsert that only ever probes the primary key (a plan that does not depend
    /// on the table's statistics); MySQL reads the recorded positions by key, then records.
    async fn claim(
        &self,
        tx: &mut sqlx::Transaction<'_, Any>,
        source: &str,
        table: &str,
        versions: &[Version<'_>],
    ) -> Result<HashSet<String>, sqlx::Error> {
        let mut claimed = HashSet::new();
        match self.dialect {
            Dialect::Postgres => {
                let rows: Vec<serde_json::Value> = versions
                    .iter()
                    .map(|v| serde_json::json!({"source": source, "tbl": table, "doc_key": v.key, "position": v.order}))
                    .collect();
                let q = sqlx::query(AssertSqlSafe(self.dialect.record_applied(rows.len())))
                    .bind(serde_json::Value::Array(rows).to_string());
                for row in q.fetch_all(&mut **tx).await? {
                    claimed.insert(row.try_get::<String, _>(0)?);
                }
            }
            Dialect::Mysql => {
                for part in versions.chunks(MYSQL_ROWS) {
                    let q = sqlx::query(AssertSqlSafe(Dialect::mysql_select_applied(part.len())))
                        .bind(source.to_owned())
                        .bind(table.to_owned());
                    let mut recorded = HashMap::new();
                    for row in part
                        .iter()
                        .fold(q, |q, v| q.bind(v.key.clone()))
                        .fetch_all(&mut **tx)
                        .await?
                    {
                        recorded.insert(row.try_get::<String, _>(0)?, row.try_get::<String, _>(1)?);
                    }
                    let fresh: Vec<&Version<'_>> = part
                        .iter()
                        .filter(|v| recorded.get(&v.key).is_none_or(|old| *old < v.order))
                        .collect();
                    if fresh.is_empty() {
                        continue;
                    }
                    let q = fresh.iter().fold(
                        sqlx::query(AssertSqlSafe(self.dialect.record_applied(fresh.len()))),
                        |q, v| {
                            q.bind(source.to_owned())
                                .bind(table.to_owned())
                                .bind(v.key.clone())
                                .bind(v.order.clone())
                        },
                    );
                    q.execute(&mut **tx).await?;
                    claimed.extend(fresh.iter().map(|v| v.key.clone()));
                }
            }
        }
        Ok(claimed)
    }

    async fn delete(&self, tx: &mut sqlx::Transaction<'_, Any>, versions: &[&Version<'_>]) -> Result<(), sqlx::Error> {
        // Same table for all (one group).
        let Some(first) = versions.first() else { return Ok(()) };
        let (table, key) = (&first.target.table, key_columns(first));
        self.write(tx, versions, Part::Key, |n| self.dialect.delete(table, &key, n))
            .await
    }

    async fn upsert(&self, tx: &mut sqlx::Transaction<'_, Any>, versions: &[&Version<'_>]) -> Result<(), sqlx::Error> {
        for (fields, group) in by_fields(versions) {
            let Some(first) = group.first() else { continue };
            let target = first.target;
            let columns: Vec<String> = fields.iter().map(|f| target.column(f).to_owned()).collect();
            let key = key_columns(first);
            self.write(tx, &group, Part::Body, |n| {
                self.dialect.upsert(&target.table, &columns, &key, n)
            })
            .await?;
        }
        Ok(())
    }

    /// Runs `statement` (built for a number of rows) over `versions` of one table, each row
    /// being `part` of its document: PostgreSQL gets the rows as one JSON parameter, MySQL
    /// gets them as bound values, [`MYSQL_ROWS`] rows per statement.
    async fn write(
        &self,
        tx: &mut sqlx::Transaction<'_, Any>,
        versions: &[&Version<'_>],
        part: Part,
        statement: impl Fn(usize) -> String,
    ) -> Result<(), sqlx::Error> {
        let Some(first) = versions.first() else { return Ok(()) };
        match self.dialect {
            Dialect::Postgres => {
                let rows: Vec<serde_json::Value> = versions
                    .iter()
                    .map(|v| pg_row(v.part(part).iter(), first.target))
                    .collect();
                sqlx::query(AssertSqlSafe(statement(rows.len())))
                    .bind(serde_json::Value::Array(rows).to_string())
                    .execute(&mut **tx)
                    .await?;
            }
            Dialect::Mysql => {
                for chunk in versions.chunks(MYSQL_ROWS) {
                    let q = chunk
                        .iter()
                        .fold(sqlx::query(AssertSqlSafe(statement(chunk.len()))), |q, v| {
                            v.part(part).values().fold(q, |q, value| bind_mysql(q, value))
                        });
                    q.execute(&mut **tx).await?;
                }
            }
        }
        Ok(())
    }
}

/// Which part of a document a statement's rows are made of.
#[derive(Clone, Copy)]
pub enum Part {
    /// `header.key`: deletes.
    Key,
    /// The body: upserts.
    Body,
}

impl Version<'_> {
    /// Takes from `older` the fields this version left out (a source sends only what changed
    /// of some columns, e.g. PostgreSQL's unchanged TOASTed values): once the batch keeps only
    /// this version, the older one's values would otherwise never be written.
    fn inherit(&mut self, older: &Version<'_>) {
        let upserts = |v: &Version<'_>| v.doc.header.op != Op::Delete;
        if !upserts(self) || !upserts(older) {
            return;
        }
        for (field, value) in older.body.iter() {
            if !self.body.contains_key(field) {
                self.body.to_mut().insert(field.clone(), value.clone());
            }
        }
    }

    /// The fields of `part`.
    pub fn part(&self, part: Part) -> &BTreeMap<String, Value> {
        match part {
            Part::Key => &self.doc.header.key,
            Part::Body => &self.body,
        }
    }
}

/// The target's key columns, from a document's key fields.
pub fn key_columns(v: &Version<'_>) -> Vec<String> {
    v.doc.header.key.keys().map(|f| v.target.column(f).to_owned()).collect()
}

fn version<'d>(doc: &'d Document, target: &'d TableTarget) -> Version<'d> {
    let h = &doc.header;
    let source = format!("{}/{}", h.sender.org, h.sender.system.as_deref().unwrap_or("-"));
    let key = h
        .key
        .values()
        .map(|v| v.scalar_text().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\u{1f}");
    // Documents without a known source position (published by hand) order by creation time.
    let order = h
        .source
        .as_ref()
        .and_then(order_key)
        .unwrap_or_else(|| format!("t:{:020}", h.created_at.unix_micros()));
    Version {
        doc,
        body: Cow::Borrowed(&doc.body),
        target,
        source,
        key,
        order,
    }
}

/// A row as PostgreSQL's `jsonb_populate_recordset` reads it (bytea as `\x…` hex).
fn pg_row<'v>(fields: impl Iterator<Item = (&'v String, &'v Value)>, target: &TableTarget) -> serde_json::Value {
    serde_json::Value::Object(
        fields
            .map(|(f, v)| {
                let json = match v {
                    Value::Binary(b) => serde_json::Value::String(format!(
                        "\\x{}",
                        b.iter().map(|x| format!("{x:02x}")).collect::<String>()
                    )),
                    other => exhub_schemas::json::to_json_value(other),
                };
                (target.column(f).to_owned(), json)
            })
            .collect(),
    )
}

/// Binds a value for MySQL, which converts text to the column's type. Timestamps keep the wall
/// clock they were written in (`2026-11-22T16:00:00+08:00` → `2026-11-22 16:00:00`).
fn bind_mysql<'q>(q: Query<'q, Any, AnyArguments>, value: &Value) -> Query<'q, Any, AnyArguments> {
    match value {
        Value::Null => q.bind(None::<String>),
        Value::Bool(b) => q.bind(i64::from(*b)),
        Value::Int(i) => q.bind(*i),
        Value::Binary(b) => q.bind(b.clone()),
        Value::Timestamp(t) => {
            let s = t.as_str();
            let wall = s.get(..19).unwrap_or(s).replace('T', " ");
            let frac = s
                .get(19..)
                .and_then(|r| r.strip_prefix('.'))
                .map(|r| r.chars().take_while(char::is_ascii_digit).take(6).collect::<String>());
            q.bind(match frac {
                Some(f) if !f.is_empty() => format!("{wall}.{f}"),
                _ => wall,
            })
        }
        Value::List(_) | Value::Map(_) => q.bind(exhub_schemas::json::to_json_value(value).to_string()),
        scalar => q.bind(scalar.scalar_text().unwrap_or_default()),
    }
}
