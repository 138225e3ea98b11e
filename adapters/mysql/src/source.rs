//! The MySQL/MariaDB source: a consistent snapshot, then the binlog read as a replica reads it,
//! every mapped row published as an exchange document with confirms, the checkpoint moved only
//! past what the broker confirmed.
//!
//! Positions: every document carries the binlog position of the transaction boundary it follows
//! (`file:offset`, where a replica may resume) and its sequence inside that transaction;
//! snapshot rows carry the snapshot's position and sequence 0. Sinks keep the newest version of
//! each key by that order (see [`exhub_connect::mapping::order_key`]), which is what makes a
//! resumed snapshot, a replayed transaction and a redelivered message harmless.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use exhub_connect::mapping::RowPosition;
use exhub_connect::runner::Emit;
use exhub_connect::source::{DriverError, KeyValue, Opened, SnapshotRow, Source, SourceCommon, TableInfo};
use exhub_connect::{Cell, Mapper};
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

/// The server sends a heartbeat after this long without events (so lag shows when idle).
const HEARTBEAT: Duration = Duration::from_secs(5);
/// How often the binlog's retention is read for the heartbeat.
const LOG_HEALTH_EVERY: Duration = Duration::from_secs(30);

/// One binlog event with the table map its rows need, or the error that ended the stream.
type BinlogItem = Result<(Event, Option<TableMapEvent<'static>>), mysql_async::Error>;

/// What the source needs to run (built by the `exhub` binary from routes.toml).
#[derive(Debug, Clone)]
pub struct SourceSettings {
    /// What every source is told.
    pub common: SourceCommon,
    /// The replica server id it registers with (unique among the server's replicas).
    pub server_id: u32,
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

/// Bytes of binlog from `at` to the end of the newest file, given the server's files (name,
/// size) oldest first.
fn retained_after(logs: &[(String, u64)], at: &BinlogPos) -> i64 {
    let bytes: u64 = logs
        .iter()
        .filter(|(name, _)| name.as_str() >= at.file.as_str())
        .map(|(name, size)| {
            if *name == at.file {
                size.saturating_sub(at.pos)
            } else {
                *size
            }
        })
        .sum();
    i64::try_from(bytes).unwrap_or(i64::MAX)
}

impl std::fmt::Display for BinlogPos {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.file, self.pos)
    }
}

