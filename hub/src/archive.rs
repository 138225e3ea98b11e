//! The archive (转储): every accepted document as it was received, with its canonical hash, its
//! sender, when it arrived, its business key, and its delivery status per subscriber. One code
//! path over sqlx's `Any` driver serves SQLite (a file, the default) and PostgreSQL (when the URL
//! says `postgres://`). Writes are batched: one transaction per hub batch.
//!
//! Deduplication lives here: a document id is archived once (`ON CONFLICT DO NOTHING`), and a
//! document seen again reports which subscribers already have it, so that the hub routes it
//! only where it has not been delivered.

use std::collections::{HashMap, HashSet};

use exhub_schemas::time::unix_micros_now;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, AssertSqlSafe, Executor as _, Row as _};
use uuid::Uuid;

/// Delivery status of a document for one subscriber.
pub const PENDING: &str = "pending";
/// The broker confirmed the document in the subscriber's queue.
pub const PUBLISHED: &str = "published";

/// The delivery-status table and its columns.
const DELIVERIES: &str = "exhub_deliveries (document_id, subscriber, status, updated_at)";

/// Most rows written by one statement (keeps bind parameters well under both databases' limits).
const CHUNK: usize = 300;

/// An archive failure.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The URL is neither `sqlite:` nor `postgres:`.
    #[error("archive URL must start with sqlite: or postgres: (got {0}:)")]
    Scheme(String),
    /// The database failed.
    #[error("archive database: {0}")]
    Db(#[from] sqlx::Error),
}

/// One document to archive.
#[derive(Debug, Clone)]
pub struct Entry<'a> {
    /// Document id.
    pub id: Uuid,
    /// Doc type.
    pub doc_type: &'a str,
    /// Schema version.
    pub schema_version: u32,
    /// `upsert`, `delete`, …
    pub op: &'a str,
    /// Sender org.
    pub sender_org: &'a str,
    /// Sender system.
    pub sender_system: Option<&'a str>,
    /// The AMQP user that published it.
    pub amqp_user: &'a str,
    /// Business key fields and their values as text.
    pub key: Vec<(&'a str, String)>,
    /// `header.created_at`, µs since the epoch.
    pub created_at: i64,
    /// `application/json` or `application/xml`.
    pub content_type: &'a str,
    /// `sha256:<hex>` of the canonical form.
    pub content_hash: &'a str,
    /// The document exactly as received.
    pub raw: &'a [u8],
    /// The subscribers it is routed to.
    pub subscribers: Vec<&'a str>,
}

/// What storing one document found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    /// First time this id was seen.
    New,
    /// The id was archived before.
    Duplicate {
        /// Whether the earlier copy has the same canonical hash.
        same_content: bool,
        /// Subscribers the earlier copy was already confirmed to.
        published: HashSet<String>,
    },
}

/// An archived document, as search and replay see it.
#[derive(Debug, Clone)]
pub struct Record {
    /// Document id.
    pub id: String,
    /// Doc type.
    pub doc_type: String,
    /// `upsert`, `delete`, …
    pub op: String,
    /// Sender org.
    pub sender_org: String,
    /// Business key as `field=value` pairs.
    pub key: String,
    /// When the hub received it, µs since the epoch.
    pub received_at: i64,
    /// Canonical hash.
    pub content_hash: String,
    /// The document as received.
    pub raw: Vec<u8>,
}

/// Which documents a search or replay selects.
#[derive(Debug, Clone, Default)]
pub struct Query {
    /// Only this doc type.
    pub doc_type: Option<String>,
    /// Only from this org.
    pub org: Option<String>,
    /// Received at or after (µs).
    pub since: Option<i64>,
    /// Received before (µs).
    pub until: Option<i64>,
    /// Business key field = value.
    pub key: Option<(String, String)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    Sqlite,
    Postgres,
}

/// A bind parameter.
enum Arg {
    Text(String),
    Int(i64),
    Blob(Vec<u8>),
    Null,
}

/// SQL text with placeholders in the backend's best form and its arguments in order:
/// PostgreSQL's `$1, $2, …`; SQLite's anonymous `?`, because SQLite looks a named or numbered
/// parameter up by a linear scan, which makes binding a multi-row insert quadratic.
struct Sql {
    backend: Backend,
    text: String,
    args: Vec<Arg>,
}

impl Sql {
    fn new(backend: Backend, text: &str) -> Self {
        Sql {
            backend,
            text: text.to_owned(),
            args: Vec::new(),
        }
    }

    fn push(&mut self, s: &str) -> &mut Self {
        self.text.push_str(s);
        self
    }

    fn bind(&mut self, arg: Arg) -> &mut Self {
        self.args.push(arg);
        match self.backend {
            Backend::Sqlite => self.text.push('?'),
            Backend::Postgres => {
                let n = self.args.len();
                self.text.push_str(&format!("${n}"));
            }
        }
        self
    }

