//! The PostgreSQL source: publication and slot, a snapshot consistent with the slot, then the
//! slot's `pgoutput` stream, every mapped row published as an exchange document with confirms,
//! the slot's confirmed position moved only past what the broker confirmed.
//!
//! Positions: a streamed row carries its transaction's commit LSN and its sequence inside the
//! transaction (from 1); snapshot rows carry the slot's consistent point and sequence 0. Sinks
//! keep the newest version of each key by that order (see
//! [`exhub_connect::mapping::order_key`]).
//!
//! Snapshot: when the source creates its slot it asks for an exported snapshot and reads the
//! tables in it — exactly the data before the slot's first change. A snapshot resumed after a
//! crash (the export is gone with the session that made it) or forced with `always` reads a
//! fresh snapshot but labels its rows with the slot's position: every change after that
//! position is streamed again and, being newer by the sinks' order, wins — each key converges
//! to its newest version.

use std::collections::HashMap;
use std::str::FromStr as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use exhub_connect::mapping::{RowPosition, SnapshotMode};
use exhub_connect::runner::Emit;
use exhub_connect::source::{DriverError, KeyValue, Opened, SnapshotRow, Source, SourceCommon, TableInfo};
use exhub_connect::{Cell, Mapper};
use exhub_schemas::{Op, Registry};
use futures_util::FutureExt as _;
use pg_walstream::protocol::{LogicalReplicationMessage, LogicalReplicationParser, TupleData};
use pgwire_replication::{Lsn, PgWireError, ReplicationClient, ReplicationConfig, ReplicationEvent};
use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{AssertSqlSafe, Connection as _, Row as _};
use tokio_util::sync::CancellationToken;

use crate::values::cell;

/// Standby status updates at least this often (the server's `wal_sender_timeout` is 60 s).
const STATUS_INTERVAL: Duration = Duration::from_secs(5);
/// How often the slot's retained WAL and lag are read and logged.
const SLOT_EVERY: Duration = Duration::from_secs(30);
/// Session settings that make every value's text form the same in the snapshot and the stream.
const SESSION: [(&str, &str); 4] = [
    ("TimeZone", "UTC"),
    ("DateStyle", "ISO, YMD"),
    ("bytea_output", "hex"),
    ("extra_float_digits", "3"),
];

/// What the source needs to run (built by the `exhub` binary from routes.toml).
#[derive(Debug, Clone)]
pub struct SourceSettings {
    /// What every source is told.
    pub common: SourceCommon,
    /// The logical replication slot (created when missing).
    pub slot: String,
    /// The publication (created for the mapped tables when missing; used as is otherwise).
    pub publication: String,
    /// WAL retained by the slot above which a warning is logged.
    pub lag_warn_bytes: i64,
}

/// Why the source stopped.
pub type SourceError = exhub_connect::source::SourceError<PgError>;

/// A PostgreSQL error: a query's (sqlx) or the replication stream's.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// A query.
    #[error(transparent)]
    Sql(sqlx::Error),
    /// The replication stream.
    #[error("replication: {0}")]
    Replication(PgWireError),
}

impl DriverError for PgError {
    fn is_passing(&self) -> bool {
        match self {
            PgError::Sql(error) => match error {
                sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::Protocol(_) => true,
                sqlx::Error::Database(e) => e.code().is_some_and(|c| c.starts_with("08") || c.starts_with("57P")),
                _ => false,
            },
            PgError::Replication(error) => match error {
                PgWireError::Io(_) | PgWireError::Task(_) => true,
                // Shutting down, connection failures, and a slot still held by the walsender of
                // a predecessor that died (it lets go once the server notices).
                PgWireError::Server(m) => ["(SQLSTATE 57P0", "(SQLSTATE 08", "(SQLSTATE 55006)"]
                    .iter()
                    .any(|code| m.contains(code)),
                _ => false,
            },
        }
    }
}

/// The slot's WAL retention and lag, as last read.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SlotReading {
    /// WAL the server keeps for the slot (current LSN − restart LSN), bytes.
    retained_bytes: i64,
    /// WAL not yet confirmed (current LSN − confirmed flush LSN), bytes.
    lag_bytes: i64,
    /// WAL that may still be written before the slot is lost (`safe_wal_size`: only with
    /// `max_slot_wal_keep_size`), bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    safe_bytes: Option<i64>,
    /// When read, Unix micros.
    at_micros: i64,
}

