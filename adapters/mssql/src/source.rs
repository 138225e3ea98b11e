//! The SQL Server source (not verified against a real SQL Server): CDC checks, a snapshot under
//! SNAPSHOT isolation consistent with the LSN where streaming starts, then polling of each
//! table's capture instance, every mapped row published as an exchange document with
//! confirms, each table's position moved only past what the broker confirmed.
//!
//! Positions are per table (the sinks keep their bookkeeping per source, table and key, so
//! tables need no order among themselves): the commit LSN of a transaction and how many of its
//! rows are confirmed ([`Position`]). Streaming after a snapshot starts just after the LSN read
//! before it; snapshot rows carry that start and sequence 0, so every later change is streamed
//! with a higher sequence or LSN and wins at the sinks.
//!
//! A capture instance replaced after a DDL (a table has two while the DBA moves it): the
//! source reads the old instance up to the new one's start LSN, then follows the new one — if
//! the new one still captures every mapped column; otherwise it stops and names the column.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use exhub_connect::mapping::RowPosition;
use exhub_connect::outbox::FLUSH_DOCS;
use exhub_connect::runner::Emit;
use exhub_connect::source::{DriverError, KeyValue, Opened, SnapshotRow, Source, SourceCommon, TableInfo};
use exhub_connect::{Cell, Mapper};
use exhub_schemas::{Op, Registry};
use futures_util::TryStreamExt as _;
use serde::{Deserialize, Serialize};
use tiberius::{ColumnData, Row};
use tokio_util::sync::CancellationToken;

use crate::connect::{MssqlClient, config, connect};
use crate::lsn::{Lsn, Position};
use crate::sql;
use crate::values::cell;

/// What the source needs to run (built by the `exhub` binary from routes.toml).
#[derive(Debug, Clone)]
pub struct SourceSettings {
    /// What every source is told.
    pub common: SourceCommon,
    /// How often to poll when changes keep coming; idle polls back off up to 8 times this.
    pub poll: Duration,
}

/// Why the source stopped.
pub type SourceError = exhub_connect::source::SourceError<MssqlError>;

/// A SQL Server driver error.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct MssqlError(pub Box<tiberius::error::Error>);

impl DriverError for MssqlError {
    /// A lost or refused connection (the server restarting), a redirect to another server, or
    /// the server shutting down or failing over (errors 6005, 40613, …, 4060 while a database
    /// recovers).
    fn is_passing(&self) -> bool {
        match &*self.0 {
            tiberius::error::Error::Io { .. } | tiberius::error::Error::Routing { .. } => true,
            tiberius::error::Error::Server(e) => PASSING_SERVER_ERRORS.contains(&e.code()),
            _ => false,
        }
    }
}

/// Server errors retrying may fix: shutdown in progress (6005), database being recovered or
/// not yet available (4060, 922, 40613), transport-level failures (10053, 10054), failover (40197).
const PASSING_SERVER_ERRORS: [u32; 7] = [6005, 4060, 922, 40613, 10053, 10054, 40197];

/// The source kind, as errors name it.
const KIND: &str = "SQL Server";

/// Where every table's stream stands: its capture instance and position in it. Shown as the
/// oldest table's LSN (snapshot rows are labelled with it).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Positions(BTreeMap<String, TableState>);

/// One table's capture instance and position.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableState {
    instance: String,
    position: Position,
}

impl std::fmt::Display for Positions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let oldest = self.0.values().map(|t| t.position.lsn).min().unwrap_or_default();
        write!(f, "{oldest}")
    }
}

/// One attempt: the connection and the tables.
pub struct Session {
    client: MssqlClient,
    tables: Vec<Table>,
}

/// One mapped table as the server describes it.
struct Table {
    /// Its place among the mapped tables.
    index: usize,
    /// Its mapping and the server's row count.
    info: TableInfo,
    name: String,
    key: Vec<String>,
    columns: Vec<sql::Column>,
}

