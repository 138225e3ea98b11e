//! The MySQL/MariaDB source: a consistent snapshot, then the binlog read as a replica reads it,
//! every mapped row published as an exchange document with confirms, the checkpoint moved only
//! past what the broker confirmed.
//!
//! Positions: every document carries the binlog position of the transaction boundary it follows
//! (`file:offset`, where a replica may resume) and its sequence inside that transaction;
//! snapshot rows carry the snapshot's position and sequence 0. Sinks keep the newest version of
//! each key by that order (see [`exhub_connect::mapping::order_key`]), which is what makes a
//! resumed snapshot, a replayed transaction and a redelivered message harmless.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use exhub_connect::mapping::{RowPosition, SnapshotMode};
use exhub_connect::outbox::{FLUSH_DOCS, Outbox};
use exhub_connect::source::{DriverError, SourceCommon};
use exhub_connect::{Cell, CheckpointStore, Mapper, Publisher};
use exhub_schemas::{Op, Registry};
use futures_util::StreamExt as _;
use mysql_async::binlog::events::{Event, EventData, RowsEventData, TableMapEvent};
use mysql_async::binlog::row::BinlogRow;
use mysql_async::binlog::value::BinlogValue;
use mysql_async::prelude::Queryable as _;
use mysql_async::{BinlogStreamRequest, Conn, Row, Value};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::cells::cell;

/// Rows per snapshot chunk.
const CHUNK_ROWS: usize = 2000;
/// The server sends a heartbeat after this long without events (so lag shows when idle).
const HEARTBEAT: Duration = Duration::from_secs(5);

/// One binlog event with the table map its rows need, or the error that ended the stream.
type BinlogItem = Result<(Event, Option<TableMapEvent<'static>>), mysql_async::Error>;

/// What the source needs to run (built by the `exhub` binary from routes.toml).
#[derive(Debug, Clone)]
pub struct SourceSettings {
    /// What every source is told.
    pub common: SourceCommon,
    /// The replica server id it registers with (unique among the server's replicas).
    pub server_id: u32,
    /// Time zone of zone-less `DATETIME`s, seconds east of UTC (default: the server's).
    pub offset_secs: Option<i32>,
}

/// Why the source stopped.
pub type SourceError = exhub_connect::source::SourceError<MysqlError>;

/// A MySQL/MariaDB driver error.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct MysqlError(pub mysql_async::Error);

impl DriverError for MysqlError {
    /// A lost connection, a server shutting down (1053), a replica connection killed (1927) or
    /// lost during a query (2013).
    fn is_passing(&self) -> bool {
        self.0.is_fatal() || matches!(&self.0, mysql_async::Error::Server(e) if matches!(e.code, 1053 | 1927 | 2013))
    }
}

/// A binlog position: where a replica may resume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BinlogPos {
    /// The binlog file.
    pub file: String,
    /// The offset in it.
    pub pos: u64,
}

impl std::fmt::Display for BinlogPos {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.file, self.pos)
    }
}

/// The checkpoint.
#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    /// Where streaming resumes (a transaction boundary whose every earlier row is confirmed).
    binlog: Option<BinlogPos>,
    /// A snapshot in progress.
    snapshot: Option<SnapshotState>,
}

/// How far a snapshot got.
#[derive(Debug, Serialize, Deserialize)]
struct SnapshotState {
    /// Where streaming starts once the snapshot is done (the first attempt's position).
    start: BinlogPos,
    /// Tables finished.
    done: Vec<String>,
    /// Per table, the key of the last row confirmed.
    after: BTreeMap<String, Vec<KeyValue>>,
}

/// A key column's value, kept to resume a chunked read.
#[derive(Debug, Clone, Serialize, Deserialize)]
enum KeyValue {
    Int(i64),
    UInt(u64),
    Text(String),
}