    /// `(a, b, c)` of bound values.
    fn tuple(&mut self, args: impl IntoIterator<Item = Arg>) -> &mut Self {
        self.text.push('(');
        for (i, a) in args.into_iter().enumerate() {
            if i > 0 {
                self.text.push_str(", ");
            }
            self.bind(a);
        }
        self.text.push(')');
        self
    }

    fn query(&self) -> sqlx::query::Query<'_, sqlx::Any, sqlx::any::AnyArguments> {
        // Safe: the text is built only from constants here; every value is a bound parameter.
        // Not cached as a prepared statement: multi-row statements differ in length from batch to
        // batch, and a cache of them holds megabytes of compiled programs.
        let mut q = sqlx::query(AssertSqlSafe(self.text.as_str())).persistent(false);
        for a in &self.args {
            q = match a {
                Arg::Text(s) => q.bind(s.as_str()),
                Arg::Int(n) => q.bind(*n),
                Arg::Blob(b) => q.bind(b.as_slice()),
                Arg::Null => q.bind(None::<String>),
            };
        }
        q
    }
}

fn text(s: &str) -> Arg {
    Arg::Text(s.to_owned())
}

/// The archive database.
#[derive(Clone)]
pub struct Archive {
    pool: AnyPool,
    backend: Backend,
}

impl std::fmt::Debug for Archive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Archive").field("backend", &self.backend).finish()
    }
}

impl Archive {
    /// Opens (and, the first time, creates) the archive at `url`: `sqlite://path.db` (the file
    /// is created if missing) or `postgres://…`.
    pub async fn open(url: &str) -> Result<Archive, ArchiveError> {
        sqlx::any::install_default_drivers();
        let scheme = url.split(':').next().unwrap_or_default();
        let (backend, url, max) = match scheme {
            "sqlite" => {
                let sep = if url.contains('?') { '&' } else { '?' };
                let url = if url.contains("mode=") {
                    url.to_owned()
                } else {
                    format!("{url}{sep}mode=rwc")
                };
                // One writer at a time is SQLite's nature; one connection keeps it simple.
                (Backend::Sqlite, url, 1)
            }
            "postgres" | "postgresql" => (Backend::Postgres, url.to_owned(), 4),
            other => return Err(ArchiveError::Scheme(other.to_owned())),
        };
        let pool = AnyPoolOptions::new()
            .max_connections(max)
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        // WAL: readers (search, other hub processes) do not block the writer;
                        // FULL: a commit is on disk before the hub acknowledges the broker.
                        conn.execute("PRAGMA journal_mode = WAL").await?;
                        conn.execute("PRAGMA synchronous = FULL").await?;
                        conn.execute("PRAGMA busy_timeout = 10000").await?;
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await?;
        let archive = Archive { pool, backend };
        archive.migrate().await?;
        Ok(archive)
    }