/// A column as the catalog describes it.
#[derive(Debug, Clone)]
struct Column {
    name: String,
    type_oid: u32,
    /// `format_type` (for casting a resumed chunk's key back).
    type_name: String,
}

/// One mapped table.
struct Table {
    /// Its mapping and the server's row estimate (`reltuples`).
    info: TableInfo,
    /// `schema.table`, quoted.
    qualified: String,
    /// (schema, table) as the stream's Relation messages name them.
    names: (String, String),
    key: Vec<Column>,
    /// Mapped columns (the key among them).
    columns: Vec<Column>,
}

/// A relation announced on the stream: its columns, and the mapped table it is, if any.
struct Relation {
    columns: Vec<(String, u32)>,
    table: Option<usize>,
}

/// Where the stream is inside a transaction.
struct Tx {
    position: String,
    xid: u32,
    seq: u64,
    committed_micros: i64,
}

/// One attempt: the connection (catalog, snapshot), the gated replication session that created
/// the slot (its exported snapshot lives as long as it does), and where the slot stands.
pub struct Session {
    db: PgConnection,
    repl: Option<ReplicationClient>,
    /// The exported snapshot of a slot just created.
    export: Option<String>,
    /// The slot's consistent point (just created) or confirmed position.
    point: String,
    tables: Vec<Table>,
}

/// The PostgreSQL source adapter.
pub struct PostgresSource {
    settings: SourceSettings,
    registry: Arc<Registry>,
    connect: PgConnectOptions,
}

impl PostgresSource {
    /// A source with `settings`; documents are typed by `registry`.
    pub fn new(settings: SourceSettings, registry: Arc<Registry>) -> Result<PostgresSource, SourceError> {
        let connect = PgConnectOptions::from_str(settings.common.url.expose())
            .map_err(|e| setup(&settings.common.name, format!("bad URL: {e}")))?
            .options(SESSION)
            .application_name(&format!("exhub-source-{}", settings.common.name));
        if connect.get_database().is_none_or(str::is_empty) {
            return Err(setup(
                &settings.common.name,
                "the URL names no database (postgres://user@host:port/DATABASE)".into(),
            ));
        }
        Ok(PostgresSource {
            settings,
            registry,
            connect,
        })
    }
}

impl Source for PostgresSource {
    const KIND: &'static str = "postgres";
    type Position = String;
    type Error = PgError;
    type Session = Session;

    fn common(&self) -> &SourceCommon {
        &self.settings.common
    }

    /// Checks the server and tables, creates the publication when missing, and the slot: when
    /// it is missing, created (with an exported snapshot when a snapshot is due) — unless the
    /// checkpoint says changes were already read from a slot that is gone.
    async fn open(&self, checkpoint: Option<&String>, snapshot: bool) -> Result<Opened<Session>, SourceError> {
        let s = &self.settings;
        let mut db = self.db().await?;
        let tables = self.check(&mut db).await?;
        self.ensure_publication(&mut db, &tables).await?;
        let slot = self.slot(&mut db).await?;
        let log_created = slot.is_none();
        let (repl, export, point) = match slot {
            Some(confirmed) => (None, None, confirmed),
            None => {
                if let Some(lsn) = checkpoint
                    && s.common.snapshot != SnapshotMode::Always
                {
                    return Err(setup(
                        &s.common.name,
                        format!(
                            "replication slot {} is gone, so the changes since {lsn} cannot be read. Take a new \
                             snapshot: `exhub source {} --reset` (the next start snapshots and creates the slot)",
                            s.slot, s.common.name
                        ),
                    ));
                }
                let mut repl = ReplicationClient::connect_gated(self.replication_config(Lsn::ZERO)?)
                    .await
                    .map_err(|e| self.repl(e))?;
                let text = crate::sql::create_slot(&s.slot, snapshot);
                let rows = repl.simple_query(&text).await.map_err(|e| self.repl(e))?;
                let field = |i: usize| {
                    rows.first()
                        .and_then(|r| r.get(i).cloned().flatten())
                        .map(|b| String::from_utf8_lossy(&b).into_owned())
                };
                let point = field(1)
                    .ok_or_else(|| setup(&s.common.name, "CREATE_REPLICATION_SLOT returned no position".into()))?;
                tracing::info!(source = %s.common.name, slot = %s.slot, consistent_point = %point, "replication slot created");
                (Some(repl), field(2).filter(|_| snapshot), point)
            }
        };
        let infos = tables.iter().map(|t| t.info.clone()).collect();
        Ok(Opened {
            session: Session {
                db,
                repl,
                export,
                point,
                tables,
            },
            db: self.connect.get_database().unwrap_or_default().to_owned(),
            tables: infos,
            log_created,
        })
    }