impl KeyValue {
    fn of(v: &Value) -> KeyValue {
        match v {
            Value::Int(i) => KeyValue::Int(*i),
            Value::UInt(u) => KeyValue::UInt(*u),
            Value::Bytes(b) => KeyValue::Text(String::from_utf8_lossy(b).into_owned()),
            Value::Date(y, m, d, h, mi, s, us) => {
                KeyValue::Text(format!("{y:04}-{m:02}-{d:02} {h:02}:{mi:02}:{s:02}.{us:06}"))
            }
            other => KeyValue::Text(other.as_sql(true).trim_matches('\'').to_owned()),
        }
    }

    fn value(&self) -> Value {
        match self {
            KeyValue::Int(i) => Value::Int(*i),
            KeyValue::UInt(u) => Value::UInt(*u),
            KeyValue::Text(t) => Value::Bytes(t.clone().into_bytes()),
        }
    }
}

/// One mapped table, as the server describes it.
struct Table {
    mapper: Mapper,
    /// Key columns (the mapping's), in order.
    key: Vec<String>,
    /// The server's row estimate (`information_schema.TABLES`), for the progress bar.
    estimated_rows: u64,
}

/// The MySQL/MariaDB source adapter.
pub struct MysqlSource {
    settings: SourceSettings,
    registry: Arc<Registry>,
    store: CheckpointStore,
    db: String,
}

impl MysqlSource {
    /// A source with `settings`; documents are typed by `registry`.
    pub fn new(settings: SourceSettings, registry: Arc<Registry>) -> Result<MysqlSource, SourceError> {
        let opts = crate::tls::source_opts(&settings.common.url).map_err(|message| SourceError::Setup {
            kind: "MySQL",
            source_name: settings.common.name.clone(),
            message,
        })?;
        let db = opts.db_name().unwrap_or_default().to_owned();
        if db.is_empty() {
            return Err(SourceError::Setup {
                kind: "MySQL",
                source_name: settings.common.name.clone(),
                message: "the URL names no database (mysql://user@host:port/DATABASE)".into(),
            });
        }
        let store = CheckpointStore::new(settings.common.checkpoint.clone());
        Ok(MysqlSource {
            settings,
            registry,
            store,
            db,
        })
    }

    /// Forgets the checkpoint: the next start takes a new snapshot (mode `initial`) or streams
    /// from the server's current position (mode `never`).
    pub fn reset(&self) -> Result<(), SourceError> {
        Ok(self.settings.common.forget_checkpoint()?)
    }

    /// Runs until `cancel` or an error that retrying cannot fix. Passing failures (the
    /// database or RabbitMQ restarting) are retried with backoff from the last checkpoint.
    pub async fn run(&self, cancel: &CancellationToken) -> Result<(), SourceError> {
        let mut retry = self.settings.common.retry();
        loop {
            let result = self.run_once(retry.publisher(), cancel).await;
            if !retry.again(&self.settings.common.name, result, cancel).await? {
                return Ok(());
            }
        }
    }

    async fn run_once(&self, publisher: &mut Publisher, cancel: &CancellationToken) -> Result<(), SourceError> {
        let mut conn = self.connect().await?;
        self.check_server(&mut conn).await?;
        let offset = match self.settings.offset_secs {
            Some(o) => o,
            None => {
                let o: Option<i64> = conn
                    .query_first("SELECT TIMESTAMPDIFF(SECOND, UTC_TIMESTAMP(), NOW())")
                    .await
                    .map_err(|e| self.mysql(e))?;
                i32::try_from(o.unwrap_or(0)).unwrap_or(0)
            }
        };
        let tables = self.describe(&mut conn, offset).await?;
        let mut state: State = self.store.load()?.unwrap_or_default();
        let snapshot = match self.settings.common.snapshot {
            SnapshotMode::Never => false,
            SnapshotMode::Initial => state.binlog.is_none() || state.snapshot.is_some(),
            SnapshotMode::Always => true,
        };
        let mut out = Outbox::new(self.settings.common.identity("mysql", &self.db), publisher);
        if snapshot {
            if self.settings.common.snapshot == SnapshotMode::Always && state.snapshot.is_none() {
                state.binlog = None;
            }
            self.snapshot(&mut conn, &tables, &mut state, &mut out, cancel).await?;
            if cancel.is_cancelled() {
                return Ok(());
            }
        }
        let start = match state.binlog.clone() {
            Some(p) => p,
            None => {
                let p = self.master_position(&mut conn).await?;
                state.binlog = Some(p.clone());
                self.store.save(&state)?;
                p
            }
        };
        let _ = conn.disconnect().await;
        self.stream(start, &tables, &mut state, &mut out, cancel).await
    }