/// The SQL Server source adapter.
pub struct MssqlSource {
    settings: SourceSettings,
    registry: Arc<Registry>,
    config: tiberius::Config,
    database: String,
}

impl MssqlSource {
    /// A source with `settings`; documents are typed by `registry`.
    pub fn new(settings: SourceSettings, registry: Arc<Registry>) -> Result<MssqlSource, SourceError> {
        let (config, database) =
            config(settings.common.url.expose()).map_err(|e| setup(&settings.common.name, e.to_string()))?;
        Ok(MssqlSource {
            settings,
            registry,
            config,
            database,
        })
    }
}

impl Source for MssqlSource {
    const KIND: &'static str = "mssql";
    type Position = Positions;
    type Error = MssqlError;
    type Session = Session;

    fn common(&self) -> &SourceCommon {
        &self.settings.common
    }

    async fn open(&self, _checkpoint: Option<&Positions>, _snapshot: bool) -> Result<Opened<Session>, SourceError> {
        let s = &self.settings;
        // A server that cannot be reached is retried (it may be restarting), like a lost
        // connection later on.
        let mut client = connect(self.config.clone()).await.map_err(|e| {
            if let tiberius::error::Error::Io { kind, message } = &e {
                tracing::warn!(source = %s.common.name, "cannot reach SQL Server at {}: {message} ({kind:?})", self.config.get_addr());
            }
            self.server(e)
        })?;
        let enabled = first(&mut client, sql::DB_CDC_ENABLED, &[])
            .await
            .map_err(|e| self.server(e))?;
        if !matches!(enabled.as_ref().and_then(|r| r.get::<bool, _>(0)), Some(true)) {
            return Err(setup(
                &s.common.name,
                format!(
                    "CDC is not enabled on database {} (a DBA runs EXEC sys.sp_cdc_enable_db)",
                    self.database
                ),
            ));
        }
        let tables = self.describe(&mut client).await?;
        let infos = tables.iter().map(|t| t.info.clone()).collect();
        Ok(Opened {
            session: Session { client, tables },
            db: self.database.clone(),
            tables: infos,
            log_created: false,
        })
    }

    /// A SNAPSHOT-isolation transaction; streaming continues just after the highest LSN read
    /// before it.
    async fn begin_snapshot(
        &self,
        session: &mut Session,
        resume: Option<&Positions>,
    ) -> Result<Positions, SourceError> {
        let start = match resume {
            // A table mapped since the snapshot began streams from now on, read before the
            // snapshot's transaction starts like the others were.
            Some(p) if session.tables.iter().all(|t| p.0.contains_key(&t.name)) => p.clone(),
            Some(p) => {
                let mut start = p.clone();
                for (table, state) in self.now(session).await?.0 {
                    start.0.entry(table).or_insert(state);
                }
                start
            }
            None => self.now(session).await?,
        };
        session
            .client
            .simple_query(sql::BEGIN_SNAPSHOT)
            .await
            .map_err(|e| self.server(e))?
            .into_results()
            .await
            .map_err(|e| self.server(e))?;
        Ok(start)
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
        let mut select = t.columns.clone();
        select.extend(t.key.iter().map(|k| sql::Column {
            name: k.clone(),
            type_name: "key".into(),
        }));
        let text = sql::snapshot_chunk(&t.name, &select, &t.key, limit, after.is_some());
        let after: Vec<String> = after.into_iter().flatten().map(ToString::to_string).collect();
        let params: Vec<&dyn tiberius::ToSql> = after.iter().map(|k| k as &dyn tiberius::ToSql).collect();
        let rows = session
            .client
            .query(text, &params)
            .await
            .map_err(|e| self.server(e))?
            .into_first_result()
            .await
            .map_err(|e| self.server(e))?;
        Ok(rows
            .iter()
            .map(|row| {
                let cells: Vec<&ColumnData<'static>> = row.cells().map(|(_, v)| v).collect();
                SnapshotRow {
                    key: cells[t.columns.len()..]
                        .iter()
                        .map(|v| KeyValue::Text(key_text(v)))
                        .collect(),
                    cells: cells[..t.columns.len()].iter().map(|v| cell(v)).collect(),
                }
            })
            .collect())
    }