    /// A repeatable-read transaction, in the slot's exported snapshot when it was just created
    /// (exactly the data before the slot's first change); labelled with the slot's position.
    async fn begin_snapshot(&self, session: &mut Session, resume: Option<&String>) -> Result<String, SourceError> {
        sqlx::query("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .execute(&mut session.db)
            .await
            .map_err(|e| self.pg(e))?;
        if let Some(id) = session.export.take() {
            sqlx::query(AssertSqlSafe(crate::sql::set_snapshot(&id)))
                .execute(&mut session.db)
                .await
                .map_err(|e| self.pg(e))?;
        }
        Ok(resume.unwrap_or(&session.point).clone())
    }

    async fn snapshot_chunk(
        &self,
        session: &mut Session,
        table: usize,
        after: Option<&[KeyValue]>,
        limit: usize,
    ) -> Result<Vec<SnapshotRow>, SourceError> {
        let Some(t) = session.tables.get(table) else {
            return Ok(Vec::new());
        };
        let key: Vec<(&str, &str)> = t.key.iter().map(|c| (c.name.as_str(), c.type_name.as_str())).collect();
        let columns: Vec<&str> = t.columns.iter().map(|c| c.name.as_str()).collect();
        let text = crate::sql::snapshot_chunk(&t.qualified, &key, &columns, after.is_some(), limit);
        let mut q = sqlx::query(AssertSqlSafe(text));
        for k in after.into_iter().flatten() {
            q = q.bind(k.to_string());
        }
        let rows = q.fetch_all(&mut session.db).await.map_err(|e| self.pg(e))?;
        Ok(rows
            .iter()
            .map(|row| {
                let texts: Vec<Option<String>> = (0..row.len()).map(|i| row.try_get(i).ok().flatten()).collect();
                let (key, values) = texts.split_at(t.key.len());
                SnapshotRow {
                    key: key
                        .iter()
                        .map(|k| KeyValue::Text(k.clone().unwrap_or_default()))
                        .collect(),
                    cells: t
                        .columns
                        .iter()
                        .zip(values)
                        .map(|(c, v)| cell(c.type_oid, v.as_deref()))
                        .collect(),
                }
            })
            .collect())
    }

    async fn end_snapshot(&self, session: &mut Session) -> Result<(), SourceError> {
        sqlx::query("COMMIT")
            .execute(&mut session.db)
            .await
            .map_err(|e| self.pg(e))?;
        Ok(())
    }

    async fn current(&self, session: &mut Session) -> Result<String, SourceError> {
        Ok(session.point.clone())
    }

    async fn stream(
        &self,
        session: Session,
        from: String,
        emit: &mut Emit<'_, String>,
        cancel: &CancellationToken,
    ) -> Result<(), SourceError> {
        let Session {
            mut db, repl, tables, ..
        } = session;
        // The gated session served the slot commands; streaming needs one that starts at the
        // checkpoint.
        drop(repl);
        let start =
            Lsn::parse(&from).map_err(|e| setup(&self.settings.common.name, format!("bad LSN {from}: {}", e.0)))?;
        self.stream(&mut db, start, &tables, emit, cancel).await
    }

    /// Retires the source: drops its slot (so the server stops keeping WAL for it) and, when it
    /// exists, the publication, then removes the checkpoint.
    async fn retire(&self) -> Result<(), SourceError> {
        let mut db = self.db().await?;
        let s = &self.settings;
        let slot: Option<(Option<i32>,)> =
            sqlx::query_as("SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1")
                .bind(&s.slot)
                .fetch_optional(&mut db)
                .await
                .map_err(|e| self.pg(e))?;
        match slot {
            Some((Some(pid),)) => {
                return Err(setup(
                    &s.common.name,
                    format!("slot {} is in use by process {pid}: stop the source first", s.slot),
                ));
            }
            Some((None,)) => {
                sqlx::query("SELECT pg_drop_replication_slot($1)")
                    .bind(&s.slot)
                    .execute(&mut db)
                    .await
                    .map_err(|e| self.pg(e))?;
                tracing::info!(source = %s.common.name, slot = %s.slot, "replication slot dropped");
            }
            None => tracing::info!(source = %s.common.name, slot = %s.slot, "no such replication slot"),
        }
        sqlx::query(AssertSqlSafe(format!(
            "DROP PUBLICATION IF EXISTS {}",
            quote(&s.publication)
        )))
        .execute(&mut db)
        .await
        .map_err(|e| self.pg(e))?;
        tracing::info!(source = %s.common.name, publication = %s.publication, "publication dropped");
        Ok(s.common.forget_checkpoint()?)
    }
}

impl PostgresSource {
    async fn db(&self) -> Result<PgConnection, SourceError> {
        PgConnection::connect_with(&self.connect).await.map_err(|e| match &e {
            sqlx::Error::Database(d)
                if d.code().as_deref() == Some("28P01") || d.code().as_deref() == Some("28000") =>
            {
                setup(&self.settings.common.name, format!("access denied: {}", d.message()))
            }
            sqlx::Error::Database(d) if d.code().as_deref() == Some("3D000") => {
                setup(&self.settings.common.name, format!("no such database: {}", d.message()))
            }
            _ => self.pg(e),
        })
    }