    async fn connect(&self) -> Result<Conn, SourceError> {
        let opts = crate::tls::source_opts(&self.settings.common.url).map_err(|e| self.setup(e))?;
        let tls = opts.ssl_opts().is_some();
        Conn::new(opts).await.map_err(|e| match &e {
            mysql_async::Error::Server(s) if s.code == 1045 => {
                self.setup(format!("access denied: wrong user or password ({})", s.message))
            }
            mysql_async::Error::Server(s) if s.code == 1049 => self.setup(format!("no such database: {}", s.message)),
            // TLS asked for and not to be had: stop and say so (never retried, never clear text).
            mysql_async::Error::Driver(mysql_async::DriverError::NoClientSslFlagFromServer) => {
                self.setup("the URL asks for TLS but the server does not offer it (have_ssl is not YES)".into())
            }
            mysql_async::Error::Io(mysql_async::IoError::Tls(t)) => self.setup(format!("TLS: {t}")),
            mysql_async::Error::Io(mysql_async::IoError::Io(io))
                if tls && io.kind() == std::io::ErrorKind::InvalidData =>
            {
                self.setup(format!("TLS handshake failed: {io}"))
            }
            _ => self.mysql(e),
        })
    }

    /// Refuses a server that cannot give a full row binlog, or a user that may not read it.
    async fn check_server(&self, conn: &mut Conn) -> Result<(), SourceError> {
        let row: Option<(Option<String>, Option<String>, Option<String>)> = conn
            .query_first("SELECT @@GLOBAL.log_bin, @@GLOBAL.binlog_format, @@GLOBAL.binlog_row_image")
            .await
            .map_err(|e| self.mysql(e))?;
        let (log_bin, format, image) = row.unwrap_or_default();
        if !matches!(log_bin.as_deref(), Some("1" | "ON")) {
            return Err(self.setup(
                "the binary log is off on the server (log_bin); enable it with log_bin, binlog_format=ROW, \
                 binlog_row_image=FULL, binlog_row_metadata=FULL and a server_id (see scripts/services.sh)"
                    .into(),
            ));
        }
        if format.as_deref() != Some("ROW") {
            return Err(self.setup(format!(
                "binlog_format is {} but must be ROW (SET GLOBAL binlog_format = 'ROW' and in the server config)",
                format.unwrap_or_default()
            )));
        }
        if image.as_deref() != Some("FULL") {
            return Err(self.setup(format!(
                "binlog_row_image is {} but must be FULL",
                image.unwrap_or_default()
            )));
        }
        let metadata: Option<Option<String>> = conn
            .query_first("SELECT @@GLOBAL.binlog_row_metadata")
            .await
            .ok()
            .flatten();
        if let Some(Some(m)) = metadata
            && m != "FULL"
        {
            return Err(self.setup(format!(
                "binlog_row_metadata is {m} but must be FULL (column names travel in the binlog, so that an ALTER TABLE \
                 cannot misalign fields)"
            )));
        }
        self.master_position(conn).await.map(|_| ())
    }