    async fn end_snapshot(&self, session: &mut Session) -> Result<(), SourceError> {
        session
            .client
            .simple_query("COMMIT")
            .await
            .map_err(|e| self.server(e))?
            .into_results()
            .await
            .map_err(|e| self.server(e))?;
        Ok(())
    }

    async fn current(&self, session: &mut Session) -> Result<Positions, SourceError> {
        self.now(session).await
    }

    async fn stream(
        &self,
        session: Session,
        from: Positions,
        emit: &mut Emit<'_, Positions>,
        cancel: &CancellationToken,
    ) -> Result<(), SourceError> {
        let s = &self.settings;
        let Session { mut client, tables } = session;
        let mut positions = from;
        // A table mapped since the last start streams from now on.
        if tables.iter().any(|t| !positions.0.contains_key(&t.name)) {
            let now = self.now_for(&mut client, &tables).await?;
            for (name, state) in now.0 {
                positions.0.entry(name).or_insert(state);
            }
        }
        emit.boundary(positions.clone());
        tracing::info!(source = %s.common.name, tables = tables.len(), "polling the change tables");
        let (mut idle, mut next_poll) = (0u32, Instant::now());
        loop {
            if Instant::now() >= next_poll {
                let mut found = 0u64;
                // One reading of the capture job's progress serves every table of this round.
                if let Some(max) = max_lsn(&mut client).await.map_err(|e| self.server(e))? {
                    for t in &tables {
                        found += self
                            .poll_table(&mut client, t, max, &mut positions, emit, cancel)
                            .await?;
                    }
                }
                emit.boundary(positions.clone());
                // The change tables are read up to the capture job's end: publish now.
                emit.idle(cancel).await?;
                idle = if found == 0 { (idle + 1).min(3) } else { 0 };
                next_poll = Instant::now() + s.poll * 2u32.pow(idle);
            }
            emit.tick(cancel).await?;
            let wait = next_poll.saturating_duration_since(Instant::now());
            let wait = emit.linger().map_or(wait, |l| l.min(wait));
            tokio::select! {
                () = cancel.cancelled() => {
                    emit.finish(cancel).await?;
                    return Ok(());
                }
                () = tokio::time::sleep(wait) => {}
            }
        }
    }
}

impl MssqlSource {
    /// Every table at the log's current end (just after the capture job's highest LSN).
    async fn now(&self, session: &mut Session) -> Result<Positions, SourceError> {
        self.now_for(&mut session.client, &session.tables).await
    }

    async fn now_for(&self, client: &mut MssqlClient, tables: &[Table]) -> Result<Positions, SourceError> {
        let max = max_lsn(client).await.map_err(|e| self.server(e))?.unwrap_or_default();
        let lsn = max.increment().unwrap_or(max);
        let mut positions = BTreeMap::new();
        for t in tables {
            positions.insert(
                t.name.clone(),
                TableState {
                    instance: self.instance(client, t).await?,
                    position: Position { lsn, rows: 0 },
                },
            );
        }
        Ok(Positions(positions))
    }