    fn replication_config(&self, start: Lsn) -> Result<ReplicationConfig, SourceError> {
        let s = &self.settings;
        let url = url::Url::parse(s.common.url.expose()).map_err(|e| setup(&s.common.name, format!("bad URL: {e}")))?;
        let (user, password) = exhub_connect::secret::url_credentials(&url);
        let user = if user.is_empty() { "postgres".to_owned() } else { user };
        let options: Vec<String> = SESSION
            .iter()
            .map(|(k, v)| format!("-c {k}={}", v.replace(' ', "")))
            .collect();
        Ok(ReplicationConfig::new(
            url.host_str().unwrap_or("localhost"),
            user,
            password,
            url.path().trim_start_matches('/'),
            s.slot.clone(),
            s.publication.clone(),
        )
        .with_port(url.port().unwrap_or(5432))
        .with_tls(crate::tls::replication_tls(&url, &self.connect))
        .with_start_lsn(start)
        .with_status_interval(STATUS_INTERVAL)
        .with_wakeup_interval(STATUS_INTERVAL)
        .with_options(options.join(" "))
        .with_application_name(format!("exhub-source-{}", s.common.name)))
    }

    /// Checks the server and the tables; names the cause of whatever is missing.
    async fn check(&self, db: &mut PgConnection) -> Result<Vec<Table>, SourceError> {
        let s = &self.settings;
        let (wal_level,): (String,) = sqlx::query_as("SELECT current_setting('wal_level')")
            .fetch_one(&mut *db)
            .await
            .map_err(|e| self.pg(e))?;
        if wal_level != "logical" {
            return Err(setup(
                &s.common.name,
                format!(
                    "wal_level is {wal_level}; logical replication needs wal_level = logical \
                     (ALTER SYSTEM SET wal_level = logical, then restart PostgreSQL)"
                ),
            ));
        }
        let (user, may_replicate): (String, bool) = sqlx::query_as(
            "SELECT current_user::text, rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user",
        )
        .fetch_one(&mut *db)
        .await
        .map_err(|e| self.pg(e))?;
        if !may_replicate {
            return Err(setup(
                &s.common.name,
                format!(
                    "permission denied: role {user} lacks the REPLICATION attribute (ALTER ROLE {user} REPLICATION)"
                ),
            ));
        }
        let offset = s.common.offset_secs.unwrap_or(0);
        let mut tables = Vec::new();
        for mapping in &s.common.tables {
            let (schema, name) = match mapping.table.split_once('.') {
                Some((schema, name)) => (schema.to_owned(), name.to_owned()),
                None => ("public".to_owned(), mapping.table.clone()),
            };
            let qualified = format!("{}.{}", quote(&schema), quote(&name));
            let found: Option<(i64, String, bool, f32)> = sqlx::query_as(
                "SELECT c.oid::int8, c.relreplident::text, has_table_privilege(c.oid, 'SELECT'), c.reltuples \
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = $2",
            )
            .bind(&schema)
            .bind(&name)
            .fetch_optional(&mut *db)
            .await
            .map_err(|e| self.pg(e))?;
            let Some((oid, identity, may_select, reltuples)) = found else {
                return Err(setup(&s.common.name, format!("table {schema}.{name} does not exist")));
            };
            if !may_select {
                return Err(setup(
                    &s.common.name,
                    format!("permission denied: GRANT SELECT ON {schema}.{name} TO {user}"),
                ));
            }
            let rows = sqlx::query(
                "SELECT a.attname::text, a.atttypid::int8, format_type(a.atttypid, a.atttypmod), \
                 COALESCE(a.attnum = ANY(i.indkey), false) \
                 FROM pg_attribute a LEFT JOIN pg_index i ON i.indrelid = a.attrelid AND \
                 (CASE WHEN $2 = 'i' THEN i.indisreplident ELSE i.indisprimary END) \
                 WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
            )
            .bind(oid)
            .bind(&identity)
            .fetch_all(&mut *db)
            .await
            .map_err(|e| self.pg(e))?;
            let mut all: HashMap<String, (Column, bool)> = HashMap::new();
            for r in rows {
                let name: String = r.try_get(0).map_err(|e| self.pg(e))?;
                let type_oid: i64 = r.try_get(1).map_err(|e| self.pg(e))?;
                let column = Column {
                    name: name.clone(),
                    type_oid: u32::try_from(type_oid).unwrap_or_default(),
                    type_name: r.try_get(2).map_err(|e| self.pg(e))?,
                };
                all.insert(name, (column, r.try_get(3).map_err(|e| self.pg(e))?));
            }
            let identity_columns: Vec<&String> = all.iter().filter(|(_, (_, k))| *k).map(|(n, _)| n).collect();
            let usable = match identity.as_str() {
                "f" => true,
                "n" => false,
                _ => !identity_columns.is_empty(),
            };
            if !usable {
                return Err(setup(
                    &s.common.name,
                    format!(
                        "table {schema}.{name} has no usable key for deletes and updates (REPLICA IDENTITY {}): \
                         add a primary key, or ALTER TABLE {schema}.{name} REPLICA IDENTITY USING INDEX … / FULL",
                        match identity.as_str() {
                            "n" => "NOTHING",
                            "i" => "USING INDEX, no index",
                            _ => "DEFAULT, no primary key",
                        }
                    ),
                ));
            }
            if identity != "f"
                && let Some(k) = mapping.key.iter().find(|k| !identity_columns.contains(k))
            {
                return Err(setup(
                    &s.common.name,
                    format!(
                        "table {schema}.{name}: key column {k} is not in the table's replica identity, so deletes \
                         would not carry it (make the mapping's key the primary key, or REPLICA IDENTITY FULL)"
                    ),
                ));
            }
            let mapper = Mapper::new(mapping, &self.registry, offset)?;
            let column = |c: &str| {
                all.get(c)
                    .map(|(col, _)| col.clone())
                    .ok_or_else(|| setup(&s.common.name, format!("table {schema}.{name} has no column {c}")))
            };
            let columns = mapper.columns().map(column).collect::<Result<Vec<_>, _>>()?;
            let key = mapping.key.iter().map(|k| column(k)).collect::<Result<Vec<_>, _>>()?;
            tables.push(Table {
                info: TableInfo {
                    mapper,
                    estimated_rows: reltuples.max(0.0) as u64,
                },
                qualified,
                names: (schema, name),
                key,
                columns,
            });
        }
        Ok(tables)
    }