    /// The server's current binlog end.
    async fn master_position(&self, conn: &mut Conn) -> Result<BinlogPos, SourceError> {
        let row: Option<Row> = conn.query_first("SHOW MASTER STATUS").await.map_err(|e| match &e {
            mysql_async::Error::Server(s) if s.code == 1227 => self.setup(format!(
                "the user may not read binlog positions: GRANT REPLICATION CLIENT (MariaDB: BINLOG MONITOR), \
                 REPLICATION SLAVE and SELECT to it ({})",
                s.message
            )),
            _ => self.mysql(e),
        })?;
        let row = row.ok_or_else(|| self.setup("SHOW MASTER STATUS is empty: the binary log is off".into()))?;
        let file: Option<String> = row.get(0);
        let pos: Option<u64> = row.get(1);
        match (file, pos) {
            (Some(file), Some(pos)) => Ok(BinlogPos { file, pos }),
            _ => Err(self.setup("SHOW MASTER STATUS gave no position".into())),
        }
    }

    /// Checks every mapped table and column exists; builds the mappers.
    async fn describe(&self, conn: &mut Conn, offset: i32) -> Result<Vec<Table>, SourceError> {
        let mut tables = Vec::new();
        for mapping in &self.settings.common.tables {
            let columns: Vec<String> = conn
                .exec(
                    "SELECT COLUMN_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
                    (self.db.as_str(), mapping.table.as_str()),
                )
                .await
                .map_err(|e| self.mysql(e))?;
            if columns.is_empty() {
                return Err(self.setup(format!(
                    "table {}.{} does not exist (or the user may not SELECT it)",
                    self.db, mapping.table
                )));
            }
            for column in mapping.fields.values().chain(&mapping.key) {
                if !columns.contains(column) {
                    return Err(self.setup(format!(
                        "table {}.{} has no column {column:?} (mapped in routes.toml); its columns: {}",
                        self.db,
                        mapping.table,
                        columns.join(", ")
                    )));
                }
            }
            let estimated: Option<Option<u64>> = conn
                .exec_first(
                    "SELECT TABLE_ROWS FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
                    (self.db.as_str(), mapping.table.as_str()),
                )
                .await
                .map_err(|e| self.mysql(e))?;
            tables.push(Table {
                mapper: Mapper::new(mapping, &self.registry, offset)?,
                key: mapping.key.clone(),
                estimated_rows: estimated.flatten().unwrap_or(0),
            });
        }
        Ok(tables)
    }

