//! The archive (转储): every accepted document as it was received, with its canonical hash, its
//! sender, when it arrived, its business key, and its delivery status per subscriber. One code
//! path over sqlx's `Any` driver serves SQLite (a file, the default) and PostgreSQL (when the URL
//! says `postgres://`). Writes are batched: one transaction per hub batch.
//!
//! Deduplication lives here: a document id is archived once (`ON CONFLICT DO NOTHING`), and a
//! document seen again reports which subscribers already have it, so that the hub routes it
//! only where it has not been delivered.
//!
//! So does the **audit log**: append-only records (who, what, when) in the same transactions
//! as the writes they describe, each carrying the hash of the one before, so that
//! [`Archive::verify_audit`] finds the first record changed, removed or inserted afterwards; a
//! record of accepted documents also binds their ids and content hashes, so that editing an
//! archived document's hash shows too.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use exhub_connect::sign::{Keyring, SigningKey};
use exhub_schemas::time::unix_micros_now;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::pool::PoolConnection;
use sqlx::{Acquire as _, Any, AnyConnection, AnyPool, AssertSqlSafe, Executor as _, Row as _};
use uuid::Uuid;

/// Delivery status of a document for one subscriber.
pub const PENDING: &str = "pending";
/// The broker confirmed the document in the subscriber's queue.
pub const PUBLISHED: &str = "published";
/// The subscriber's receipt says it applied the document.
pub const APPLIED: &str = "applied";
/// The subscriber's receipt says it refused the document.
pub const REFUSED: &str = "refused";

/// The delivery-status table and its columns.
const DELIVERIES: &str = "exhub_deliveries (document_id, subscriber, status, updated_at)";

/// Between the names in a document row's `subscribers` (a space is never in a name).
const SUBSCRIBER_SEPARATOR: &str = " ";

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
    /// The sender's signature over the message it came in, if signed.
    pub proof: Option<&'a Proof>,
}

/// One document's outcome at one subscriber, from the subscriber's receipt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiptRow {
    /// The document.
    pub document_id: String,
    /// The subscriber.
    pub subscriber: String,
    /// [`APPLIED`] or [`REFUSED`].
    pub outcome: &'static str,
    /// Why it was refused.
    pub reason: Option<String>,
    /// The AMQP user that sent the receipt.
    pub amqp_user: String,
    /// The key that signed the receipt, if signed.
    pub key_id: Option<String>,
    /// When the hub recorded it, µs since the epoch (0 before it is recorded).
    pub received_at: i64,
}

/// A sender's signature over one message: the signed manifest (the SHA-256 of each document's
/// bytes, [`exhub_connect::sign::manifest`]) and the `x-exhub-signature` value. Kept once per
/// message; each document archived from it points to it, so that any one document can be shown
/// to be what its sender signed: hash its archived bytes, find the line in the manifest, verify
/// the signature over the manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proof {
    /// `sha256:<hex>` of the manifest.
    pub id: String,
    /// The key that signed.
    pub key_id: String,
    /// The `x-exhub-signature` value.
    pub signature: String,
    /// The manifest text.
    pub manifest: String,
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

/// A stored hub batch's number: its copies are `published` once [`Archive::confirm`] recorded
/// the broker's confirms for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchId(i64);

/// What [`Archive::store`] did with a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredBatch {
    /// The batch's number, when it had documents.
    pub batch: Option<BatchId>,
    /// Per entry, in order: new, or seen before.
    pub entries: Vec<Stored>,
    /// The receipts recorded, as (subscriber, outcome): those naming documents routed to their
    /// sender (the others are dropped).
    pub receipts: Vec<(String, &'static str)>,
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

/// When a transaction's commit is on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Commit {
    /// Before the commit returns (SQLite `synchronous = FULL`, PostgreSQL's default): what the
    /// hub acknowledges on the strength of it — archived documents, receipts, operators' actions.
    Durable,
    /// With the next durable commit, or within a moment (SQLite `synchronous = NORMAL` in WAL
    /// mode, PostgreSQL `synchronous_commit = off`). A crash of the hub loses nothing: the commit
    /// is in the database's log already. A crash of the machine may lose the last few, whole and
    /// in order (the log is sequential, so the audit chain stays a valid prefix). Only for the
    /// `published` marks, whose loss costs at most one more copy to an idempotent subscriber.
    Lazy,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    Sqlite,
    Postgres,
}

/// A pooled connection set up for one kind of commit ([`Archive::writer`]).
struct Writer {
    conn: PoolConnection<Any>,
    commit: Commit,
    backend: Backend,
}

impl Writer {
    /// Begins a transaction that commits as this writer was set up to.
    async fn begin(&mut self) -> Result<sqlx::Transaction<'_, Any>, ArchiveError> {
        let mut tx = self.conn.begin().await?;
        if self.backend == Backend::Postgres && self.commit == Commit::Lazy {
            tx.execute("SET LOCAL synchronous_commit = off").await?;
        }
        Ok(tx)
    }
}

/// A bind parameter, borrowed where the value outlives the statement (a document's bytes are
/// not copied to be bound).
enum Arg<'a> {
    Text(Cow<'a, str>),
    Int(i64),
    Blob(&'a [u8]),
    Null,
}

/// SQL text with placeholders in the backend's best form and its arguments in order:
/// PostgreSQL's `$1, $2, …`; SQLite's anonymous `?`, because SQLite looks a named or numbered
/// parameter up by a linear scan, which makes binding a multi-row insert quadratic.
struct Sql<'a> {
    backend: Backend,
    text: String,
    args: Vec<Arg<'a>>,
}

impl<'a> Sql<'a> {
    fn new(backend: Backend, text: &str) -> Self {
        Sql {
            backend,
            text: text.to_owned(),
            args: Vec::new(),
        }
    }

    /// `<head>(…)`: a statement ending in `IN` and the ids it lists.
    fn select_in(backend: Backend, head: &str, ids: &[&'a str]) -> Self {
        let mut sql = Sql::new(backend, head);
        sql.tuple(ids.iter().map(|id| text(id)));
        sql
    }

    fn push(&mut self, s: &str) -> &mut Self {
        self.text.push_str(s);
        self
    }

    fn bind(&mut self, arg: Arg<'a>) -> &mut Self {
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
    fn tuple(&mut self, args: impl IntoIterator<Item = Arg<'a>>) -> &mut Self {
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
                Arg::Text(s) => q.bind(s.as_ref()),
                Arg::Int(n) => q.bind(*n),
                Arg::Blob(b) => q.bind(*b),
                Arg::Null => q.bind(None::<String>),
            };
        }
        q
    }
}

fn text(s: &str) -> Arg<'_> {
    Arg::Text(Cow::Borrowed(s))
}

fn owned(s: String) -> Arg<'static> {
    Arg::Text(Cow::Owned(s))
}