    /// Creates the publication for the mapped tables when it is missing; an existing one is
    /// used as is, but must publish every mapped table.
    async fn ensure_publication(&self, db: &mut PgConnection, tables: &[Table]) -> Result<(), SourceError> {
        let s = &self.settings;
        let exists: Option<(bool,)> = sqlx::query_as("SELECT puballtables FROM pg_publication WHERE pubname = $1")
            .bind(&s.publication)
            .fetch_optional(&mut *db)
            .await
            .map_err(|e| self.pg(e))?;
        if exists.is_none() {
            let list: Vec<&str> = tables.iter().map(|t| t.qualified.as_str()).collect();
            let sql = format!(
                "CREATE PUBLICATION {} FOR TABLE {}",
                quote(&s.publication),
                list.join(", ")
            );
            sqlx::query(AssertSqlSafe(sql.clone()))
                .execute(&mut *db)
                .await
                .map_err(|e| match e {
                    sqlx::Error::Database(d) if d.code().as_deref() == Some("42501") => setup(
                        &s.common.name,
                        format!(
                            "permission denied creating the publication ({}): have the tables' owner run `{sql}`",
                            d.message()
                        ),
                    ),
                    e => self.pg(e),
                })?;
            tracing::info!(source = %s.common.name, publication = %s.publication, tables = list.len(), "publication created");
            return Ok(());
        }
        let published: Vec<(String, String)> =
            sqlx::query_as("SELECT schemaname::text, tablename::text FROM pg_publication_tables WHERE pubname = $1")
                .bind(&s.publication)
                .fetch_all(&mut *db)
                .await
                .map_err(|e| self.pg(e))?;
        if let Some(t) = tables.iter().find(|t| !published.contains(&t.names)) {
            return Err(setup(
                &s.common.name,
                format!(
                    "publication {} does not publish {}.{} (ALTER PUBLICATION {} ADD TABLE {})",
                    s.publication, t.names.0, t.names.1, s.publication, t.qualified
                ),
            ));
        }
        Ok(())
    }