    /// Reads every table not yet done in key-ordered chunks inside one consistent-snapshot
    /// transaction, publishing each chunk and checkpointing after its confirm.
    async fn snapshot(
        &self,
        conn: &mut Conn,
        tables: &[Table],
        state: &mut State,
        out: &mut Outbox<'_>,
        cancel: &CancellationToken,
    ) -> Result<(), SourceError> {
        conn.query_drop("SET SESSION time_zone = '+00:00'")
            .await
            .map_err(|e| self.mysql(e))?;
        conn.query_drop("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            .await
            .map_err(|e| self.mysql(e))?;
        // MySQL has no snapshot position: read the position first. Changes between it and the
        // snapshot are then streamed again, which per-key ordering at the sinks makes harmless
        // (the opposite order could lose them).
        let before = self.master_position(conn).await?;
        conn.query_drop("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
            .await
            .map_err(|e| self.mysql(e))?;
        let rows: Vec<(String, String)> = conn
            .query("SHOW STATUS LIKE 'binlog_snapshot_%'")
            .await
            .map_err(|e| self.mysql(e))?;
        let status: HashMap<String, String> = rows.into_iter().collect();
        let at = match (
            status.get("Binlog_snapshot_file"),
            status.get("Binlog_snapshot_position"),
        ) {
            (Some(file), Some(pos)) if !file.is_empty() => BinlogPos {
                file: file.clone(),
                pos: pos.parse().unwrap_or(before.pos),
            },
            _ => before,
        };
        if state.snapshot.is_none() {
            state.snapshot = Some(SnapshotState {
                start: at.clone(),
                done: Vec::new(),
                after: BTreeMap::new(),
            });
        }
        self.store.save(state)?;
        for table in tables {
            let name = table.mapper.table().to_owned();
            let Some(snap) = state.snapshot.as_ref() else { break };
            if snap.done.contains(&name) {
                continue;
            }
            let after = snap.after.get(&name).cloned();
            let done = self.snapshot_table(conn, table, &at, after, state, out, cancel).await?;
            if !done {
                return Ok(());
            }
            if let Some(snap) = state.snapshot.as_mut() {
                snap.done.push(name);
                snap.after.remove(table.mapper.table());
            }
            self.store.save(state)?;
        }
        conn.query_drop("COMMIT").await.map_err(|e| self.mysql(e))?;
        if let Some(snap) = state.snapshot.take() {
            tracing::info!(source = %self.settings.common.name, start = %snap.start, "snapshot complete; streaming");
            state.binlog = Some(snap.start);
        }
        self.store.save(state)?;
        Ok(())
    }

    /// One table's chunks; `false` when cancelled before the end.
    #[allow(clippy::too_many_arguments)]
    async fn snapshot_table(
        &self,
        conn: &mut Conn,
        table: &Table,
        at: &BinlogPos,
        mut after: Option<Vec<KeyValue>>,
        state: &mut State,
        out: &mut Outbox<'_>,
        cancel: &CancellationToken,
    ) -> Result<bool, SourceError> {
        let name = table.mapper.table();
        let columns: Vec<&str> = table.mapper.columns().collect();
        let mut select: Vec<String> = columns.iter().map(|c| quote(c)).collect();
        for k in &table.key {
            select.push(quote(k));
        }
        let key_list = table.key.iter().map(|k| quote(k)).collect::<Vec<_>>().join(", ");
        let base = format!("SELECT {} FROM {}", select.join(", "), quote(name));
        let bar = exhub_connect::outbox::snapshot_progress(table.estimated_rows, name);
        tracing::info!(
            source = %self.settings.common.name,
            table = name,
            estimated_rows = table.estimated_rows,
            resume = after.is_some(),
            "snapshot of table started"
        );
        let started = Instant::now();
        let mut count = 0u64;
        let position = RowPosition {
            position: at.to_string(),
            tx: format!("snapshot:{at}"),
            seq: 0,
            committed_micros: exhub_schemas::time::unix_micros_now(),
        };
        loop {
            if cancel.is_cancelled() {
                return Ok(false);
            }
            let (sql, params) = match &after {
                None => (format!("{base} ORDER BY {key_list} LIMIT {CHUNK_ROWS}"), Vec::new()),
                Some(key) => (
                    format!(
                        "{base} WHERE ({key_list}) > ({}) ORDER BY {key_list} LIMIT {CHUNK_ROWS}",
                        vec!["?"; key.len()].join(", ")
                    ),
                    key.iter().map(KeyValue::value).collect(),
                ),
            };
            let rows: Vec<Row> = conn.exec(sql, params).await.map_err(|e| self.mysql(e))?;
            let n = rows.len();
            for row in rows {
                let cols = row.columns();
                let mut values = row.unwrap();
                let key: Vec<KeyValue> = values[columns.len()..].iter().map(KeyValue::of).collect();
                let mut cells: HashMap<&str, Cell> = HashMap::new();
                for (i, c) in columns.iter().enumerate() {
                    let v = std::mem::replace(&mut values[i], Value::NULL);
                    cells.insert(c, cell(v, cols[i].column_type(), cols[i].character_set()));
                }
                let mut position = position.clone();
                position.tx = format!("snapshot:{at}:{}", key_text(&key));
                out.row(&table.mapper, Op::Snapshot, |c| cells.remove(c), &position);
                after = Some(key);
            }
            out.flush(cancel).await?;
            if let (Some(snap), Some(key)) = (state.snapshot.as_mut(), &after) {
                snap.after.insert(name.to_owned(), key.clone());
            }
            self.store.save(state)?;
            count += n as u64;
            bar.inc(n as u64);
            if n < CHUNK_ROWS {
                break;
            }
        }
        bar.finish_and_clear();
        tracing::info!(
            source = %self.settings.common.name,
            table = name,
            rows = count,
            seconds = started.elapsed().as_secs_f64(),
            "snapshot of table done"
        );
        Ok(true)
    }

    /// Streams the binlog from `start` until cancelled.
    async fn stream(
        &self,
        start: BinlogPos,
        tables: &[Table],
        state: &mut State,
        out: &mut Outbox<'_>,
        cancel: &CancellationToken,
    ) -> Result<(), SourceError> {
        let mut conn = self.connect().await?;
        let period = HEARTBEAT.as_nanos();
        conn.query_drop(format!("SET @master_heartbeat_period = {period}"))
            .await
            .map_err(|e| self.mysql(e))?;
        // Whether events carry a CRC32: the server's first (fake) rotate event comes before the
        // format description that tells the reader so, and then still has it on its name.
        let checksummed: Option<i64> = conn
            .query_first("SELECT @@GLOBAL.binlog_checksum <> 'NONE'")
            .await
            .map_err(|e| self.mysql(e))?;
        let checksummed = checksummed == Some(1);
        let by_name: HashMap<&str, &Table> = tables.iter().map(|t| (t.mapper.table(), t)).collect();
        let request = BinlogStreamRequest::new(self.settings.server_id)
            .with_filename(start.file.as_bytes())
            .with_pos(start.pos);
        let mut stream = conn.get_binlog_stream(request).await.map_err(|e| self.mysql(e))?;
        // The stream is read by its own task: a binlog read must never be cancelled halfway
        // through a packet (the linger timeout below would do that), and the channel bounds
        // how far reading runs ahead of publishing.
        let (events_tx, mut events) = tokio::sync::mpsc::channel::<BinlogItem>(256);
        let _reader = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(async move {
            while let Some(item) = stream.next().await {
                let item = item.map(|event| {
                    let tme = match event.read_data() {
                        Ok(Some(EventData::RowsEvent(r))) => stream.get_tme(r.table_id()).cloned(),
                        _ => None,
                    };
                    (event, tme)
                });
                let failed = item.is_err();
                if events_tx.send(item).await.is_err() || failed {
                    break;
                }
            }
        }));
        tracing::info!(source = %self.settings.common.name, position = %start, "streaming the binlog");
        let mut file = start.file.clone();
        let mut seen_format = false;
        // The boundary every row since belongs after: where a replica may resume.
        let mut boundary = start.clone();
        let mut seq = 0u64;
        let mut in_tx = false;
        let mut saved = start;
        let mut saved_at = Instant::now();
        let mut lag_logged = Instant::now();
        loop {
            let wait = out.linger_left().unwrap_or(HEARTBEAT * 2);
            let next = tokio::select! {
                biased;
                () = cancel.cancelled() => {
                    out.flush(cancel).await.ok();
                    return Ok(());
                }
                next = tokio::time::timeout(wait, events.recv()) => next,
            };
            let event = match next {
                Err(_) => None,
                Ok(None) => {
                    return Err(
                        self.mysql(mysql_async::Error::Io(mysql_async::IoError::Io(std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            "the binlog stream ended",
                        )))),
                    );
                }
                Ok(Some(Err(e))) => return Err(self.stream_error(e, &boundary)),
                Ok(Some(Ok(event))) => Some(event),
            };
            if let Some((event, tme)) = event {
                let header = event.header();
                let end = u64::from(header.log_pos());
                let committed_micros = i64::from(header.timestamp()) * 1_000_000;
                // Whether this event ends a transaction: the boundary moves past it.
                let mut committed = false;
                match event.read_data() {
                    Ok(Some(EventData::FormatDescriptionEvent(_))) => seen_format = true,
                    Ok(Some(EventData::RotateEvent(r))) => {
                        file = binlog_name(r.name_raw(), checksummed && !seen_format);
                        if !in_tx {
                            boundary = BinlogPos {
                                file: file.clone(),
                                pos: r.position(),
                            };
                        }
                    }
                    Ok(Some(EventData::QueryEvent(q))) => {
                        let query = q.query();
                        let text = query.trim();
                        let upper = text.get(..11).unwrap_or(text).to_ascii_uppercase();
                        if text.eq_ignore_ascii_case("BEGIN") {
                            in_tx = true;
                        } else if !text.starts_with('#')
                            && !upper.starts_with("SAVEPOINT")
                            && !upper.starts_with("ROLLBACK TO")
                            && end > 0
                        {
                            // COMMIT of a non-XA engine, or a DDL statement: both end a transaction.
                            committed = true;
                        }
                    }
                    Ok(Some(EventData::XidEvent(_))) => committed = true,
                    Ok(Some(EventData::RowsEvent(rows))) => {
                        let Some(tme) = tme.as_ref() else {
                            continue;
                        };
                        if tme.database_name() != self.db.as_str() {
                            continue;
                        }
                        let Some(table) = by_name.get(tme.table_name().as_ref()) else {
                            continue;
                        };
                        let op_of = |ev: &RowsEventData<'_>| match ev {
                            RowsEventData::DeleteRowsEvent(_) | RowsEventData::DeleteRowsEventV1(_) => Op::Delete,
                            _ => Op::Upsert,
                        };
                        let op = op_of(&rows);
                        let tx = boundary.to_string();
                        for pair in rows.rows(tme) {
                            let (before, after) = pair.map_err(|e| self.mysql(mysql_async::Error::Io(e.into())))?;
                            let images: Vec<(Op, BinlogRow)> = match (op, before, after) {
                                (Op::Delete, Some(b), _) => vec![(Op::Delete, b)],
                                (_, Some(b), Some(a)) if key_changed(&b, &a, &table.key) => {
                                    vec![(Op::Delete, b), (Op::Upsert, a)]
                                }
                                (_, _, Some(a)) => vec![(Op::Upsert, a)],
                                _ => Vec::new(),
                            };
                            for (op, row) in images {
                                seq += 1;
                                let position = RowPosition {
                                    position: boundary.to_string(),
                                    tx: tx.clone(),
                                    seq,
                                    committed_micros,
                                };
                                let mut cells = binlog_cells(row);
                                out.row(&table.mapper, op, |c| cells.remove(c), &position);
                            }
                        }
                        if out.pending() >= FLUSH_DOCS {
                            out.flush(cancel).await?;
                        }
                    }
                    Ok(Some(EventData::HeartbeatEvent)) => {}
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(source = %self.settings.common.name, error = %e, position = end, "undecodable binlog event skipped");
                    }
                }
                if committed {
                    in_tx = false;
                    boundary = BinlogPos {
                        file: file.clone(),
                        pos: end,
                    };
                    seq = 0;
                }
                if header.timestamp() > 0 && lag_logged.elapsed() >= Duration::from_secs(60) {
                    lag_logged = Instant::now();
                    let lag = exhub_schemas::time::unix_micros_now() / 1_000_000 - i64::from(header.timestamp());
                    tracing::info!(source = %self.settings.common.name, position = %boundary, lag_seconds = lag, "streaming");
                }
            }
            if out.due() {
                out.flush(cancel).await?;
            }
            // Save when every row before the boundary is confirmed: after a flush, or when idle
            // (a heartbeat, transactions on unmapped tables) once a second.
            if out.pending() == 0
                && boundary != saved
                && (out.flushed_since(saved_at) || saved_at.elapsed() >= Duration::from_secs(1))
            {
                state.binlog = Some(boundary.clone());
                self.store.save(state)?;
                saved = boundary.clone();
                saved_at = Instant::now();
            }
        }
    }

    fn stream_error(&self, e: mysql_async::Error, at: &BinlogPos) -> SourceError {
        match &e {
            mysql_async::Error::Server(s) if s.code == 1236 => self.setup(format!(
                "the binlog position {at} of checkpoint {} is no longer on the server (binlog purged: {}); changes \
                 since then cannot be read. Take a new snapshot: `exhub source {} --reset` (or delete the checkpoint \
                 file), or set snapshot = \"always\" for one start",
                self.store.path().display(),
                s.message,
                self.settings.common.name
            )),
            mysql_async::Error::Server(s) if s.code == 1227 || s.code == 1045 => self.setup(format!(
                "the user may not read the binlog: GRANT REPLICATION SLAVE, REPLICATION CLIENT (MariaDB: BINLOG MONITOR) \
                 and SELECT to it ({})",
                s.message
            )),
            _ => self.mysql(e),
        }
    }

    fn setup(&self, message: String) -> SourceError {
        SourceError::Setup {
            kind: "MySQL",
            source_name: self.settings.common.name.clone(),
            message,
        }
    }

    fn mysql(&self, error: mysql_async::Error) -> SourceError {
        match &error {
            mysql_async::Error::Server(s) if s.code == 1142 || s.code == 1044 => self.setup(format!(
                "permission denied: GRANT SELECT on the mapped tables, REPLICATION SLAVE and REPLICATION CLIENT \
                 (MariaDB: BINLOG MONITOR) to the source's user ({})",
                s.message
            )),
            _ => SourceError::Driver {
                kind: "MySQL",
                source_name: self.settings.common.name.clone(),
                error: MysqlError(error),
            },
        }
    }
}