    async fn migrate(&self) -> Result<(), ArchiveError> {
        let blob = match self.backend {
            Backend::Sqlite => "BLOB",
            Backend::Postgres => "BYTEA",
        };
        let statements = [
            format!(
                "CREATE TABLE IF NOT EXISTS exhub_documents (
                    id TEXT PRIMARY KEY,
                    doc_type TEXT NOT NULL,
                    schema_version BIGINT NOT NULL,
                    op TEXT NOT NULL,
                    sender_org TEXT NOT NULL,
                    sender_system TEXT,
                    amqp_user TEXT NOT NULL,
                    doc_key TEXT NOT NULL,
                    created_at BIGINT NOT NULL,
                    received_at BIGINT NOT NULL,
                    content_type TEXT NOT NULL,
                    content_hash TEXT NOT NULL,
                    raw {blob} NOT NULL)"
            ),
            "CREATE INDEX IF NOT EXISTS exhub_documents_received ON exhub_documents (received_at, id)".into(),
            "CREATE INDEX IF NOT EXISTS exhub_documents_type ON exhub_documents (doc_type, received_at)".into(),
            "CREATE TABLE IF NOT EXISTS exhub_document_keys (
                document_id TEXT NOT NULL,
                field TEXT NOT NULL,
                value TEXT NOT NULL,
                PRIMARY KEY (document_id, field))"
                .into(),
            "CREATE INDEX IF NOT EXISTS exhub_document_keys_value ON exhub_document_keys (field, value)".into(),
            "CREATE TABLE IF NOT EXISTS exhub_deliveries (
                document_id TEXT NOT NULL,
                subscriber TEXT NOT NULL,
                status TEXT NOT NULL,
                updated_at BIGINT NOT NULL,
                PRIMARY KEY (document_id, subscriber))"
                .into(),
        ];
        for s in statements {
            self.pool.execute(AssertSqlSafe(s)).await?;
        }
        Ok(())
    }

    /// Archives a batch in one transaction and says, per entry, whether it is new. Entries must
    /// have distinct ids. New documents get a `pending` delivery row per subscriber; known ones
    /// get rows for subscribers they did not have, and report where they were published.
    pub async fn store(&self, entries: &[Entry<'_>]) -> Result<Vec<Stored>, ArchiveError> {
        let now = unix_micros_now();
        let mut tx = self.pool.begin().await?;
        let mut new: HashSet<String> = HashSet::new();
        for chunk in entries.chunks(CHUNK) {
            let rows = chunk.iter().map(|e| {
                [
                    Arg::Text(e.id.to_string()),
                    text(e.doc_type),
                    Arg::Int(i64::from(e.schema_version)),
                    text(e.op),
                    text(e.sender_org),
                    e.sender_system.map_or(Arg::Null, text),
                    text(e.amqp_user),
                    Arg::Text(key_text(&e.key)),
                    Arg::Int(e.created_at),
                    Arg::Int(now),
                    text(e.content_type),
                    text(e.content_hash),
                    Arg::Blob(e.raw.to_vec()),
                ]
            });
            let mut sql = self.insert(
                "exhub_documents (id, doc_type, schema_version, op, sender_org, sender_system, amqp_user, \
                 doc_key, created_at, received_at, content_type, content_hash, raw)",
                rows,
            );
            sql.push(" ON CONFLICT (id) DO NOTHING RETURNING id");
            for row in sql.query().fetch_all(&mut *tx).await? {
                new.insert(row.try_get::<String, _>(0)?);
            }
        }
        let ids: Vec<String> = entries.iter().map(|e| e.id.to_string()).collect();
        let keys: Vec<(&str, &str, &str)> = entries
            .iter()
            .zip(&ids)
            .filter(|(_, id)| new.contains(*id))
            .flat_map(|(e, id)| e.key.iter().map(move |(f, v)| (id.as_str(), *f, v.as_str())))
            .collect();
        for chunk in keys.chunks(CHUNK) {
            let rows = chunk.iter().map(|(id, f, v)| [text(id), text(f), text(v)]);
            let mut sql = self.insert("exhub_document_keys (document_id, field, value)", rows);
            sql.push(" ON CONFLICT DO NOTHING");
            sql.query().execute(&mut *tx).await?;
        }
        let deliveries: Vec<(&str, &str)> = entries
            .iter()
            .zip(&ids)
            .flat_map(|(e, id)| e.subscribers.iter().map(move |s| (id.as_str(), *s)))
            .collect();
        for chunk in deliveries.chunks(CHUNK) {
            let rows = chunk
                .iter()
                .map(|(id, s)| [text(id), text(s), text(PENDING), Arg::Int(now)]);
            let mut sql = self.insert(DELIVERIES, rows);
            sql.push(" ON CONFLICT DO NOTHING");
            sql.query().execute(&mut *tx).await?;
        }
        // What the archive already knew about the documents seen before.
        let known: Vec<&str> = ids.iter().filter(|id| !new.contains(*id)).map(String::as_str).collect();
        let mut hashes: HashMap<String, String> = HashMap::new();
        let mut published: HashMap<String, HashSet<String>> = HashMap::new();
        for chunk in known.chunks(CHUNK) {
            let mut sql = Sql::new(
                self.backend,
                "SELECT id, content_hash FROM exhub_documents WHERE id IN ",
            );
            sql.tuple(chunk.iter().map(|id| text(id)));
            for row in sql.query().fetch_all(&mut *tx).await? {
                hashes.insert(row.try_get(0)?, row.try_get(1)?);
            }
            let mut sql = Sql::new(
                self.backend,
                "SELECT document_id, subscriber FROM exhub_deliveries WHERE status = ",
            );
            sql.bind(text(PUBLISHED)).push(" AND document_id IN ");
            sql.tuple(chunk.iter().map(|id| text(id)));
            for row in sql.query().fetch_all(&mut *tx).await? {
                published.entry(row.try_get(0)?).or_default().insert(row.try_get(1)?);
            }
        }
        tx.commit().await?;
        Ok(entries
            .iter()
            .zip(&ids)
            .map(|(e, id)| {
                if new.contains(id) {
                    Stored::New
                } else {
                    Stored::Duplicate {
                        same_content: hashes.get(id).is_some_and(|h| h == e.content_hash),
                        published: published.remove(id).unwrap_or_default(),
                    }
                }
            })
            .collect())
    }

    /// Records that the broker confirmed these documents in these subscribers' queues (the
    /// pipeline, and replay — which may deliver to a subscriber the document never had).
    pub async fn mark_published(&self, done: &[(Uuid, &str)]) -> Result<(), ArchiveError> {
        if done.is_empty() {
            return Ok(());
        }
        let now = unix_micros_now();
        let mut tx = self.pool.begin().await?;
        for chunk in done.chunks(CHUNK) {
            let rows = chunk
                .iter()
                .map(|(id, s)| [Arg::Text(id.to_string()), text(s), text(PUBLISHED), Arg::Int(now)]);
            let mut sql = self.insert(DELIVERIES, rows);
            sql.push(
                " ON CONFLICT (document_id, subscriber) DO UPDATE SET status = excluded.status, \
                 updated_at = excluded.updated_at",
            );
            sql.query().execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Documents matching `q`, oldest first, after the (received_at, id) cursor `after`.
    pub async fn search(
        &self,
        q: &Query,
        after: Option<(i64, &str)>,
        limit: usize,
    ) -> Result<Vec<Record>, ArchiveError> {
        let mut sql = Sql::new(
            self.backend,
            "SELECT id, doc_type, op, sender_org, doc_key, received_at, content_hash, raw FROM exhub_documents d WHERE 1 = 1",
        );
        filter(&mut sql, q);
        if let Some((at, id)) = after {
            sql.push(" AND (received_at > ")
                .bind(Arg::Int(at))
                .push(" OR (received_at = ")
                .bind(Arg::Int(at))
                .push(" AND id > ")
                .bind(text(id))
                .push("))");
        }
        sql.push(" ORDER BY received_at, id LIMIT ")
            .bind(Arg::Int(i64::try_from(limit).unwrap_or(i64::MAX)));
        let rows = sql.query().fetch_all(&self.pool).await?;
        rows.iter().map(record).collect()
    }

    /// How many documents match `q`.
    pub async fn count(&self, q: &Query) -> Result<u64, ArchiveError> {
        let mut sql = Sql::new(self.backend, "SELECT COUNT(*) FROM exhub_documents d WHERE 1 = 1");
        filter(&mut sql, q);
        let n: i64 = sql.query().fetch_one(&self.pool).await?.try_get(0)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Delivery status per subscriber of each document id.
    pub async fn deliveries(&self, ids: &[String]) -> Result<HashMap<String, Vec<(String, String)>>, ArchiveError> {
        let mut out: HashMap<String, Vec<(String, String)>> = HashMap::new();
        for chunk in ids.chunks(CHUNK) {
            let mut sql = Sql::new(
                self.backend,
                "SELECT document_id, subscriber, status FROM exhub_deliveries WHERE document_id IN ",
            );
            sql.tuple(chunk.iter().map(|id| text(id)));
            sql.push(" ORDER BY subscriber");
            for row in sql.query().fetch_all(&self.pool).await? {
                out.entry(row.try_get(0)?)
                    .or_default()
                    .push((row.try_get(1)?, row.try_get(2)?));
            }
        }
        Ok(out)
    }

    /// `INSERT INTO <into> VALUES (…), (…), …` with one tuple of bound values per row.
    fn insert<R: IntoIterator<Item = Arg>>(&self, into: &str, rows: impl IntoIterator<Item = R>) -> Sql {
        let mut sql = Sql::new(self.backend, "INSERT INTO ");
        sql.push(into).push(" VALUES ");
        for (i, row) in rows.into_iter().enumerate() {
            if i > 0 {
                sql.push(", ");
            }
            sql.tuple(row);
        }
        sql
    }

    /// Closes the pool (waits for connections to finish).
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

fn filter(sql: &mut Sql, q: &Query) {
    if let Some(t) = &q.doc_type {
        sql.push(" AND doc_type = ").bind(text(t));
    }
    if let Some(o) = &q.org {
        sql.push(" AND sender_org = ").bind(text(o));
    }
    if let Some(s) = q.since {
        sql.push(" AND received_at >= ").bind(Arg::Int(s));
    }
    if let Some(u) = q.until {
        sql.push(" AND received_at < ").bind(Arg::Int(u));
    }
    if let Some((f, v)) = &q.key {
        sql.push(" AND EXISTS (SELECT 1 FROM exhub_document_keys k WHERE k.document_id = d.id AND k.field = ")
            .bind(text(f))
            .push(" AND k.value = ")
            .bind(text(v))
            .push(")");
    }
}

fn record(row: &AnyRow) -> Result<Record, ArchiveError> {
    Ok(Record {
        id: row.try_get(0)?,
        doc_type: row.try_get(1)?,
        op: row.try_get(2)?,
        sender_org: row.try_get(3)?,
        key: row.try_get(4)?,
        received_at: row.try_get(5)?,
        content_hash: row.try_get(6)?,
        raw: row.try_get(7)?,
    })
}

/// `field=value, field=value`, for display.
fn key_text(key: &[(&str, String)]) -> String {
    key.iter()
        .map(|(f, v)| format!("{f}={v}"))
        .collect::<Vec<_>>()
        .join(", ")
}