    /// The slot's confirmed position, if the slot exists; an error if it is not a pgoutput
    /// slot of this database.
    async fn slot(&self, db: &mut PgConnection) -> Result<Option<String>, SourceError> {
        let s = &self.settings;
        let row: Option<(Option<String>, Option<String>, Option<String>)> = sqlx::query_as(
            "SELECT plugin::text, database::text, confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
        )
        .bind(&s.slot)
        .fetch_optional(&mut *db)
        .await
        .map_err(|e| self.pg(e))?;
        let Some((plugin, database, confirmed)) = row else {
            return Ok(None);
        };
        let ours = self.connect.get_database().unwrap_or_default();
        if plugin.as_deref() != Some("pgoutput") || database.as_deref() != Some(ours) {
            return Err(setup(
                &s.common.name,
                format!(
                    "slot {} exists but is not a pgoutput slot of database {ours} (plugin {plugin:?}, database {database:?}): \
                     configure another slot name",
                    s.slot
                ),
            ));
        }
        Ok(Some(confirmed.unwrap_or_else(|| "0/0".into())))
    }

    /// Streams the slot from `start` until `cancel`.
    async fn stream(
        &self,
        db: &mut PgConnection,
        start: Lsn,
        tables: &[Table],
        emit: &mut Emit<'_, String>,
        cancel: &CancellationToken,
    ) -> Result<(), SourceError> {
        let s = &self.settings;
        let mut repl = ReplicationClient::connect(self.replication_config(start)?)
            .await
            .map_err(|e| self.repl(e))?;
        repl.wait_started().await.map_err(|e| self.repl(e))?;
        tracing::info!(source = %s.common.name, slot = %s.slot, position = %start, "streaming the slot");
        let mut parser = LogicalReplicationParser::with_protocol_version(1);
        let mut decoder = Decoder {
            source: &s.common.name,
            tables,
            relations: HashMap::new(),
        };
        let mut tx: Option<Tx> = None;
        let mut boundary = start;
        let mut slot_at: Option<Instant> = None;
        loop {
            if cancel.is_cancelled() {
                break;
            }
            let event = if emit.pending() > 0 {
                // Documents wait: take what the stream already has; when it has nothing more
                // right now, publish them at once rather than after the linger.
                match repl.recv().now_or_never() {
                    Some(e) => Some(e),
                    None => {
                        if emit.idle(cancel).await?.is_some() {
                            repl.update_applied_lsn(boundary);
                        }
                        continue;
                    }
                }
            } else {
                tokio::select! {
                    () = cancel.cancelled() => break,
                    e = repl.recv() => Some(e),
                    () = tokio::time::sleep(Duration::from_secs(1)) => None,
                }
            };
            match event {
                None => {}
                Some(Ok(None)) => {
                    return Err(self.repl(PgWireError::Task("the server ended the replication stream".into())));
                }
                Some(Err(e)) => return Err(self.repl(e)),
                Some(Ok(Some(event))) => match event {
                    ReplicationEvent::Begin {
                        final_lsn,
                        xid,
                        commit_time_micros,
                    } => {
                        tx = Some(Tx {
                            position: final_lsn.to_string(),
                            xid,
                            seq: 0,
                            committed_micros: pg_to_unix_micros(commit_time_micros),
                        });
                    }
                    ReplicationEvent::Commit { end_lsn, .. } => {
                        tx = None;
                        boundary = boundary.max(end_lsn);
                    }
                    ReplicationEvent::KeepAlive { wal_end, .. } => {
                        // Nothing is open and everything before `wal_end` was received: an
                        // idle source (or one whose tables do not change while others do)
                        // still moves its slot, so the server does not keep WAL for it.
                        if tx.is_none() {
                            boundary = boundary.max(wal_end);
                        }
                    }
                    ReplicationEvent::XLogData { data, .. } => match parser.parse_wal_message(&data) {
                        Ok(m) => decoder.change(m.message, tx.as_mut(), emit),
                        Err(e) => {
                            tracing::warn!(source = %s.common.name, error = %e, "undecodable pgoutput message skipped")
                        }
                    },
                    ReplicationEvent::Message { .. } | ReplicationEvent::StoppedAt { .. } => {}
                },
            }
            if tx.is_none() {
                emit.boundary(boundary.to_string());
            }
            // Everything before the boundary is confirmed by the broker: the slot may let go.
            if emit.tick(cancel).await?.is_some() {
                repl.update_applied_lsn(boundary);
            }
            if slot_at.is_none_or(|t| t.elapsed() >= SLOT_EVERY) {
                slot_at = Some(Instant::now());
                match self.read_slot(db).await {
                    Ok(r) => {
                        emit.log_health(exhub_connect::status::LogHealth {
                            retained_bytes: Some(r.retained_bytes),
                            unconfirmed_bytes: Some(r.lag_bytes),
                            headroom_bytes: r.safe_bytes,
                            ..Default::default()
                        });
                        emit.note("slot", serde_json::to_value(r).unwrap_or_default());
                    }
                    Err(e) => tracing::warn!(source = %s.common.name, error = %e, "slot statistics unavailable"),
                }
            }
        }
        emit.finish(cancel).await?;
        if emit.pending() == 0 {
            repl.update_applied_lsn(boundary);
        }
        // The last status update goes out before the stream closes.
        let _ = tokio::time::timeout(Duration::from_secs(5), repl.shutdown()).await;
        Ok(())
    }