/// A binlog row's cells by column name.
fn binlog_cells(row: BinlogRow) -> HashMap<String, Cell> {
    let columns = row.columns();
    let values = row.unwrap();
    columns
        .iter()
        .zip(values)
        .map(|(c, v)| {
            let value = match v {
                BinlogValue::Value(v) => v,
                BinlogValue::Jsonb(j) => match serde_json::Value::try_from(j) {
                    Ok(json) => Value::Bytes(json.to_string().into_bytes()),
                    Err(_) => Value::NULL,
                },
                BinlogValue::JsonDiff(_) => Value::NULL,
            };
            (
                c.name_str().into_owned(),
                cell(value, c.column_type(), c.character_set()),
            )
        })
        .collect()
}

/// Whether an update changed the row's key (then it is a delete of the old key and an upsert).
fn key_changed(before: &BinlogRow, after: &BinlogRow, key: &[String]) -> bool {
    fn get<'r>(row: &'r BinlogRow, name: &str) -> Option<&'r BinlogValue<'r>> {
        let i = row.columns_ref().iter().position(|c| c.name_str() == name)?;
        row.as_ref(i)
    }
    key.iter().any(|k| get(before, k) != get(after, k))
}

fn key_text(key: &[KeyValue]) -> String {
    key.iter()
        .map(|k| match k {
            KeyValue::Int(i) => i.to_string(),
            KeyValue::UInt(u) => u.to_string(),
            KeyValue::Text(t) => t.clone(),
        })
        .collect::<Vec<_>>()
        .join("\u{1f}")
}