    /// The mapped tables with their column types; every one must exist and be tracked by CDC.
    async fn describe(&self, client: &mut MssqlClient) -> Result<Vec<Table>, SourceError> {
        let s = &self.settings;
        let mut tables = Vec::new();
        for mapping in &s.common.tables {
            let (schema, name) = mapping.table.split_once('.').unwrap_or(("dbo", &mapping.table));
            let rows = client
                .query(sql::TABLE_COLUMNS, &[&schema, &name])
                .await
                .map_err(|e| self.server(e))?
                .into_first_result()
                .await
                .map_err(|e| self.server(e))?;
            if rows.is_empty() {
                return Err(setup(
                    &s.common.name,
                    format!("table {schema}.{name} does not exist (or SELECT is not granted)"),
                ));
            }
            if !rows.iter().any(|r| r.get::<bool, _>(2) == Some(true)) {
                return Err(setup(
                    &s.common.name,
                    format!(
                        "table {schema}.{name} is not tracked by CDC (a DBA runs EXEC sys.sp_cdc_enable_table \
                         @source_schema = N'{schema}', @source_name = N'{name}', @role_name = NULL)"
                    ),
                ));
            }
            let types: HashMap<String, String> = rows
                .iter()
                .filter_map(|r| Some((r.get::<&str, _>(0)?.to_owned(), r.get::<&str, _>(1)?.to_owned())))
                .collect();
            let mapper = Mapper::new(mapping, &self.registry, s.common.offset_secs.unwrap_or(0))?;
            let columns = mapper
                .columns()
                .map(|c| match types.get(c) {
                    Some(t) => Ok(sql::Column {
                        name: c.to_owned(),
                        type_name: t.clone(),
                    }),
                    None => Err(setup(
                        &s.common.name,
                        format!("table {schema}.{name} has no column {c}"),
                    )),
                })
                .collect::<Result<Vec<_>, _>>()?;
            let qualified = format!("{schema}.{name}");
            let estimated_rows = first(client, sql::ROW_ESTIMATE, &[&qualified.as_str()])
                .await
                .ok()
                .flatten()
                .and_then(|r| r.get::<i64, _>(0))
                .and_then(|n| u64::try_from(n).ok())
                .unwrap_or(0);
            tables.push(Table {
                index: tables.len(),
                info: TableInfo { mapper, estimated_rows },
                name: mapping.table.clone(),
                key: mapping.key.clone(),
                columns,
            });
        }
        Ok(tables)
    }

    /// The capture instance to read for `table`: the newest that captures every mapped column.
    async fn instance(&self, client: &mut MssqlClient, table: &Table) -> Result<String, SourceError> {
        let (schema, name) = table.name.split_once('.').unwrap_or(("dbo", &table.name));
        let rows = client
            .query(sql::CAPTURE_INSTANCES, &[&schema, &name])
            .await
            .map_err(|e| self.server(e))?
            .into_first_result()
            .await
            .map_err(|e| self.server(e))?;
        let Some(newest) = rows.first().and_then(|r| r.get::<&str, _>(0)).map(str::to_owned) else {
            return Err(setup(
                &self.settings.common.name,
                format!("table {} has no capture instance", table.name),
            ));
        };
        let captured: Vec<String> = client
            .query(sql::CAPTURED_COLUMNS, &[&newest.as_str()])
            .await
            .map_err(|e| self.server(e))?
            .into_first_result()
            .await
            .map_err(|e| self.server(e))?
            .iter()
            .filter_map(|r| r.get::<&str, _>(0).map(str::to_owned))
            .collect();
        if let Some(missing) = table.columns.iter().find(|c| !captured.contains(&c.name)) {
            return Err(setup(
                &self.settings.common.name,
                format!(
                    "capture instance {newest} of {} does not capture mapped column {} (after a DDL the DBA \
                     recreated it without it): fix the mapping or the capture instance",
                    table.name, missing.name
                ),
            ));
        }
        Ok(newest)
    }