    /// Reads the slot's retained WAL and lag, logs them, warns past the threshold.
    async fn read_slot(&self, db: &mut PgConnection) -> Result<SlotReading, SourceError> {
        let s = &self.settings;
        let (retained, lag, safe): (Option<i64>, Option<i64>, Option<i64>) = sqlx::query_as(
            "SELECT (pg_current_wal_lsn() - restart_lsn)::int8, (pg_current_wal_lsn() - confirmed_flush_lsn)::int8, \
             safe_wal_size FROM pg_replication_slots WHERE slot_name = $1",
        )
        .bind(&s.slot)
        .fetch_one(&mut *db)
        .await
        .map_err(|e| self.pg(e))?;
        let reading = SlotReading {
            retained_bytes: retained.unwrap_or(0),
            lag_bytes: lag.unwrap_or(0),
            safe_bytes: safe,
            at_micros: exhub_schemas::Timestamp::now().unix_micros(),
        };
        if reading.retained_bytes > s.lag_warn_bytes {
            tracing::warn!(
                source = %s.common.name,
                slot = %s.slot,
                retained_bytes = reading.retained_bytes,
                lag_bytes = reading.lag_bytes,
                threshold_bytes = s.lag_warn_bytes,
                "the slot retains more WAL than the threshold: the source is behind or stopped; \
                 the server's disk fills if this goes on (retire a source with --drop-slot)"
            );
        } else {
            tracing::info!(source = %s.common.name, slot = %s.slot, retained_bytes = reading.retained_bytes, lag_bytes = reading.lag_bytes, "slot");
        }
        Ok(reading)
    }

    fn pg(&self, error: sqlx::Error) -> SourceError {
        SourceError::Driver {
            kind: KIND,
            source_name: self.settings.common.name.clone(),
            error: PgError::Sql(error),
        }
    }

    fn repl(&self, error: PgWireError) -> SourceError {
        match &error {
            PgWireError::Auth(m) => setup(&self.settings.common.name, format!("access denied: {m}")),
            PgWireError::Server(m) if m.contains("(SQLSTATE 42501)") => setup(
                &self.settings.common.name,
                format!("permission denied for replication: {m}"),
            ),
            _ => SourceError::Driver {
                kind: KIND,
                source_name: self.settings.common.name.clone(),
                error: PgError::Replication(error),
            },
        }
    }
}

/// The stream's decoding state: the relations announced so far and the mapped tables they
/// are; rows of mapped tables become documents.
struct Decoder<'t> {
    source: &'t str,
    tables: &'t [Table],
    relations: HashMap<u32, Relation>,
}