/// A binlog file name as a rotate event gives it. The server's first rotate event (the
/// artificial one naming the file streaming starts in; MariaDB gives it the start position, so
/// it is not "fake" by position) comes before the format description, so when the binlog is
/// checksummed its 4-byte CRC32 is still attached to the name (`checksummed`): it is cut by
/// length, since its bytes may well be digits or letters that a name could also end with.
fn binlog_name(raw: &[u8], checksummed: bool) -> String {
    let name = if checksummed {
        &raw[..raw.len().saturating_sub(4)]
    } else {
        raw
    };
    String::from_utf8_lossy(name).into_owned()
}

/// A quoted identifier.
fn quote(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binlog_names_lose_a_trailing_checksum() {
        assert_eq!(binlog_name(b"mysql-bin.000001", false), "mysql-bin.000001");
        assert_eq!(binlog_name(b"mysql-bin.000001Q|GG", true), "mysql-bin.000001");
        assert_eq!(binlog_name(b"binlog.000123\x07\x00\xff\x12", true), "binlog.000123");
        // A checksum whose first byte is a digit (CI met `mysql-bin.000004` + "2…": the old
        // character heuristic read `mysql-bin.0000042`, a file that does not exist).
        assert_eq!(binlog_name(b"mysql-bin.0000042\x9a\x01\xc3", true), "mysql-bin.000004");
    }
}