    /// Reads one table's changes from its position to `max` (the capture job's highest LSN);
    /// the number of rows.
    async fn poll_table(
        &self,
        client: &mut MssqlClient,
        table: &Table,
        max: Lsn,
        positions: &mut Positions,
        emit: &mut Emit<'_, Positions>,
        cancel: &CancellationToken,
    ) -> Result<u64, SourceError> {
        let Some(ts) = positions.0.get(&table.name).cloned() else {
            return Ok(0);
        };
        let newest = self.instance(client, table).await?;
        // Reading the old instance stops where the new one starts; then the new one is followed.
        let (instance, to) = if newest == ts.instance {
            (ts.instance.clone(), max)
        } else {
            let start = start_lsn(client, &newest).await.map_err(|e| self.server(e))?;
            if ts.position.lsn >= start {
                tracing::warn!(source = %self.settings.common.name, table = %table.name, from = %ts.instance, to = %newest, "following the new capture instance");
                if let Some(t) = positions.0.get_mut(&table.name) {
                    t.instance = newest.clone();
                }
                (newest, max)
            } else {
                (ts.instance.clone(), start.min(max))
            }
        };
        let min = first(client, sql::MIN_LSN, &[&instance.as_str()])
            .await
            .map_err(|e| self.server(e))?
            .and_then(|r| r.get::<&[u8], _>(0).and_then(|b| Lsn::from_bytes(b).ok()))
            .unwrap_or_default();
        if ts.position.lsn < min && ts.position.lsn != Lsn::default() {
            return Err(setup(
                &self.settings.common.name,
                format!(
                    "the changes of {} since {} were removed by the CDC cleanup job (the oldest kept is {min}): \
                     take a new snapshot with `exhub source {} --reset`",
                    table.name, ts.position.lsn, self.settings.common.name
                ),
            ));
        }
        let from = ts.position.lsn.max(min);
        if from > to {
            return Ok(0);
        }
        let text = sql::changes(&instance, &table.columns);
        let from_bytes = from.bytes().to_vec();
        let to_bytes = to.bytes().to_vec();
        let mut stream = client
            .query(text, &[&from_bytes.as_slice(), &to_bytes.as_slice()])
            .await
            .map_err(|e| self.server(e))?
            .into_row_stream();
        let (mut count, mut tx_lsn, mut seq) = (0u64, None::<Lsn>, 0u64);
        let mut pending: Option<Position> = None;
        while let Some(row) = stream.try_next().await.map_err(|e| self.server(e))? {
            let Some(lsn) = row.get::<&[u8], _>(0).and_then(|b| Lsn::from_bytes(b).ok()) else {
                continue;
            };
            if tx_lsn != Some(lsn) {
                tx_lsn = Some(lsn);
                seq = 0;
            }
            seq += 1;
            if ts.position.covers(lsn, seq) {
                continue;
            }
            let op = match row.get::<i32, _>(2) {
                Some(1) => Op::Delete,
                Some(2 | 4) => Op::Upsert,
                _ => continue,
            };
            self.change_row(table, &row, op, (lsn, seq), emit);
            count += 1;
            pending = Some(Position { lsn, rows: seq });
            if emit.pending() >= FLUSH_DOCS {
                // The row stream holds the connection; publishing does not need it.
                if let (Some(p), Some(t)) = (pending, positions.0.get_mut(&table.name)) {
                    t.position = p;
                }
                emit.boundary(positions.clone());
                emit.tick(cancel).await?;
            }
        }
        drop(stream);
        if let Some(t) = positions.0.get_mut(&table.name) {
            if let Some(p) = pending {
                t.position = p;
            }
            // Everything up to `to` is read: the next poll starts after it.
            if to >= t.position.lsn
                && let Some(next) = to.increment()
            {
                t.position = Position { lsn: next, rows: 0 };
            }
        }
        Ok(count)
    }

    /// One change row of `table` at (commit LSN, sequence in its transaction).
    fn change_row(&self, table: &Table, row: &Row, op: Op, (lsn, seq): (Lsn, u64), emit: &mut Emit<'_, Positions>) {
        let cells: Vec<&ColumnData<'static>> = row.cells().map(|(_, v)| v).collect();
        // __$start_lsn, __$seqval, __$operation, commit time, then the columns in mapping order.
        let committed_micros = match cells.get(3).map(|v| cell(v)) {
            Some(Cell::DateTime(parts)) => {
                exhub_schemas::Timestamp::from_local(parts, self.settings.common.offset_secs.unwrap_or(0))
                    .map_or(0, |t| t.unix_micros())
            }
            _ => 0,
        };
        let mut by_name: HashMap<&str, Cell> = table
            .columns
            .iter()
            .zip(cells.iter().skip(4))
            .map(|(c, v)| (c.name.as_str(), cell(v)))
            .collect();
        let position = RowPosition {
            position: lsn.to_string(),
            tx: lsn.to_string(),
            seq,
            committed_micros,
        };
        emit.row(table.index, op, |c| by_name.remove(c), &position);
    }