impl Decoder<'_> {
    /// One decoded change: relations are remembered, rows of mapped tables become documents.
    fn change(&mut self, message: LogicalReplicationMessage, tx: Option<&mut Tx>, emit: &mut Emit<'_, String>) {
        let (tables, relations) = (self.tables, &mut self.relations);
        match message {
            LogicalReplicationMessage::Relation {
                relation_id,
                namespace,
                relation_name,
                columns,
                ..
            } => {
                let table = tables
                    .iter()
                    .position(|t| t.names.0 == *namespace && t.names.1 == *relation_name);
                relations.insert(
                    relation_id,
                    Relation {
                        columns: columns.iter().map(|c| (c.name.to_string(), c.type_id)).collect(),
                        table,
                    },
                );
            }
            LogicalReplicationMessage::Insert { relation_id, tuple } => {
                self.row(relation_id, Op::Upsert, &tuple, None, tx, emit);
            }
            LogicalReplicationMessage::Update {
                relation_id,
                old_tuple,
                new_tuple,
                ..
            } => {
                let Some(rel) = self.relations.get(&relation_id) else {
                    return;
                };
                let Some(table) = rel.table.map(|i| &self.tables[i]) else {
                    return;
                };
                let Some(tx) = tx else { return };
                // A key change arrives with the old key: delete it, then upsert the new row.
                if let Some(old) = &old_tuple {
                    let old_key = key_of(rel, table, old);
                    if old_key.iter().any(Option::is_some) && old_key != key_of(rel, table, &new_tuple) {
                        self.row(relation_id, Op::Delete, old, None, Some(&mut *tx), emit);
                    }
                }
                self.row(relation_id, Op::Upsert, &new_tuple, old_tuple.as_ref(), Some(tx), emit);
            }
            LogicalReplicationMessage::Delete {
                relation_id, old_tuple, ..
            } => {
                self.row(relation_id, Op::Delete, &old_tuple, None, tx, emit);
            }
            LogicalReplicationMessage::Truncate { .. } => {
                tracing::warn!(source = %self.source, "TRUNCATE on a published table is not propagated");
            }
            _ => {}
        }
    }

    /// One row of a mapped table. Columns the server did not send because their TOASTed value
    /// did not change are taken from `old` (sent under REPLICA IDENTITY FULL) or else left out
    /// of the document ([`Cell::Unchanged`]), so that sinks keep what they have.
    fn row(
        &self,
        relation_id: u32,
        op: Op,
        tuple: &TupleData,
        old: Option<&TupleData>,
        tx: Option<&mut Tx>,
        emit: &mut Emit<'_, String>,
    ) {
        let Some(rel) = self.relations.get(&relation_id) else {
            return;
        };
        let Some(index) = rel.table else { return };
        let table = &self.tables[index];
        let Some(tx) = tx else { return };
        tx.seq += 1;
        let mut cells: HashMap<&str, Cell> = HashMap::new();
        for (i, (name, type_oid)) in rel.columns.iter().enumerate() {
            let Some(value) = tuple.columns.get(i) else { continue };
            let c = if value.is_unchanged() {
                match old.and_then(|o| o.columns.get(i)).filter(|v| !v.is_unchanged()) {
                    Some(v) if v.is_null() => Cell::Null,
                    Some(v) => cell(*type_oid, v.as_str().as_deref()),
                    None => Cell::Unchanged,
                }
            } else if value.is_null() {
                // Under the default replica identity a delete sends only the key; the other
                // columns come as nulls and are not the row's values.
                if op == Op::Delete && !table.key.iter().any(|k| &k.name == name) {
                    continue;
                }
                Cell::Null
            } else {
                cell(*type_oid, value.as_str().as_deref())
            };
            cells.insert(name.as_str(), c);
        }
        let position = RowPosition {
            position: tx.position.clone(),
            tx: tx.xid.to_string(),
            seq: tx.seq,
            committed_micros: tx.committed_micros,
        };
        emit.row(index, op, |c| cells.remove(c), &position);
    }
}

/// The key columns' values of a tuple (text), to tell a key change.
fn key_of(rel: &Relation, table: &Table, tuple: &TupleData) -> Vec<Option<String>> {
    table
        .key
        .iter()
        .map(|k| {
            let i = rel.columns.iter().position(|(n, _)| *n == k.name)?;
            let v = tuple.columns.get(i)?;
            if v.is_null() || v.is_unchanged() {
                None
            } else {
                v.as_string()
            }
        })
        .collect()
}

/// The source kind, as errors name it.
const KIND: &str = "PostgreSQL";

fn setup(source: &str, message: String) -> SourceError {
    SourceError::Setup {
        kind: KIND,
        source_name: source.to_owned(),
        message,
    }
}

use crate::sql::quote;

/// PostgreSQL's epoch (2000-01-01) → Unix micros.
fn pg_to_unix_micros(micros: i64) -> i64 {
    micros + 946_684_800_000_000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_and_quotes() {
        assert_eq!(pg_to_unix_micros(0), 946_684_800_000_000);
        assert_eq!(quote("a\"b"), "\"a\"\"b\"");
    }
}