/// A snapshot key value as the checkpoint keeps it.
fn key_value(v: &Value) -> KeyValue {
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

/// A kept key value bound back as a query parameter.
fn key_param(k: &KeyValue) -> Value {
    match k {
        KeyValue::Int(i) => Value::Int(*i),
        KeyValue::UInt(u) => Value::UInt(*u),
        KeyValue::Text(t) => Value::Bytes(t.clone().into_bytes()),
    }
}

/// One mapped table, as the server describes it.
struct Table {
    /// Its mapping and the server's row estimate (`information_schema.TABLES`).
    info: TableInfo,
    /// Key columns (the mapping's), in order.
    key: Vec<String>,
}

/// One attempt: the connection (snapshot reads) and the tables.
pub struct Session {
    conn: Conn,
    tables: Vec<Table>,
}

/// The MySQL/MariaDB source adapter.
pub struct MysqlSource {
    settings: SourceSettings,
    registry: Arc<Registry>,
    db: String,
}

impl MysqlSource {
    /// A source with `settings`; documents are typed by `registry`.
    pub fn new(settings: SourceSettings, registry: Arc<Registry>) -> Result<MysqlSource, SourceError> {
        let opts = crate::tls::source_opts(settings.common.url.expose()).map_err(|message| SourceError::Setup {
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
        Ok(MysqlSource { settings, registry, db })
    }
}

impl Source for MysqlSource {
    const KIND: &'static str = "mysql";
    type Position = BinlogPos;
    type Error = MysqlError;
    type Session = Session;

    fn common(&self) -> &SourceCommon {
        &self.settings.common
    }

    async fn open(&self, _checkpoint: Option<&BinlogPos>, _snapshot: bool) -> Result<Opened<Session>, SourceError> {
        let mut conn = self.connect().await?;
        self.check_server(&mut conn).await?;
        let offset = match self.settings.common.offset_secs {
            Some(o) => o,
            None => {
                let o: Option<i64> = conn
                    .query_first(crate::sql::UTC_OFFSET)
                    .await
                    .map_err(|e| self.mysql(e))?;
                i32::try_from(o.unwrap_or(0)).unwrap_or(0)
            }
        };
        let tables = self.describe(&mut conn, offset).await?;
        let infos = tables.iter().map(|t| t.info.clone()).collect();
        Ok(Opened {
            session: Session { conn, tables },
            db: self.db.clone(),
            tables: infos,
            log_created: false,
        })
    }

    /// A consistent-snapshot transaction, and the binlog position it is consistent with.
    async fn begin_snapshot(
        &self,
        session: &mut Session,
        resume: Option<&BinlogPos>,
    ) -> Result<BinlogPos, SourceError> {
        let conn = &mut session.conn;
        conn.query_drop("SET SESSION time_zone = '+00:00'")
            .await
            .map_err(|e| self.mysql(e))?;
        conn.query_drop("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            .await
            .map_err(|e| self.mysql(e))?;
        // MySQL has no snapshot position: read the position first. Changes between it and the
        // snapshot are then streamed again, which per-key ordering at the sinks makes harmless
        // (the opposite order could lose them). MariaDB tells the snapshot's own position. A
        // resumed snapshot keeps its first position and reads neither.
        let consistent = "START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY";
        if let Some(start) = resume {
            conn.query_drop(consistent).await.map_err(|e| self.mysql(e))?;
            return Ok(start.clone());
        }
        let before = self.master_position(conn).await?;
        conn.query_drop(consistent).await.map_err(|e| self.mysql(e))?;
        let rows: Vec<(String, String)> = conn
            .query(crate::sql::SNAPSHOT_POSITION)
            .await
            .map_err(|e| self.mysql(e))?;
        let status: HashMap<String, String> = rows.into_iter().collect();
        Ok(
            match (
                status.get("Binlog_snapshot_file"),
                status.get("Binlog_snapshot_position"),
            ) {
                (Some(file), Some(pos)) if !file.is_empty() => BinlogPos {
                    file: file.clone(),
                    pos: pos.parse().unwrap_or(before.pos),
                },
                _ => before,
            },
        )
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
        let columns: Vec<&str> = t.info.mapper.columns().collect();
        let text = crate::sql::snapshot_chunk(t.info.mapper.table(), &columns, &t.key, after.is_some(), limit);
        let params: Vec<Value> = after.into_iter().flatten().map(key_param).collect();
        let rows: Vec<Row> = session.conn.exec(text, params).await.map_err(|e| self.mysql(e))?;
        let width = columns.len();
        Ok(rows
            .into_iter()
            .map(|row| {
                let cols = row.columns();
                let mut values = row.unwrap();
                let key = values[width..].iter().map(key_value).collect();
                let cells = values
                    .iter_mut()
                    .take(width)
                    .enumerate()
                    .map(|(i, v)| {
                        cell(
                            std::mem::replace(v, Value::NULL),
                            cols[i].column_type(),
                            cols[i].character_set(),
                        )
                    })
                    .collect();
                SnapshotRow { key, cells }
            })
            .collect())
    }

    async fn end_snapshot(&self, session: &mut Session) -> Result<(), SourceError> {
        session.conn.query_drop("COMMIT").await.map_err(|e| self.mysql(e))
    }

    async fn current(&self, session: &mut Session) -> Result<BinlogPos, SourceError> {
        self.master_position(&mut session.conn).await
    }

    async fn stream(
        &self,
        session: Session,
        from: BinlogPos,
        emit: &mut Emit<'_, BinlogPos>,
        cancel: &CancellationToken,
    ) -> Result<(), SourceError> {
        let Session { conn, tables } = session;
        let _ = conn.disconnect().await;
        self.stream(from, &tables, emit, cancel).await
    }
}

impl MysqlSource {
    async fn connect(&self) -> Result<Conn, SourceError> {
        let opts = crate::tls::source_opts(self.settings.common.url.expose()).map_err(|e| self.setup(e))?;
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
            .query_first(crate::sql::BINLOG_SETTINGS)
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
        let metadata: Option<Option<String>> = conn.query_first(crate::sql::ROW_METADATA).await.ok().flatten();
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
                .exec(crate::sql::COLUMNS, (self.db.as_str(), mapping.table.as_str()))
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
                .exec_first(crate::sql::ROW_ESTIMATE, (self.db.as_str(), mapping.table.as_str()))
                .await
                .map_err(|e| self.mysql(e))?;
            tables.push(Table {
                info: TableInfo {
                    mapper: Mapper::new(mapping, &self.registry, offset)?,
                    estimated_rows: estimated.flatten().unwrap_or(0),
                },
                key: mapping.key.clone(),
            });
        }
        Ok(tables)
    }

    /// Streams the binlog from `start` until cancelled.
    async fn stream(
        &self,
        start: BinlogPos,
        tables: &[Table],
        emit: &mut Emit<'_, BinlogPos>,
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
            .query_first(crate::sql::CHECKSUMMED)
            .await
            .map_err(|e| self.mysql(e))?;
        let by_name: HashMap<&str, usize> = tables
            .iter()
            .enumerate()
            .map(|(i, t)| (t.info.mapper.table(), i))
            .collect();
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
        let mut cursor = Cursor::new(start, checksummed == Some(1));
        let mut lag_logged = Instant::now();
        let mut health_at: Option<Instant> = None;
        loop {
            if cancel.is_cancelled() {
                emit.finish(cancel).await?;
                return Ok(());
            }
            let next = if emit.pending() > 0 {
                // Documents wait: take what the binlog already has; when it has nothing more
                // right now, publish them at once rather than after the linger.
                match events.try_recv() {
                    Ok(item) => Ok(Some(item)),
                    Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => Ok(None),
                    Err(tokio::sync::mpsc::error::TryRecvError::Empty) => {
                        emit.idle(cancel).await?;
                        continue;
                    }
                }
            } else {
                tokio::select! {
                    biased;
                    () = cancel.cancelled() => continue,
                    next = tokio::time::timeout(HEARTBEAT * 2, events.recv()) => next,
                }
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
                Ok(Some(Err(e))) => return Err(self.stream_error(e, &cursor.boundary, emit.checkpoint_path())),
                Ok(Some(Ok(event))) => Some(event),
            };
            if let Some((event, tme)) = event {
                let header = event.header();
                let end = u64::from(header.log_pos());
                let committed_micros = i64::from(header.timestamp()) * 1_000_000;
                match event.read_data() {
                    Ok(Some(EventData::FormatDescriptionEvent(_))) => cursor.format(),
                    Ok(Some(EventData::RotateEvent(r))) => cursor.rotate(r.name_raw(), r.position()),
                    Ok(Some(EventData::QueryEvent(q))) => cursor.query(&q.query(), end),
                    Ok(Some(EventData::XidEvent(_))) => cursor.commit(end),
                    Ok(Some(EventData::RowsEvent(rows))) => {
                        let Some(tme) = tme.as_ref() else {
                            continue;
                        };
                        if tme.database_name() != self.db.as_str() {
                            continue;
                        }
                        let Some(&index) = by_name.get(tme.table_name().as_ref()) else {
                            continue;
                        };
                        let table = &tables[index];
                        let op = match &rows {
                            RowsEventData::DeleteRowsEvent(_) | RowsEventData::DeleteRowsEventV1(_) => Op::Delete,
                            _ => Op::Upsert,
                        };
                        let tx = cursor.boundary.to_string();
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
                                let position = RowPosition {
                                    position: tx.clone(),
                                    tx: tx.clone(),
                                    seq: cursor.next_seq(),
                                    committed_micros,
                                };
                                let mut cells = binlog_cells(row);
                                emit.row(index, op, |c| cells.remove(c), &position);
                            }
                        }
                    }
                    Ok(Some(EventData::HeartbeatEvent)) => {}
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(source = %self.settings.common.name, error = %e, position = end, "undecodable binlog event skipped");
                    }
                }
                if !cursor.in_tx {
                    emit.boundary(cursor.boundary.clone());
                }
                if header.timestamp() > 0 && lag_logged.elapsed() >= Duration::from_secs(60) {
                    lag_logged = Instant::now();
                    let lag = exhub_schemas::time::unix_micros_now() / 1_000_000 - i64::from(header.timestamp());
                    tracing::info!(source = %self.settings.common.name, position = %cursor.boundary, lag_seconds = lag, "streaming");
                }
            }
            emit.tick(cancel).await?;
            if health_at.is_none_or(|t| t.elapsed() >= LOG_HEALTH_EVERY) {
                health_at = Some(Instant::now());
                match self.binlog_health(&cursor.boundary).await {
                    Ok(health) => emit.log_health(health),
                    Err(e) => {
                        tracing::debug!(source = %self.settings.common.name, error = %e, "binlog retention unavailable")
                    }
                }
            }
        }
    }

    /// What the server keeps of the binlog for this source (from `at` to the end) and how long
    /// it keeps binlogs, on a connection of its own (the stream holds the other).
    async fn binlog_health(&self, at: &BinlogPos) -> Result<exhub_connect::status::LogHealth, SourceError> {
        let mut conn = self.connect().await?;
        let logs: Vec<(String, u64)> = conn
            .query_map(crate::sql::BINARY_LOGS, |row: Row| {
                (
                    row.get::<String, _>(0).unwrap_or_default(),
                    row.get::<u64, _>(1).unwrap_or(0),
                )
            })
            .await
            .map_err(|e| self.mysql(e))?;
        let expiry = match conn.query_first::<u64, _>(crate::sql::EXPIRY_SECONDS).await {
            Ok(seconds) => seconds,
            Err(_) => conn
                .query_first::<u64, _>(crate::sql::EXPIRY_DAYS)
                .await
                .map_err(|e| self.mysql(e))?
                .map(|days| days * 86_400),
        };
        let _ = conn.disconnect().await;
        Ok(exhub_connect::status::LogHealth {
            retained_bytes: Some(retained_after(&logs, at)),
            retention_seconds: expiry.filter(|&s| s > 0).and_then(|s| i64::try_from(s).ok()),
            ..Default::default()
        })
    }

    fn stream_error(&self, e: mysql_async::Error, at: &BinlogPos, checkpoint: &std::path::Path) -> SourceError {
        match &e {
            mysql_async::Error::Server(s) if s.code == 1236 => self.setup(format!(
                "the binlog position {at} of checkpoint {} is no longer on the server (binlog purged: {}); changes \
                 since then cannot be read. Take a new snapshot: `exhub source {} --reset` (or delete the checkpoint \
                 file), or set snapshot = \"always\" for one start",
                checkpoint.display(),
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

/// Where the binlog reader stands: the file it reads, the transaction boundary every row since
/// belongs after (where a replica may resume), the rows' sequence inside their transaction.
/// Pure bookkeeping over the events' kinds, unit-tested below.
#[derive(Debug)]
struct Cursor {
    file: String,
    /// Whether events carry a CRC32 (the first rotate's name still has it).
    checksummed: bool,
    seen_format: bool,
    boundary: BinlogPos,
    seq: u64,
    in_tx: bool,
}

impl Cursor {
    fn new(start: BinlogPos, checksummed: bool) -> Cursor {
        Cursor {
            file: start.file.clone(),
            checksummed,
            seen_format: false,
            boundary: start,
            seq: 0,
            in_tx: false,
        }
    }

    /// A format description event.
    fn format(&mut self) {
        self.seen_format = true;
    }

    /// A rotate event to file `raw` at `position`.
    fn rotate(&mut self, raw: &[u8], position: u64) {
        self.file = binlog_name(raw, self.checksummed && !self.seen_format);
        if !self.in_tx {
            self.boundary = BinlogPos {
                file: self.file.clone(),
                pos: position,
            };
        }
    }

    /// A query event ending at `end`: `BEGIN` opens a transaction; `COMMIT` of a non-XA
    /// engine or a DDL statement ends one; savepoints and comments change nothing.
    fn query(&mut self, text: &str, end: u64) {
        let text = text.trim();
        let upper = text.get(..11).unwrap_or(text).to_ascii_uppercase();
        if text.eq_ignore_ascii_case("BEGIN") {
            self.in_tx = true;
        } else if !text.starts_with('#')
            && !upper.starts_with("SAVEPOINT")
            && !upper.starts_with("ROLLBACK TO")
            && end > 0
        {
            self.commit(end);
        }
    }

    /// The end of a transaction at `end` (an XID event, or a committing query).
    fn commit(&mut self, end: u64) {
        self.in_tx = false;
        self.boundary = BinlogPos {
            file: self.file.clone(),
            pos: end,
        };
        self.seq = 0;
    }

    /// The next row's sequence in its transaction (from 1).
    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retained_binlog_counts_from_the_position_to_the_end() {
        let logs = [
            ("mysql-bin.000001".to_owned(), 1000),
            ("mysql-bin.000002".to_owned(), 500),
            ("mysql-bin.000003".to_owned(), 300),
        ];
        let at = |file: &str, pos| BinlogPos { file: file.into(), pos };
        assert_eq!(retained_after(&logs, &at("mysql-bin.000002", 200)), 300 + 300);
        assert_eq!(retained_after(&logs, &at("mysql-bin.000003", 300)), 0);
        assert_eq!(retained_after(&logs, &at("mysql-bin.000001", 4)), 996 + 500 + 300);
    }

    #[test]
    fn binlog_names_lose_a_trailing_checksum() {
        assert_eq!(binlog_name(b"mysql-bin.000001", false), "mysql-bin.000001");
        assert_eq!(binlog_name(b"mysql-bin.000001Q|GG", true), "mysql-bin.000001");
        assert_eq!(binlog_name(b"binlog.000123\x07\x00\xff\x12", true), "binlog.000123");
        // A checksum whose first byte is a digit (CI met `mysql-bin.000004` + "2…": the old
        // character heuristic read `mysql-bin.0000042`, a file that does not exist).
        assert_eq!(binlog_name(b"mysql-bin.0000042\x9a\x01\xc3", true), "mysql-bin.000004");
    }

    fn pos(file: &str, pos: u64) -> BinlogPos {
        BinlogPos { file: file.into(), pos }
    }

    #[test]
    fn the_cursor_moves_its_boundary_only_between_transactions() {
        let mut c = Cursor::new(pos("mysql-bin.000001", 4), true);
        // The first rotate comes before the format description: its name has the checksum.
        c.rotate(b"mysql-bin.000001\x01\x02\x03\x04", 4);
        c.format();
        assert_eq!(c.boundary, pos("mysql-bin.000001", 4));
        c.query("BEGIN", 300);
        assert!(c.in_tx);
        assert_eq!((c.next_seq(), c.next_seq()), (1, 2));
        c.query("SAVEPOINT a", 350);
        c.query("# a comment", 360);
        assert!(c.in_tx, "savepoints and comments do not end a transaction");
        c.commit(400);
        assert!(!c.in_tx);
        assert_eq!(c.boundary, pos("mysql-bin.000001", 400));
        assert_eq!(c.next_seq(), 1, "the sequence restarts in each transaction");
        // A DDL statement is a transaction of its own.
        c.query("ALTER TABLE t ADD COLUMN c INT", 500);
        assert_eq!(c.boundary, pos("mysql-bin.000001", 500));
        // A rotate inside a transaction changes the file but not the boundary.
        c.query("BEGIN", 600);
        c.rotate(b"mysql-bin.000002", 4);
        assert_eq!(c.boundary, pos("mysql-bin.000001", 500));
        c.commit(120);
        assert_eq!(c.boundary, pos("mysql-bin.000002", 120));
        // Outside one, it moves the boundary to the new file.
        c.rotate(b"mysql-bin.000003", 4);
        assert_eq!(c.boundary, pos("mysql-bin.000003", 4));
    }

    #[test]
    fn binlog_positions_sort_at_the_sinks() {
        exhub_connect::mapping::order_key_sorts(
            "mysql",
            &[
                "mysql-bin.000009:999",
                "mysql-bin.000009:1000",
                "mysql-bin.000010:4",
                "mysql-bin.000100:4",
            ],
        )
        .unwrap();
    }
}