    fn server(&self, error: tiberius::error::Error) -> SourceError {
        SourceError::Driver {
            kind: KIND,
            source_name: self.settings.common.name.clone(),
            error: MssqlError(Box::new(error)),
        }
    }
}

/// The first row of a query.
async fn first(
    client: &mut MssqlClient,
    text: &str,
    params: &[&dyn tiberius::ToSql],
) -> Result<Option<Row>, tiberius::error::Error> {
    client.query(text, params).await?.into_row().await
}

async fn max_lsn(client: &mut MssqlClient) -> Result<Option<Lsn>, tiberius::error::Error> {
    Ok(first(client, sql::MAX_LSN, &[])
        .await?
        .and_then(|r| r.get::<&[u8], _>(0).and_then(|b| Lsn::from_bytes(b).ok())))
}

async fn start_lsn(client: &mut MssqlClient, instance: &str) -> Result<Lsn, tiberius::error::Error> {
    Ok(first(client, sql::START_LSN, &[&instance])
        .await?
        .and_then(|r| r.get::<&[u8], _>(0).and_then(|b| Lsn::from_bytes(b).ok()))
        .unwrap_or_default())
}

/// A key value as text, to resume a snapshot after it (bound back as text; SQL Server converts
/// it to the column's type).
fn key_text(v: &ColumnData<'_>) -> String {
    match cell(v) {
        Cell::Int(i) => i.to_string(),
        Cell::Text(t) | Cell::Decimal(t) => t,
        Cell::Date(y, m, d) => format!("{y:04}-{m:02}-{d:02}"),
        other => format!("{other:?}"),
    }
}

fn setup(source: &str, message: String) -> SourceError {
    SourceError::Setup {
        kind: KIND,
        source_name: source.to_owned(),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn passing(e: tiberius::error::Error) -> bool {
        MssqlError(Box::new(e)).is_passing()
    }

    #[test]
    fn a_server_restarting_is_retried_not_fatal() {
        // Connection refused or reset while SQL Server restarts: the source retries.
        assert!(passing(tiberius::error::Error::Io {
            kind: std::io::ErrorKind::ConnectionRefused,
            message: "connection refused".into(),
        }));
        assert!(passing(tiberius::error::Error::Io {
            kind: std::io::ErrorKind::ConnectionReset,
            message: "reset by peer".into(),
        }));
        assert!(passing(tiberius::error::Error::Routing {
            host: "replica".into(),
            port: 1433,
        }));
        // A refused login or a bad value is not.
        assert!(!passing(tiberius::error::Error::Protocol("unexpected token".into())));
        assert!(!passing(tiberius::error::Error::Conversion("bad".into())));
    }

    #[test]
    fn positions_show_the_oldest_table_and_sort_at_the_sinks() {
        let at = |lsn: &str| TableState {
            instance: "dbo_t".into(),
            position: Position {
                lsn: Lsn::parse(lsn).unwrap(),
                rows: 0,
            },
        };
        let positions = Positions(
            [
                ("a".to_owned(), at("0x0000002A000001F00003")),
                ("b".to_owned(), at("0x00000029000001F00003")),
            ]
            .into(),
        );
        assert_eq!(positions.to_string(), "0x00000029000001F00003");
        exhub_connect::mapping::order_key_sorts(
            "mssql",
            &[
                "0x00000009000000000001",
                "0x0000000A000000000000",
                "0x00000100000000000000",
            ],
        )
        .unwrap();
    }
}