/// The archive database.
#[derive(Clone)]
pub struct Archive {
    pool: AnyPool,
    backend: Backend,
    /// The hub's key: every audit record's hash is signed with it when there is one.
    signer: Option<std::sync::Arc<SigningKey>>,
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
                make_private(url);
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
                        // 16 KiB pages for a new archive (an existing file keeps its own): ~1 KB
                        // documents and their indexes then take a quarter of the pages, WAL
                        // frames and writes per batch. Measured in `cdc-mysql`: the hub's CPU
                        // −16 %, throughput +10–20 %, RSS unchanged (BENCHMARKS.md). Must come
                        // before WAL mode, which fixes the page size.
                        conn.execute("PRAGMA page_size = 16384").await?;
                        conn.execute("PRAGMA journal_mode = WAL").await?;
                        conn.execute("PRAGMA synchronous = FULL").await?;
                        conn.execute("PRAGMA busy_timeout = 10000").await?;
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await?;
        let archive = Archive {
            pool,
            backend,
            signer: None,
        };
        archive.migrate().await?;
        Ok(archive)
    }

    /// A connection for transactions that commit as `commit` says. SQLite's setting belongs
    /// to the connection, so it is set here, before each transaction: the one connection serves
    /// both kinds. PostgreSQL's is set inside the transaction ([`Writer::begin`]).
    async fn writer(&self, commit: Commit) -> Result<Writer, ArchiveError> {
        let mut conn = self.pool.acquire().await?;
        if self.backend == Backend::Sqlite {
            let level = match commit {
                Commit::Durable => "PRAGMA synchronous = FULL",
                Commit::Lazy => "PRAGMA synchronous = NORMAL",
            };
            conn.execute(level).await?;
        }
        Ok(Writer {
            conn,
            commit,
            backend: self.backend,
        })
    }

    async fn migrate(&self) -> Result<(), ArchiveError> {
        let (blob, serial) = match self.backend {
            Backend::Sqlite => ("BLOB", "INTEGER"),
            Backend::Postgres => ("BYTEA", "BIGINT GENERATED BY DEFAULT AS IDENTITY"),
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
            "CREATE TABLE IF NOT EXISTS exhub_proofs (
                id TEXT PRIMARY KEY,
                key_id TEXT NOT NULL,
                signature TEXT NOT NULL,
                manifest TEXT NOT NULL)"
                .into(),
            "CREATE TABLE IF NOT EXISTS exhub_receipts (
                document_id TEXT NOT NULL,
                subscriber TEXT NOT NULL,
                outcome TEXT NOT NULL,
                reason TEXT,
                received_at BIGINT NOT NULL,
                amqp_user TEXT NOT NULL,
                key_id TEXT,
                PRIMARY KEY (document_id, subscriber))"
                .into(),
            "CREATE TABLE IF NOT EXISTS exhub_audit (
                seq BIGINT PRIMARY KEY,
                at BIGINT NOT NULL,
                actor TEXT NOT NULL,
                action TEXT NOT NULL,
                subject TEXT NOT NULL,
                detail TEXT NOT NULL,
                prev_hash TEXT NOT NULL,
                hash TEXT NOT NULL)"
                .into(),
            // The chain's head, one row: updating it serializes appenders (a row lock on
            // PostgreSQL, the one writer on SQLite) so that seq and prev_hash never fork.
            "CREATE TABLE IF NOT EXISTS exhub_audit_head (
                id BIGINT PRIMARY KEY,
                seq BIGINT NOT NULL,
                hash TEXT NOT NULL)"
                .into(),
            format!("INSERT INTO exhub_audit_head (id, seq, hash) VALUES (1, 0, '{GENESIS}') ON CONFLICT DO NOTHING"),
            format!(
                "CREATE TABLE IF NOT EXISTS exhub_batches (
                    id {serial} PRIMARY KEY,
                    stored_at BIGINT NOT NULL,
                    confirmed_at BIGINT)"
            ),
            // Copies of a document seen before, sent again in a later batch: one row per batch.
            "CREATE TABLE IF NOT EXISTS exhub_resends (
                document_id TEXT NOT NULL,
                subscriber TEXT NOT NULL,
                batch_id BIGINT NOT NULL,
                PRIMARY KEY (document_id, subscriber, batch_id))"
                .into(),
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
        // Added with signatures (issue 13): the proof a document was signed with, and the
        // hub's signature on each audit record.
        self.add_column("exhub_documents", "proof_id", "TEXT").await?;
        self.add_column("exhub_audit", "signature", "TEXT").await?;
        // Added with per-batch confirmation (issue 15): whom a document was routed to and in
        // which batch.
        self.add_column("exhub_documents", "subscribers", "TEXT").await?;
        self.add_column("exhub_documents", "batch_id", "BIGINT").await?;
        Ok(())
    }

    /// The same archive, signing every audit record it appends with the hub's key.
    pub fn signing_audit(mut self, signer: Option<std::sync::Arc<SigningKey>>) -> Archive {
        self.signer = signer;
        self
    }

    /// Adds a nullable column to a table of an archive made before it existed.
    async fn add_column(&self, table: &str, column: &str, kind: &str) -> Result<(), ArchiveError> {
        let add = match self.backend {
            Backend::Sqlite => {
                let query = format!("SELECT COUNT(*) FROM pragma_table_info('{table}') WHERE name = '{column}'");
                let row = self.pool.fetch_one(AssertSqlSafe(query)).await?;
                if row.try_get::<i64, _>(0)? > 0 {
                    return Ok(());
                }
                format!("ALTER TABLE {table} ADD COLUMN {column} {kind}")
            }
            Backend::Postgres => format!("ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {column} {kind}"),
        };
        self.pool.execute(AssertSqlSafe(add)).await?;
        Ok(())
    }

    /// Writes one hub batch in one durable transaction — the hub's one durable write on its hot
    /// path — and says, per entry, whether it is new. Entries must have distinct ids.
    ///
    /// The batch gets a number ([`BatchId`]). A new document's row names the subscribers it is
    /// routed to and its batch: its deliveries are `pending` until [`Archive::confirm`] records
    /// the batch's confirms, and `published` after, with no row per delivery. A document seen
    /// before reports where it was published; its copies to the other subscribers get a row in
    /// `exhub_resends` with this batch.
    ///
    /// `receipts` (subscribers' receipts that came in the same batch) are recorded as
    /// `write_receipts` says. `audit` is appended to the audit log after a record of
    /// the documents accepted (new ones) per publishing AMQP user, and before the receipts'.
    pub async fn store(
        &self,
        entries: &[Entry<'_>],
        receipts: &[ReceiptRow],
        audit: &[AuditEntry],
    ) -> Result<StoredBatch, ArchiveError> {
        let now = unix_micros_now();
        let mut writer = self.writer(Commit::Durable).await?;
        let mut tx = writer.begin().await?;
        let batch = if entries.is_empty() {
            None
        } else {
            let mut sql = Sql::new(self.backend, "INSERT INTO exhub_batches (stored_at) VALUES (");
            sql.bind(Arg::Int(now)).push(") RETURNING id");
            Some(BatchId(sql.query().fetch_one(&mut *tx).await?.try_get(0)?))
        };
        let batch_arg = || batch.map_or(Arg::Null, |b| Arg::Int(b.0));
        let ids: Vec<String> = entries.iter().map(|e| e.id.to_string()).collect();
        let mut new: HashSet<String> = HashSet::new();
        // Inserted in id order, as every writer locks them, so that two hubs storing the same
        // documents at once on PostgreSQL wait for each other instead of deadlocking.
        let mut order: Vec<(&str, &Entry<'_>)> = ids.iter().map(String::as_str).zip(entries).collect();
        order.sort_unstable_by_key(|(id, _)| *id);
        for chunk in order.chunks(CHUNK) {
            let rows = chunk.iter().map(|(id, e)| {
                [
                    text(id),
                    text(e.doc_type),
                    Arg::Int(i64::from(e.schema_version)),
                    text(e.op),
                    text(e.sender_org),
                    e.sender_system.map_or(Arg::Null, text),
                    text(e.amqp_user),
                    owned(key_text(&e.key)),
                    Arg::Int(e.created_at),
                    Arg::Int(now),
                    text(e.content_type),
                    text(e.content_hash),
                    Arg::Blob(e.raw),
                    e.proof.map_or(Arg::Null, |p| text(&p.id)),
                    owned(e.subscribers.join(SUBSCRIBER_SEPARATOR)),
                    batch_arg(),
                ]
            });
            let mut sql = self.insert_new(
                "exhub_documents (id, doc_type, schema_version, op, sender_org, sender_system, amqp_user, \
                 doc_key, created_at, received_at, content_type, content_hash, raw, proof_id, subscribers, batch_id)",
                rows,
            );
            sql.push(" RETURNING id");
            for row in sql.query().fetch_all(&mut *tx).await? {
                new.insert(row.try_get::<String, _>(0)?);
            }
        }
        let keys: Vec<(&str, &str, &str)> = entries
            .iter()
            .zip(&ids)
            .filter(|(_, id)| new.contains(*id))
            .flat_map(|(e, id)| e.key.iter().map(move |(f, v)| (id.as_str(), *f, v.as_str())))
            .collect();
        // Proofs: one row per signed message (each document names its proof in `proof_id`).
        let mut proofs: Vec<&Proof> = entries.iter().filter_map(|e| e.proof).collect();
        proofs.sort_by(|a, b| a.id.cmp(&b.id));
        proofs.dedup_by(|a, b| a.id == b.id);
        let rows = proofs
            .iter()
            .map(|p| [text(&p.id), text(&p.key_id), text(&p.signature), text(&p.manifest)])
            .collect();
        self.insert_all_new(&mut tx, "exhub_proofs (id, key_id, signature, manifest)", rows)
            .await?;
        let rows = keys.iter().map(|(id, f, v)| [text(id), text(f), text(v)]).collect();
        self.insert_all_new(&mut tx, "exhub_document_keys (document_id, field, value)", rows)
            .await?;
        // What the archive already knew about the documents seen before; their copies to the
        // subscribers that do not have them yet are this batch's.
        let seen: Vec<&str> = ids.iter().filter(|id| !new.contains(*id)).map(String::as_str).collect();
        let mut before = known(&mut tx, self.backend, &seen, true).await?;
        let stored: Vec<Stored> = entries
            .iter()
            .zip(&ids)
            .map(|(e, id)| {
                if new.contains(id) {
                    return Stored::New;
                }
                let Some(k) = before.remove(id.as_str()) else {
                    return Stored::Duplicate {
                        same_content: false,
                        published: HashSet::new(),
                    };
                };
                Stored::Duplicate {
                    same_content: k.hash == e.content_hash,
                    published: k
                        .status
                        .into_iter()
                        .filter(|(_, status)| *status != PENDING)
                        .map(|(s, _)| s)
                        .collect(),
                }
            })
            .collect();
        // The copies the hub sends again: a document seen before with the same content, to the
        // subscribers that do not have it yet.
        let mut again: Vec<(&str, &str)> = Vec::new();
        for ((e, id), st) in entries.iter().zip(&ids).zip(&stored) {
            if let Stored::Duplicate {
                same_content: true,
                published,
            } = st
            {
                again.extend(
                    e.subscribers
                        .iter()
                        .filter(|s| !published.contains(**s))
                        .map(|s| (*s, id.as_str())),
                );
            }
        }
        // A row per re-sent copy and batch, never one row re-pointed: a batch still in flight
        // may yet be confirmed, and its confirmation must count. In the order every writer
        // locks rows: by subscriber, then document.
        again.sort_unstable();
        let rows = again.iter().map(|(s, id)| [text(id), text(s), batch_arg()]).collect();
        self.insert_all_new(&mut tx, "exhub_resends (document_id, subscriber, batch_id)", rows)
            .await?;
        // The audit records: accepted documents per publisher, then what the caller adds.
        let mut records: Vec<AuditEntry> = Vec::new();
        let mut by_user: std::collections::BTreeMap<&str, Vec<(&str, &str)>> = std::collections::BTreeMap::new();
        for (e, id) in entries.iter().zip(&ids) {
            if new.contains(id) {
                by_user
                    .entry(e.amqp_user)
                    .or_default()
                    .push((id.as_str(), e.content_hash));
            }
        }
        for (user, docs) in by_user {
            records.push(AuditEntry::accepted(user, &docs));
        }
        records.extend_from_slice(audit);
        let (receipt_records, recorded) = self.write_receipts(&mut tx, receipts, now).await?;
        records.extend(receipt_records);
        append_audit(&mut tx, self.backend, self.signer.as_deref(), &records, now).await?;
        tx.commit().await?;
        Ok(StoredBatch {
            batch,
            entries: stored,
            receipts: recorded,
        })
    }

    /// Records that the broker confirmed every copy of a stored batch: its deliveries are
    /// `published` from now on. `copies` (document, subscriber) are what the batch sent, bound
    /// by a digest in the audit record; `actor` is the AMQP user that published them.
    ///
    /// One small row, committed lazily ([`Commit::Lazy`]): it is on disk with the next batch's
    /// store. Nothing waits on it but the acknowledgement of messages already archived, and
    /// losing the last few in a crash of the machine costs at most a second copy of a document
    /// its publisher sends again, which the subscriber applies idempotently.
    pub async fn confirm(&self, batch: BatchId, copies: &[(Uuid, &str)], actor: &str) -> Result<(), ArchiveError> {
        if copies.is_empty() {
            return Ok(());
        }
        let now = unix_micros_now();
        let mut writer = self.writer(Commit::Lazy).await?;
        let mut tx = writer.begin().await?;
        let mut sql = Sql::new(self.backend, "UPDATE exhub_batches SET confirmed_at = ");
        sql.bind(Arg::Int(now)).push(" WHERE id = ").bind(Arg::Int(batch.0));
        sql.query().execute(&mut *tx).await?;
        append_audit(
            &mut tx,
            self.backend,
            self.signer.as_deref(),
            &[AuditEntry::confirmed(actor, batch, copies)],
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Records that the broker confirmed these documents in these subscribers' queues outside
    /// any stored batch: a replay, which may deliver to a subscriber the document never had.
    /// One delivery row each. `actor` (the AMQP user that published the copies) is recorded in
    /// the audit log. Committed lazily, as [`Archive::confirm`].
    pub async fn mark_published(&self, done: &[(Uuid, &str)], actor: &str) -> Result<(), ArchiveError> {
        if done.is_empty() {
            return Ok(());
        }
        let now = unix_micros_now();
        let mut writer = self.writer(Commit::Lazy).await?;
        let mut tx = writer.begin().await?;
        // Locks in the order every writer takes them — delivery rows (by subscriber, then
        // document), then the audit head — or two PostgreSQL transactions could wait on each
        // other.
        let mut rows: Vec<(&str, String)> = done.iter().map(|(id, s)| (*s, id.to_string())).collect();
        rows.sort_unstable();
        rows.dedup();
        for chunk in rows.chunks(CHUNK) {
            let rows = chunk
                .iter()
                .map(|(s, id)| [text(id), text(s), text(PUBLISHED), Arg::Int(now)]);
            let mut sql = self.insert(DELIVERIES, rows);
            sql.push(
                " ON CONFLICT (document_id, subscriber) DO UPDATE SET status = excluded.status, \
                 updated_at = excluded.updated_at WHERE exhub_deliveries.status = 'pending'",
            );
            sql.query().execute(&mut *tx).await?;
        }
        append_audit(
            &mut tx,
            self.backend,
            self.signer.as_deref(),
            &[AuditEntry::published(actor, done)],
            now,
        )
        .await?;
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

    /// Records, inside `tx`, subscribers' receipts for the documents the archive routed to
    /// them: each one's outcome, which is then its delivery status (`applied` or `refused`).
    /// Documents a receipt names that were never routed to its subscriber are left out.
    /// Returns the audit records to append, and the (subscriber, outcome) of each row recorded.
    async fn write_receipts(
        &self,
        tx: &mut sqlx::Transaction<'_, Any>,
        receipts: &[ReceiptRow],
        now: i64,
    ) -> Result<(Vec<AuditEntry>, Vec<(String, &'static str)>), ArchiveError> {
        if receipts.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        // One row per (document, subscriber) per statement, or PostgreSQL refuses the upsert;
        // of several receipts for one pair in a batch, a refusal wins.
        let mut receipts = receipts.to_vec();
        receipts.sort_by(|a, b| {
            (&a.subscriber, &a.amqp_user, &a.document_id, b.outcome).cmp(&(
                &b.subscriber,
                &b.amqp_user,
                &b.document_id,
                a.outcome,
            ))
        });
        receipts.dedup_by(|a, b| a.subscriber == b.subscriber && a.document_id == b.document_id);
        // Only documents the archive routed to that subscriber: a receipt is the subscriber's
        // word on what it was sent, not a way to claim others.
        let mut ids: Vec<&str> = receipts.iter().map(|r| r.document_id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        let routed = known(&mut *tx, self.backend, &ids, false).await?;
        receipts.retain(|r| {
            routed
                .get(r.document_id.as_str())
                .is_some_and(|k| k.status.contains_key(&r.subscriber))
        });
        let receipts = receipts.as_slice();
        let records: Vec<AuditEntry> = receipts
            .chunk_by(|a, b| a.amqp_user == b.amqp_user && a.subscriber == b.subscriber)
            .map(AuditEntry::receipts)
            .collect();
        for chunk in receipts.chunks(CHUNK) {
            let rows = chunk.iter().map(|r| {
                [
                    text(&r.document_id),
                    text(&r.subscriber),
                    text(r.outcome),
                    r.reason.as_deref().map_or(Arg::Null, text),
                    Arg::Int(now),
                    text(&r.amqp_user),
                    r.key_id.as_deref().map_or(Arg::Null, text),
                ]
            });
            let mut sql = self.insert(
                "exhub_receipts (document_id, subscriber, outcome, reason, received_at, amqp_user, key_id)",
                rows,
            );
            sql.push(
                " ON CONFLICT (document_id, subscriber) DO UPDATE SET outcome = excluded.outcome, \
                 reason = excluded.reason, received_at = excluded.received_at, amqp_user = excluded.amqp_user, \
                 key_id = excluded.key_id",
            );
            sql.query().execute(&mut **tx).await?;
        }
        let recorded = receipts.iter().map(|r| (r.subscriber.clone(), r.outcome)).collect();
        Ok((records, recorded))
    }

    /// The facts the statistics count ([`crate::stats::aggregate`]): the documents received in
    /// `[since, until)` (µs) with their receipts, and the messages refused into `hub_dlq` in
    /// that time, each with the org of its AMQP user (`org_of`; empty when none). Documents
    /// archived before routing was recorded per document (issue 15) count with no copies.
    pub async fn stats_facts(
        &self,
        since: i64,
        until: i64,
        hub_dlq: &str,
        org_of: &HashMap<String, String>,
    ) -> Result<crate::stats::Facts, ArchiveError> {
        use crate::stats::{DocFact, Facts, RefusalFact};
        let mut conn = self.pool.acquire().await?;
        let mut sql = Sql::new(
            self.backend,
            "SELECT id, sender_org, doc_type, received_at, subscribers FROM exhub_documents WHERE received_at >= ",
        );
        sql.bind(Arg::Int(since))
            .push(" AND received_at < ")
            .bind(Arg::Int(until));
        let mut facts = Facts::default();
        let mut index: HashMap<String, usize> = HashMap::new();
        for row in sql.query().fetch_all(&mut *conn).await? {
            let subscribers: Option<String> = row.try_get(4)?;
            index.insert(row.try_get(0)?, facts.documents.len());
            facts.documents.push(DocFact {
                org: row.try_get(1)?,
                doc_type: row.try_get(2)?,
                received_at: row.try_get(3)?,
                subscribers: subscribers
                    .unwrap_or_default()
                    .split(SUBSCRIBER_SEPARATOR)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect(),
                receipts: Vec::new(),
            });
        }
        let mut sql = Sql::new(
            self.backend,
            "SELECT r.document_id, r.subscriber, r.outcome, r.received_at FROM exhub_receipts r \
             JOIN exhub_documents d ON d.id = r.document_id WHERE d.received_at >= ",
        );
        sql.bind(Arg::Int(since))
            .push(" AND d.received_at < ")
            .bind(Arg::Int(until));
        for row in sql.query().fetch_all(&mut *conn).await? {
            let id: String = row.try_get(0)?;
            if let Some(d) = index.get(&id).and_then(|&i| facts.documents.get_mut(i)) {
                d.receipts.push((row.try_get(1)?, row.try_get(2)?, row.try_get(3)?));
            }
        }
        let mut sql = Sql::new(
            self.backend,
            "SELECT actor, at, detail FROM exhub_audit WHERE action = 'refused' AND at >= ",
        );
        sql.bind(Arg::Int(since)).push(" AND at < ").bind(Arg::Int(until));
        for row in sql.query().fetch_all(&mut *conn).await? {
            let actor: String = row.try_get(0)?;
            let at: i64 = row.try_get(1)?;
            let detail: String = row.try_get(2)?;
            let Ok(detail) = serde_json::from_str::<serde_json::Value>(&detail) else {
                continue;
            };
            if detail["dlq"].as_str() != Some(hub_dlq) {
                continue;
            }
            let org = org_of.get(&actor).cloned().unwrap_or_default();
            for refused in detail["refused"].as_array().into_iter().flatten() {
                facts.refusals.push(RefusalFact {
                    org: org.clone(),
                    reason: refused[1].as_str().unwrap_or_default().to_owned(),
                    at,
                });
            }
        }
        Ok(facts)
    }

    /// Copies routed to `subscriber` in documents received since `since` (µs) that have no
    /// receipt from it: how many, and when the oldest was received.
    pub async fn unapplied(&self, subscriber: &str, since: i64) -> Result<(u64, Option<i64>), ArchiveError> {
        // Names are letters, digits, '.', '_' and '-': '_' is LIKE's one-character wildcard.
        let pattern = format!("% {} %", subscriber.replace('_', "\\_"));
        let mut sql = Sql::new(
            self.backend,
            "SELECT COUNT(*), MIN(d.received_at) FROM exhub_documents d WHERE d.received_at >= ",
        );
        sql.bind(Arg::Int(since))
            .push(" AND (' ' || d.subscribers || ' ') LIKE ")
            .bind(owned(pattern))
            .push(" ESCAPE '\\' AND NOT EXISTS (SELECT 1 FROM exhub_receipts r WHERE r.document_id = d.id AND r.subscriber = ")
            .bind(text(subscriber))
            .push(")");
        let row = sql.query().fetch_one(&self.pool).await?;
        let count: i64 = row.try_get(0)?;
        Ok((u64::try_from(count).unwrap_or(0), row.try_get(1)?))
    }

    /// The receipts recorded for a document, per subscriber.
    pub async fn receipts(&self, id: &str) -> Result<Vec<ReceiptRow>, ArchiveError> {
        let mut sql = Sql::new(
            self.backend,
            "SELECT document_id, subscriber, outcome, reason, amqp_user, key_id, received_at FROM exhub_receipts \
             WHERE document_id = ",
        );
        sql.bind(text(id)).push(" ORDER BY subscriber");
        let mut out = Vec::new();
        for row in sql.query().fetch_all(&self.pool).await? {
            let outcome: String = row.try_get(2)?;
            out.push(ReceiptRow {
                document_id: row.try_get(0)?,
                subscriber: row.try_get(1)?,
                outcome: receipt_outcome(&outcome),
                reason: row.try_get(3)?,
                amqp_user: row.try_get(4)?,
                key_id: row.try_get(5)?,
                received_at: row.try_get(6)?,
            });
        }
        Ok(out)
    }

    /// Appends records to the audit log (in a transaction of their own: for operators'
    /// actions such as replays, DLQ retries and provisioning).
    pub async fn audit(&self, records: &[AuditEntry]) -> Result<(), ArchiveError> {
        let mut writer = self.writer(Commit::Durable).await?;
        let mut tx = writer.begin().await?;
        append_audit(
            &mut tx,
            self.backend,
            self.signer.as_deref(),
            records,
            unix_micros_now(),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The last `limit` audit records, oldest first.
    pub async fn audit_tail(&self, limit: usize) -> Result<Vec<AuditRecord>, ArchiveError> {
        let mut sql = Sql::new(
            self.backend,
            "SELECT seq, at, actor, action, subject, detail, prev_hash, hash FROM exhub_audit ORDER BY seq DESC LIMIT ",
        );
        sql.bind(Arg::Int(i64::try_from(limit).unwrap_or(i64::MAX)));
        let mut out: Vec<AuditRecord> = sql
            .query()
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(audit_record)
            .collect::<Result<_, _>>()?;
        out.reverse();
        Ok(out)
    }

    /// Walks the whole audit log: every record's hash recomputed, every link to the one
    /// before, the head, and for records of accepted documents the ids and content hashes
    /// the archive holds now. Stops at the first break.
    ///
    /// With the hub's public keys (`hub_keys` not empty) it also checks the hub's signature on
    /// each record: every signature must verify; once a record is signed every later one must
    /// be; and the newest must be signed. Whoever can write the database but does not hold the
    /// hub's key can then neither change a signed record (even recomputing every hash after
    /// it) nor rewrite the chain unsigned.
    pub async fn verify_audit(&self, hub_keys: &Keyring) -> Result<AuditReport, ArchiveError> {
        let mut report = AuditReport::default();
        let mut last_signed = false;
        let mut prev = GENESIS.to_owned();
        let mut expected_seq = 1i64;
        loop {
            let mut sql = Sql::new(
                self.backend,
                "SELECT seq, at, actor, action, subject, detail, prev_hash, hash, signature FROM exhub_audit WHERE seq >= ",
            );
            sql.bind(Arg::Int(expected_seq)).push(" ORDER BY seq LIMIT 1000");
            let rows = sql.query().fetch_all(&self.pool).await?;
            if rows.is_empty() {
                break;
            }
            for row in &rows {
                let r = audit_record(row)?;
                let broken = |why: String| Some((r.seq, why));
                report.broken = if r.seq != expected_seq {
                    broken(format!("record {expected_seq} is missing (the next is {})", r.seq))
                } else if r.prev_hash != prev {
                    broken("it does not link to the record before it".into())
                } else if r.hash != chain_hash(&r.prev_hash, r.seq, r.at, &r.entry) {
                    broken("its content does not match its hash".into())
                } else {
                    None
                };
                let signature: Option<String> = row.try_get(8)?;
                if report.broken.is_none() && !hub_keys.is_empty() {
                    report.broken = match &signature {
                        Some(sig) => match hub_keys.verify(sig, &[r.hash.as_bytes()]) {
                            Ok(_) => None,
                            Err(e) => broken(format!("the hub's signature on it does not hold: {e}")),
                        },
                        None if last_signed => broken("it is not signed, though the records before it are".into()),
                        None => None,
                    };
                    last_signed = signature.is_some();
                    report.signed += u64::from(last_signed);
                }
                if report.broken.is_none() && r.entry.action == ACCEPTED {
                    report.broken = self.check_accepted(&r).await?.map(|why| (r.seq, why));
                }
                if report.broken.is_none() && r.entry.action == COPIES_PUBLISHED {
                    report.broken = self.check_confirmed(&r).await?.map(|why| (r.seq, why));
                }
                if report.broken.is_some() {
                    return Ok(report);
                }
                report.records += 1;
                prev = r.hash;
                expected_seq += 1;
            }
        }
        let head = self
            .pool
            .fetch_one(AssertSqlSafe("SELECT seq, hash FROM exhub_audit_head WHERE id = 1"))
            .await?;
        let (seq, hash): (i64, String) = (head.try_get(0)?, head.try_get(1)?);
        if seq != expected_seq - 1 || hash != prev {
            report.broken = Some((
                seq,
                "the head does not match the last record (records removed from the end?)".into(),
            ));
        } else if !hub_keys.is_empty() && report.records > 0 && !last_signed {
            report.broken = Some((
                seq,
                "the newest record is not signed by the hub, whose keys are configured".into(),
            ));
        }
        Ok(report)
    }

    /// Whether the documents an `accepted` record binds are still archived with its hashes.
    async fn check_accepted(&self, r: &AuditRecord) -> Result<Option<String>, ArchiveError> {
        let Ok(detail) = serde_json::from_str::<serde_json::Value>(&r.entry.detail) else {
            return Ok(Some("its detail is not JSON".into()));
        };
        let ids: Vec<&str> = detail["ids"]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
            .unwrap_or_default();
        let mut hashes: HashMap<String, String> = HashMap::new();
        for chunk in ids.chunks(CHUNK) {
            let sql = Sql::select_in(
                self.backend,
                "SELECT id, content_hash FROM exhub_documents WHERE id IN ",
                chunk,
            );
            for row in sql.query().fetch_all(&self.pool).await? {
                hashes.insert(row.try_get(0)?, row.try_get(1)?);
            }
        }
        let mut docs: Vec<(&str, &str)> = Vec::with_capacity(ids.len());
        for id in &ids {
            match hashes.get(*id) {
                Some(h) => docs.push((id, h.as_str())),
                None => return Ok(Some(format!("document {id} it records is no longer in the archive"))),
            }
        }
        if detail["digest"].as_str() != Some(docs_digest(&docs).as_str()) {
            return Ok(Some("the archived documents it records were changed since".into()));
        }
        Ok(None)
    }

    /// Whether a batch's confirmation (a `published` record naming a batch) still matches the
    /// copies the archive holds for that batch: each new document's subscribers, and the
    /// copies sent again in it. A `published` record of a replay names no batch and binds
    /// nothing more than its own text.
    async fn check_confirmed(&self, r: &AuditRecord) -> Result<Option<String>, ArchiveError> {
        let Ok(detail) = serde_json::from_str::<serde_json::Value>(&r.entry.detail) else {
            return Ok(Some("its detail is not JSON".into()));
        };
        let Some(batch) = detail["batch"].as_i64() else {
            return Ok(None);
        };
        let mut lines: Vec<(String, String)> = Vec::new();
        let mut sql = Sql::new(
            self.backend,
            "SELECT id, subscribers FROM exhub_documents WHERE batch_id = ",
        );
        sql.bind(Arg::Int(batch));
        for row in sql.query().fetch_all(&self.pool).await? {
            let id: String = row.try_get(0)?;
            let subscribers: Option<String> = row.try_get(1)?;
            for s in subscribers
                .unwrap_or_default()
                .split(SUBSCRIBER_SEPARATOR)
                .filter(|s| !s.is_empty())
            {
                lines.push((id.clone(), s.to_owned()));
            }
        }
        let mut sql = Sql::new(
            self.backend,
            "SELECT document_id, subscriber FROM exhub_resends WHERE batch_id = ",
        );
        sql.bind(Arg::Int(batch));
        for row in sql.query().fetch_all(&self.pool).await? {
            lines.push((row.try_get(0)?, row.try_get(1)?));
        }
        lines.sort_unstable();
        let lines: Vec<(&str, &str)> = lines.iter().map(|(id, s)| (id.as_str(), s.as_str())).collect();
        if detail["copies"].as_u64() != Some(lines.len() as u64)
            || detail["digest"].as_str() != Some(docs_digest(&lines).as_str())
        {
            return Ok(Some(format!(
                "the copies of batch {batch} it confirms were changed since (documents' subscribers or re-sends)"
            )));
        }
        Ok(None)
    }

    /// One archived document and the AMQP user that published it.
    pub async fn get(&self, id: &str) -> Result<Option<(Record, String)>, ArchiveError> {
        let mut sql = Sql::new(
            self.backend,
            "SELECT id, doc_type, op, sender_org, doc_key, received_at, content_hash, raw, amqp_user \
             FROM exhub_documents WHERE id = ",
        );
        sql.bind(text(id));
        let Some(row) = sql.query().fetch_optional(&self.pool).await? else {
            return Ok(None);
        };
        Ok(Some((record(&row)?, row.try_get(8)?)))
    }

    /// The sender's signature a document was archived with, if it was signed.
    pub async fn proof(&self, id: &str) -> Result<Option<Proof>, ArchiveError> {
        let mut sql = Sql::new(
            self.backend,
            "SELECT p.id, p.key_id, p.signature, p.manifest FROM exhub_documents d \
             JOIN exhub_proofs p ON p.id = d.proof_id WHERE d.id = ",
        );
        sql.bind(text(id));
        let Some(row) = sql.query().fetch_optional(&self.pool).await? else {
            return Ok(None);
        };
        Ok(Some(Proof {
            id: row.try_get(0)?,
            key_id: row.try_get(1)?,
            signature: row.try_get(2)?,
            manifest: row.try_get(3)?,
        }))
    }

    /// Delivery status per subscriber of each document id (`pending`, `published`, `applied`,
    /// `refused`), ordered by subscriber; documents routed nowhere are left out.
    pub async fn deliveries(&self, ids: &[String]) -> Result<HashMap<String, Vec<(String, String)>>, ArchiveError> {
        let mut conn = self.pool.acquire().await?;
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        Ok(known(&mut conn, self.backend, &ids, true)
            .await?
            .into_iter()
            .filter(|(_, k)| !k.status.is_empty())
            .map(|(id, k)| {
                let status = k.status.into_iter().map(|(s, st)| (s, st.to_owned())).collect();
                (id, status)
            })
            .collect())
    }

    /// [`Archive::insert_new`] of every row, [`CHUNK`] rows per statement.
    async fn insert_all_new<const N: usize>(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        into: &str,
        rows: Vec<[Arg<'_>; N]>,
    ) -> Result<(), ArchiveError> {
        let mut rows = rows.into_iter();
        loop {
            let chunk: Vec<[Arg<'_>; N]> = rows.by_ref().take(CHUNK).collect();
            if chunk.is_empty() {
                return Ok(());
            }
            self.insert_new(into, chunk).query().execute(&mut **tx).await?;
        }
    }

    /// `INSERT INTO <into> VALUES …` that leaves rows whose key is there already as they are.
    ///
    /// On SQLite `INSERT OR IGNORE` rather than `ON CONFLICT DO NOTHING`: the upsert clause
    /// covers only uniqueness, so a multi-row statement may still abort on another constraint
    /// and SQLite keeps a statement journal of every page it changes (7 % of the hub's CPU in
    /// `perf`). `OR IGNORE` covers every constraint, so no statement journal is needed; the hub
    /// binds every `NOT NULL` column, so it ignores nothing else.
    fn insert_new<'a, R: IntoIterator<Item = Arg<'a>>>(
        &self,
        into: &str,
        rows: impl IntoIterator<Item = R>,
    ) -> Sql<'a> {
        let head = match self.backend {
            Backend::Sqlite => "INSERT OR IGNORE INTO ",
            Backend::Postgres => "INSERT INTO ",
        };
        let mut sql = self.values(head, into, rows);
        if self.backend == Backend::Postgres {
            sql.push(" ON CONFLICT DO NOTHING");
        }
        sql
    }

    /// `INSERT INTO <into> VALUES (…), (…), …` with one tuple of bound values per row.
    fn insert<'a, R: IntoIterator<Item = Arg<'a>>>(&self, into: &str, rows: impl IntoIterator<Item = R>) -> Sql<'a> {
        self.values("INSERT INTO ", into, rows)
    }

    /// `<head><into> VALUES (…), (…), …`.
    fn values<'a, R: IntoIterator<Item = Arg<'a>>>(
        &self,
        head: &str,
        into: &str,
        rows: impl IntoIterator<Item = R>,
    ) -> Sql<'a> {
        let mut sql = Sql::new(self.backend, head);
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

/// Makes a SQLite archive's file readable and writable by its owner only: created so when
/// missing (SQLite gives its journal files the same mode), and an existing file (and its
/// journal files) that others may read is narrowed, with a warning. Best effort: where it
/// cannot, SQLite opens the file as before.
fn make_private(url: &str) {
    let path = url
        .trim_start_matches("sqlite:")
        .trim_start_matches("//")
        .split('?')
        .next()
        .unwrap_or_default();
    if path.is_empty() || path == ":memory:" {
        return;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
        if !Path::new(path).exists() {
            let _ = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path);
            return;
        }
        for file in [path.to_owned(), format!("{path}-wal"), format!("{path}-shm")] {
            if let Ok(meta) = std::fs::metadata(&file)
                && meta.permissions().mode() & 0o077 != 0
            {
                tracing::warn!(file = %file, mode = format!("{:o}", meta.permissions().mode() & 0o777), "the archive was readable by others; narrowing it to 0600");
                let _ = std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600));
            }
        }
    }
}

fn filter<'a>(sql: &mut Sql<'a>, q: &'a Query) {
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

/// What the archive holds for one document: its content hash and its delivery status per
/// subscriber it was routed or replayed to.
struct Known {
    hash: String,
    status: BTreeMap<String, &'static str>,
}

impl Known {
    /// Raises a subscriber's status to `status` (pending < published < a receipt's outcome).
    fn raise(&mut self, subscriber: &str, status: &'static str) {
        let rank = |s: &str| match s {
            PENDING => 0,
            PUBLISHED => 1,
            _ => 2,
        };
        match self.status.get_mut(subscriber) {
            Some(s) if rank(s) >= rank(status) => {}
            Some(s) => *s = status,
            None => {
                self.status.insert(subscriber.to_owned(), status);
            }
        }
    }
}

/// A stored receipt's outcome as one of the constants.
fn receipt_outcome(s: &str) -> &'static str {
    if s == APPLIED { APPLIED } else { REFUSED }
}

/// A stored status as one of the constants.
fn status(s: &str, confirmed: bool) -> &'static str {
    match s {
        PUBLISHED => PUBLISHED,
        APPLIED => APPLIED,
        REFUSED => REFUSED,
        _ if confirmed => PUBLISHED,
        _ => PENDING,
    }
}

/// What the archive holds for these documents (missing ones are left out). A delivery's status
/// comes from four places: the document's row (its subscribers, `published` once its batch is
/// confirmed), re-sent copies (`published` once one of their batches is), delivery rows
/// (replays, archives from before batches), and, when `receipts`, the subscribers' receipts,
/// whose outcome comes last and wins.
async fn known(
    conn: &mut AnyConnection,
    backend: Backend,
    ids: &[&str],
    receipts: bool,
) -> Result<HashMap<String, Known>, ArchiveError> {
    let mut out: HashMap<String, Known> = HashMap::new();
    for chunk in ids.chunks(CHUNK) {
        let sql = Sql::select_in(
            backend,
            "SELECT d.id, d.content_hash, d.subscribers, b.confirmed_at FROM exhub_documents d \
             LEFT JOIN exhub_batches b ON b.id = d.batch_id WHERE d.id IN ",
            chunk,
        );
        for row in sql.query().fetch_all(&mut *conn).await? {
            let subscribers: Option<String> = row.try_get(2)?;
            let confirmed = row.try_get::<Option<i64>, _>(3)?.is_some();
            let mut k = Known {
                hash: row.try_get(1)?,
                status: BTreeMap::new(),
            };
            for s in subscribers.iter().flat_map(|s| s.split(SUBSCRIBER_SEPARATOR)) {
                if !s.is_empty() {
                    k.raise(s, status(PENDING, confirmed));
                }
            }
            out.insert(row.try_get(0)?, k);
        }
        // Delivery rows (a status each), then re-sent copies (published once their batch is).
        let heads = [
            "SELECT document_id, subscriber, status, CAST(NULL AS BIGINT) FROM exhub_deliveries WHERE document_id IN ",
            "SELECT r.document_id, r.subscriber, 'pending', b.confirmed_at FROM exhub_resends r \
             LEFT JOIN exhub_batches b ON b.id = r.batch_id WHERE r.document_id IN ",
        ];
        for head in heads {
            let sql = Sql::select_in(backend, head, chunk);
            for row in sql.query().fetch_all(&mut *conn).await? {
                let id: String = row.try_get(0)?;
                let subscriber: String = row.try_get(1)?;
                let stored: String = row.try_get(2)?;
                let confirmed = row.try_get::<Option<i64>, _>(3)?.is_some();
                if let Some(k) = out.get_mut(&id) {
                    k.raise(&subscriber, status(&stored, confirmed));
                }
            }
        }
        if !receipts {
            continue;
        }
        let sql = Sql::select_in(
            backend,
            "SELECT document_id, subscriber, outcome FROM exhub_receipts WHERE document_id IN ",
            chunk,
        );
        for row in sql.query().fetch_all(&mut *conn).await? {
            let id: String = row.try_get(0)?;
            let subscriber: String = row.try_get(1)?;
            let outcome: String = row.try_get(2)?;
            if let Some(k) = out.get_mut(&id) {
                k.status.insert(subscriber, receipt_outcome(&outcome));
            }
        }
    }
    Ok(out)
}

/// `prev_hash` of the first audit record.
const GENESIS: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

/// Audit action: documents accepted into the archive.
pub const ACCEPTED: &str = "accepted";
/// The audit action of copies the broker confirmed: a batch's (its detail names the batch,
/// and [`Archive::verify_audit`] checks it against the archive) or a replay's.
pub const COPIES_PUBLISHED: &str = "published";

/// One audit record to append: who did what to what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    /// Who: an AMQP user (verified by RabbitMQ), or an operator (`os-user@host` of a command).
    pub actor: String,
    /// What: `accepted`, `refused`, `published`, `receipt`, `replayed`, `dlq-retried`,
    /// `provisioned`.
    pub action: String,
    /// What to, in short.
    pub subject: String,
    /// The particulars, JSON.
    pub detail: String,
}

impl AuditEntry {
    /// A record of anything.
    pub fn new(actor: &str, action: &str, subject: impl Into<String>, detail: serde_json::Value) -> AuditEntry {
        AuditEntry {
            actor: actor.to_owned(),
            action: action.to_owned(),
            subject: subject.into(),
            detail: detail.to_string(),
        }
    }

    /// Documents (id, content hash) accepted from `user`.
    fn accepted(user: &str, docs: &[(&str, &str)]) -> AuditEntry {
        let ids: Vec<&str> = docs.iter().map(|(id, _)| *id).collect();
        AuditEntry::new(
            user,
            ACCEPTED,
            format!("{} document(s)", docs.len()),
            serde_json::json!({ "ids": ids, "digest": docs_digest(docs) }),
        )
    }

    /// Copies published to subscribers.
    fn published(actor: &str, done: &[(Uuid, &str)]) -> AuditEntry {
        let mut by_subscriber: std::collections::BTreeMap<&str, Vec<String>> = std::collections::BTreeMap::new();
        for (id, s) in done {
            by_subscriber.entry(s).or_default().push(id.to_string());
        }
        AuditEntry::new(
            actor,
            COPIES_PUBLISHED,
            format!("{} copies", done.len()),
            serde_json::json!(by_subscriber),
        )
    }

    /// Every copy of a stored batch confirmed by the broker: the count, and a digest of the
    /// sorted `id subscriber` lines.
    fn confirmed(actor: &str, batch: BatchId, copies: &[(Uuid, &str)]) -> AuditEntry {
        let mut lines: Vec<(String, &str)> = copies.iter().map(|(id, s)| (id.to_string(), *s)).collect();
        lines.sort_unstable();
        let lines: Vec<(&str, &str)> = lines.iter().map(|(id, s)| (id.as_str(), *s)).collect();
        AuditEntry::new(
            actor,
            COPIES_PUBLISHED,
            format!("batch {}: {} copies", batch.0, copies.len()),
            serde_json::json!({ "batch": batch.0, "copies": copies.len(), "digest": docs_digest(&lines) }),
        )
    }

    /// A subscriber's receipts (rows of one sender and subscriber).
    fn receipts(rows: &[ReceiptRow]) -> AuditEntry {
        let first = &rows[0];
        let applied: Vec<&str> = rows
            .iter()
            .filter(|r| r.outcome == APPLIED)
            .map(|r| r.document_id.as_str())
            .collect();
        let refused: Vec<(&str, Option<&str>)> = rows
            .iter()
            .filter(|r| r.outcome == REFUSED)
            .map(|r| (r.document_id.as_str(), r.reason.as_deref()))
            .collect();
        AuditEntry::new(
            &first.amqp_user,
            "receipt",
            format!(
                "{}: {} applied, {} refused",
                first.subscriber,
                applied.len(),
                refused.len()
            ),
            serde_json::json!({ "subscriber": first.subscriber, "key_id": first.key_id, "applied": applied, "refused": refused }),
        )
    }
}

/// An audit record as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    /// Its place in the chain, from 1.
    pub seq: i64,
    /// When, µs since the epoch.
    pub at: i64,
    /// What it says.
    pub entry: AuditEntry,
    /// The hash of the record before (or of nothing, for the first).
    pub prev_hash: String,
    /// Its own hash.
    pub hash: String,
}

/// What [`Archive::verify_audit`] found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct AuditReport {
    /// Records that verified.
    pub records: u64,
    /// Of those, records whose hub signature verified.
    pub signed: u64,
    /// The first broken record and why, if any.
    pub broken: Option<(i64, String)>,
}

fn audit_record(row: &AnyRow) -> Result<AuditRecord, ArchiveError> {
    Ok(AuditRecord {
        seq: row.try_get(0)?,
        at: row.try_get(1)?,
        entry: AuditEntry {
            actor: row.try_get(2)?,
            action: row.try_get(3)?,
            subject: row.try_get(4)?,
            detail: row.try_get(5)?,
        },
        prev_hash: row.try_get(6)?,
        hash: row.try_get(7)?,
    })
}

/// `sha256:<hex>` over the previous hash and the record's fields, each written as a JSON
/// string or number in one array (so no field can bleed into the next).
fn chain_hash(prev: &str, seq: i64, at: i64, e: &AuditEntry) -> String {
    let canonical = serde_json::json!([prev, seq, at, e.actor, e.action, e.subject, e.detail]).to_string();
    exhub_connect::sign::digest(canonical.as_bytes())
}

/// `sha256:<hex>` over `a b` lines: `id content_hash` of accepted documents, `id subscriber`
/// of confirmed copies.
fn docs_digest(docs: &[(&str, &str)]) -> String {
    let mut text = String::with_capacity(docs.len() * 110);
    for (id, hash) in docs {
        text.push_str(id);
        text.push(' ');
        text.push_str(hash);
        text.push('\n');
    }
    exhub_connect::sign::digest(text.as_bytes())
}

/// Appends `records` to the chain inside `tx`: takes the head (which locks it), writes each
/// record linked to the one before, moves the head. Callers append last in their transaction,
/// after the delivery rows they lock, so that every writer takes its locks in one order.
async fn append_audit(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    backend: Backend,
    signer: Option<&SigningKey>,
    records: &[AuditEntry],
    now: i64,
) -> Result<(), ArchiveError> {
    if records.is_empty() {
        return Ok(());
    }
    // Moving the head first takes its row lock, so concurrent appenders queue here.
    let mut bump = Sql::new(backend, "UPDATE exhub_audit_head SET seq = seq + ");
    bump.bind(Arg::Int(i64::try_from(records.len()).unwrap_or(i64::MAX)))
        .push(" WHERE id = 1 RETURNING seq, hash");
    let head = bump.query().fetch_one(&mut **tx).await?;
    let (last, mut prev): (i64, String) = (head.try_get(0)?, head.try_get(1)?);
    let first = last - i64::try_from(records.len()).unwrap_or(i64::MAX) + 1;
    let mut rows = Vec::with_capacity(records.len());
    for (i, e) in records.iter().enumerate() {
        let seq = first + i64::try_from(i).unwrap_or(i64::MAX);
        let hash = chain_hash(&prev, seq, now, e);
        let signature = signer.map_or(Arg::Null, |k| owned(k.sign_documents(&[hash.as_bytes()])));
        rows.push([
            Arg::Int(seq),
            Arg::Int(now),
            text(&e.actor),
            text(&e.action),
            text(&e.subject),
            text(&e.detail),
            owned(prev.clone()),
            owned(hash.clone()),
            signature,
        ]);
        prev = hash;
    }
    let mut sql = Sql::new(
        backend,
        "INSERT INTO exhub_audit (seq, at, actor, action, subject, detail, prev_hash, hash, signature) VALUES ",
    );
    for (i, row) in rows.into_iter().enumerate() {
        if i > 0 {
            sql.push(", ");
        }
        sql.tuple(row);
    }
    sql.query().execute(&mut **tx).await?;
    let mut set = Sql::new(backend, "UPDATE exhub_audit_head SET hash = ");
    set.bind(text(&prev)).push(" WHERE id = 1");
    set.query().execute(&mut **tx).await?;
    Ok(())
}
