//! The one loop that drives every source adapter ([`run`]): retries with backoff from the
//! checkpoint after a passing failure, the snapshot state machine (modes `initial`, `never`,
//! `always`; chunked, resumable, with a progress bar), the checkpoint policy (a position is
//! saved only once every row before it is confirmed by the broker) and the outbox. An adapter
//! only reads its database: see [`Source`] and its delivery contract.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use exhub_schemas::Op;
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::mapping::{RowPosition, SnapshotMode};
use crate::outbox::{FLUSH_DOCS, Outbox};
use crate::source::{KeyValue, Position, Source, SourceError, SourceResult, TableInfo};
use crate::status::{Live, LogHealth, Role, SnapshotProgress, State};
use crate::{Cell, CheckpointError, CheckpointStore, Publisher};

/// Rows per snapshot chunk (one read, one publish, one checkpoint).
pub const CHUNK_ROWS: usize = 2000;
/// A confirmed position is saved at most this often while rows flow (and on the way out): after
/// a crash at most this much is read again, and the checkpoint file is not synced per flush.
const SAVE_EVERY: Duration = Duration::from_secs(1);

/// A source's checkpoint file.
#[derive(Debug, Serialize, Deserialize)]
#[serde(bound(serialize = "P: Position", deserialize = "P: Position"))]
pub struct Checkpoint<P> {
    /// Where streaming resumes: every row before it is confirmed. (Older files named it
    /// `binlog`, `lsn` or `tables`.)
    #[serde(default, alias = "binlog", alias = "lsn", alias = "tables")]
    pub position: Option<P>,
    /// A snapshot in progress.
    #[serde(default)]
    pub snapshot: Option<SnapshotState<P>>,
    /// What the adapter keeps beside (PostgreSQL: its slot's last reading).
    #[serde(flatten)]
    pub notes: BTreeMap<String, serde_json::Value>,
}

impl<P> Default for Checkpoint<P> {
    fn default() -> Self {
        Checkpoint {
            position: None,
            snapshot: None,
            notes: BTreeMap::new(),
        }
    }
}

/// How far a snapshot got.
#[derive(Debug, Serialize, Deserialize)]
#[serde(bound(serialize = "P: Position", deserialize = "P: Position"))]
pub struct SnapshotState<P> {
    /// The position its rows are labelled with and streaming starts from once it is done
    /// (the first attempt's).
    pub start: P,
    /// Attempts resumed so far (a resumed snapshot reads new data, so its documents get new
    /// ids).
    #[serde(default)]
    pub attempt: u32,
    /// When the first attempt started (the snapshot rows' commit time), Unix micros (a
    /// checkpoint written before it was kept: when it is read).
    #[serde(default = "exhub_schemas::time::unix_micros_now")]
    pub started_micros: i64,
    /// Tables finished.
    #[serde(default)]
    pub done: Vec<String>,
    /// Per table, the key of the last row confirmed.
    #[serde(default)]
    pub after: BTreeMap<String, Vec<KeyValue>>,
}

/// Whether this attempt takes a snapshot: mode `initial` when nothing was streamed yet or a
/// snapshot is in progress, `always` every start, `never` never.
pub fn wants_snapshot(mode: SnapshotMode, has_position: bool, in_progress: bool) -> bool {
    match mode {
        SnapshotMode::Never => false,
        SnapshotMode::Initial => !has_position || in_progress,
        SnapshotMode::Always => true,
    }
}

/// The runner's side of a stream: rows go in through [`Emit::row`], resumable positions
/// through [`Emit::boundary`], and [`Emit::tick`] publishes and checkpoints by the policy.
pub struct Emit<'p, P> {
    out: Outbox<'p>,
    live: &'p Live,
    tables: Vec<TableInfo>,
    store: CheckpointStore,
    state: Checkpoint<P>,
    /// The newest position every earlier row of which was given.
    boundary: Option<P>,
    /// The newest boundary whose rows are all confirmed.
    confirmed: Option<P>,
    saved_at: Instant,
    dirty: bool,
}

impl<'p, P: Position> Emit<'p, P> {
    fn new(
        out: Outbox<'p>,
        live: &'p Live,
        tables: Vec<TableInfo>,
        store: CheckpointStore,
        state: Checkpoint<P>,
    ) -> Self {
        let confirmed = state.position.clone();
        Emit {
            out,
            live,
            tables,
            store,
            state,
            boundary: confirmed.clone(),
            confirmed,
            saved_at: Instant::now(),
            dirty: false,
        }
    }

    /// Maps one row of table `table` (an index into the mapped tables) and queues its
    /// document; `cell` gives a column's value by name.
    pub fn row(&mut self, table: usize, op: Op, cell: impl FnMut(&str) -> Option<Cell>, position: &RowPosition) {
        if let Some(t) = self.tables.get(table) {
            self.out.row(&t.mapper, op, cell, position);
            self.live.read_change(position.committed_micros);
        }
    }

    /// Every row before `position` was given: a reader may resume there.
    pub fn boundary(&mut self, position: P) {
        self.boundary = Some(position);
    }

    /// How long the stream may wait for its next change before [`Emit::tick`] is due (the
    /// oldest queued document's linger), if anything is queued.
    pub fn linger(&self) -> Option<Duration> {
        self.out.linger_left()
    }

    /// Documents queued and not yet published.
    pub fn pending(&self) -> usize {
        self.out.pending()
    }

    /// Keeps `value` in the checkpoint under `key` (saved with the next checkpoint).
    pub fn note(&mut self, key: &str, value: serde_json::Value) {
        self.state.notes.insert(key.to_owned(), value);
        self.dirty = true;
    }

    /// The change log's health on the server, for the heartbeat ([`crate::status`]).
    pub fn log_health(&mut self, health: LogHealth) {
        self.live.source(|f| f.log = Some(health));
    }

    /// The checkpoint file.
    pub fn checkpoint_path(&self) -> &std::path::Path {
        self.store.path()
    }

    /// Publishes when enough is queued or the oldest document lingered long enough; once
    /// nothing is pending, the last boundary is confirmed — returned when it is new, for a
    /// source that tells its server (PostgreSQL confirms its slot) — and saved at most once a
    /// second.
    pub async fn tick(&mut self, cancel: &CancellationToken) -> Result<Option<P>, EmitError> {
        if self.out.pending() >= FLUSH_DOCS || self.out.due() {
            self.out.flush(cancel).await?;
        }
        Ok(self.settle(false)?)
    }

    /// The stream has nothing more to read right now: publishes what is queued at once (an
    /// idle source does not wait for the linger; a busy one, whose log has more ready, keeps
    /// filling its batches), then settles as [`Emit::tick`] does.
    pub async fn idle(&mut self, cancel: &CancellationToken) -> Result<Option<P>, EmitError> {
        self.out.flush(cancel).await?;
        self.live.set_caught_up(true);
        Ok(self.settle(false)?)
    }

    /// On the way out: publishes what it can, then saves the newest confirmed position and
    /// returns it. What could not be published stays pending, so the position stays before it
    /// and the next start reads it again.
    pub async fn finish(&mut self, cancel: &CancellationToken) -> Result<Option<P>, CheckpointError> {
        if let Err(e) = self.out.flush(cancel).await {
            tracing::info!(pending = self.out.pending(), error = %e, "stopping with documents unpublished; the next start reads them again");
        }
        self.settle(true)?;
        Ok(self.confirmed.clone())
    }

    fn settle(&mut self, force: bool) -> Result<Option<P>, CheckpointError> {
        let mut newly = None;
        if self.out.pending() == 0 && self.boundary != self.confirmed {
            self.confirmed = self.boundary.clone();
            newly = self.confirmed.clone();
            let position = self.confirmed.as_ref().map(ToString::to_string);
            self.live.source(|f| f.position = position);
        }
        let changed = self.dirty || self.state.position != self.confirmed;
        if changed && (force || self.saved_at.elapsed() >= SAVE_EVERY) {
            self.state.position = self.confirmed.clone();
            self.store.save(&self.state)?;
            self.saved_at = Instant::now();
            self.dirty = false;
        }
        Ok(newly)
    }
}

/// Why publishing or checkpointing failed (a source's `?` turns it into its
/// [`SourceError`]).
#[derive(Debug, thiserror::Error)]
pub enum EmitError {
    /// RabbitMQ.
    #[error(transparent)]
    Amqp(#[from] crate::AmqpError),
    /// The checkpoint file.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
}

impl<E: crate::source::DriverError> From<EmitError> for SourceError<E> {
    fn from(e: EmitError) -> Self {
        match e {
            EmitError::Amqp(e) => SourceError::Amqp(e),
            EmitError::Checkpoint(e) => SourceError::Checkpoint(e),
        }
    }
}

/// Runs `source` until `cancel` or an error that retrying cannot fix. Passing failures (the
/// database or RabbitMQ restarting) are retried with backoff from the checkpoint.
/// Its heartbeat ([`crate::status`]) reports beside it, on a connection of its own, until it
/// stops.
pub async fn run<S: Source>(source: &S, cancel: &CancellationToken) -> SourceResult<(), S::Error> {
    let common = source.common();
    let live = Live::new(&common.name, Role::Source, S::KIND, common.heartbeat);
    let stopped = CancellationToken::new();
    let work = async {
        let result = run_loop(source, &live, cancel).await;
        stopped.cancel();
        result
    };
    let beat = crate::status::heartbeat(
        common.amqp.expose(),
        &common.topology,
        &common.amqp_user,
        common.heartbeat,
        &live,
        &stopped,
    );
    tokio::join!(work, beat).0
}

async fn run_loop<S: Source>(source: &S, live: &Live, cancel: &CancellationToken) -> SourceResult<(), S::Error> {
    let common = source.common();
    let mut retry = common.retry();
    loop {
        let result = run_once(source, live, retry.publisher(), cancel).await;
        if let Err(e) = &result
            && e.is_passing()
        {
            live.state(State::Retrying, Some(e.to_string()));
        }
        if !retry.again(&common.name, result, cancel).await? {
            tracing::info!(source = %common.name, "source stopped cleanly");
            return Ok(());
        }
    }
}

async fn run_once<S: Source>(
    source: &S,
    live: &Live,
    publisher: &mut Publisher,
    cancel: &CancellationToken,
) -> SourceResult<(), S::Error> {
    let common = source.common();
    let store = CheckpointStore::new(common.checkpoint.clone());
    let mut state: Checkpoint<S::Position> = store.load()?.unwrap_or_default();
    let snapshot = wants_snapshot(common.snapshot, state.position.is_some(), state.snapshot.is_some());
    let opened = source.open(state.position.as_ref(), snapshot).await?;
    if opened.log_created
        && let Some(snap) = state.snapshot.take()
    {
        tracing::warn!(source = %common.name, start = %snap.start, "the change log was created anew: the snapshot in progress starts over");
    }
    let mut session = opened.session;
    let out = Outbox::new(common.identity(S::KIND, &opened.db), publisher);
    if snapshot {
        let resume = state.snapshot.as_ref().map(|s| s.start.clone());
        let start = source.begin_snapshot(&mut session, resume.as_ref()).await?;
        match state.snapshot.as_mut() {
            Some(snap) => {
                snap.attempt += 1;
                snap.start = start;
            }
            None => {
                state.snapshot = Some(SnapshotState {
                    start,
                    attempt: 0,
                    started_micros: exhub_schemas::time::unix_micros_now(),
                    done: Vec::new(),
                    after: BTreeMap::new(),
                });
            }
        }
        store.save(&state)?;
    }
    let mut emit = Emit::new(out, live, opened.tables, store, state);
    if snapshot {
        live.state(State::Snapshot, None);
        if !snapshot_tables(source, &mut session, &mut emit, cancel).await? {
            return Ok(());
        }
        source.end_snapshot(&mut session).await?;
        if let Some(snap) = emit.state.snapshot.take() {
            tracing::info!(source = %common.name, start = %snap.start, "snapshot complete; streaming");
            emit.state.position = Some(snap.start);
        }
    }
    let from = match emit.state.position.clone() {
        Some(p) => p,
        None => source.current(&mut session).await?,
    };
    emit.state.position = Some(from.clone());
    emit.store.save(&emit.state)?;
    emit.boundary = Some(from.clone());
    emit.confirmed = Some(from.clone());
    live.source(|f| {
        f.snapshot = None;
        f.position = Some(from.to_string());
    });
    live.state(State::Running, None);
    source.stream(session, from, &mut emit, cancel).await
}

/// Reads every table not yet done in key-ordered chunks, publishing each chunk and
/// checkpointing after its confirm; `false` when cancelled before the end.
async fn snapshot_tables<S: Source>(
    source: &S,
    session: &mut S::Session,
    emit: &mut Emit<'_, S::Position>,
    cancel: &CancellationToken,
) -> SourceResult<bool, S::Error> {
    let name = &source.common().name;
    let tables_total = emit.tables.len();
    for (i, table) in emit.tables.clone().iter().enumerate() {
        let t = table.mapper.table().to_owned();
        let Some(snap) = emit.state.snapshot.as_ref() else {
            break;
        };
        if snap.done.contains(&t) {
            continue;
        }
        let mut after = snap.after.get(&t).cloned();
        let start = snap.start.to_string();
        let label = format!("snapshot:{start}:{}", snap.attempt);
        let committed_micros = snap.started_micros;
        tracing::info!(source = %name, table = %t, estimated_rows = table.estimated_rows, resume = after.is_some(), start = %start, "snapshot of table started");
        let bar = crate::outbox::snapshot_progress(table.estimated_rows, &t);
        let columns: Vec<&str> = table.mapper.columns().collect();
        let (started, mut count) = (Instant::now(), 0u64);
        let tables_done = emit.state.snapshot.as_ref().map_or(0, |s| s.done.len());
        let progress = |rows_done| SnapshotProgress {
            table: t.clone(),
            rows_done,
            rows_total: table.estimated_rows,
            tables_done,
            tables_total,
        };
        emit.live.source(|f| f.snapshot = Some(progress(0)));
        loop {
            if cancel.is_cancelled() {
                return Ok(false);
            }
            let rows = source.snapshot_chunk(session, i, after.as_deref(), CHUNK_ROWS).await?;
            let n = rows.len();
            for row in rows {
                let key = row
                    .key
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("\u{1f}");
                let position = RowPosition {
                    position: start.clone(),
                    tx: format!("{label}:{key}"),
                    seq: 0,
                    committed_micros,
                };
                let mut cells: Vec<Option<Cell>> = row.cells.into_iter().map(Some).collect();
                let cell = |c: &str| {
                    columns
                        .iter()
                        .position(|n| *n == c)
                        .and_then(|i| cells.get_mut(i)?.take())
                };
                emit.out.row(&table.mapper, Op::Snapshot, cell, &position);
                after = Some(row.key);
            }
            emit.out.flush(cancel).await?;
            if let (Some(snap), Some(key)) = (emit.state.snapshot.as_mut(), &after) {
                snap.after.insert(t.clone(), key.clone());
            }
            emit.store.save(&emit.state)?;
            count += n as u64;
            bar.inc(n as u64);
            emit.live.source(|f| f.snapshot = Some(progress(count)));
            if n < CHUNK_ROWS {
                break;
            }
        }
        bar.finish_and_clear();
        if let Some(snap) = emit.state.snapshot.as_mut() {
            snap.done.push(t.clone());
            snap.after.remove(&t);
        }
        emit.store.save(&emit.state)?;
        tracing::info!(source = %name, table = %t, rows = count, seconds = started.elapsed().as_secs_f64(), "snapshot of table done");
    }
    Ok(true)
}

/// A boxed error that says what failed.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Any source, as the `exhub` binary holds it (whatever its kind).
pub trait AnySource: Send + Sync {
    /// The source's name.
    fn name(&self) -> &str;
    /// Forgets the checkpoint: the next start takes a new snapshot (mode `initial`) or starts
    /// from the log's current position (mode `never`).
    fn reset(&self) -> Result<(), CheckpointError>;
    /// Runs until `cancel` (see [`run`]).
    fn run<'a>(&'a self, cancel: &'a CancellationToken) -> BoxFuture<'a, Result<(), BoxError>>;
    /// Releases what the source holds on the server, then forgets the checkpoint.
    fn retire(&self) -> BoxFuture<'_, Result<(), BoxError>>;
}

impl<S: Source> AnySource for S {
    fn name(&self) -> &str {
        &self.common().name
    }

    fn reset(&self) -> Result<(), CheckpointError> {
        self.common().forget_checkpoint()
    }

    fn run<'a>(&'a self, cancel: &'a CancellationToken) -> BoxFuture<'a, Result<(), BoxError>> {
        Box::pin(async move { run(self, cancel).await.map_err(BoxError::from) })
    }

    fn retire(&self) -> BoxFuture<'_, Result<(), BoxError>> {
        Box::pin(async move { Source::retire(self).await.map_err(BoxError::from) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_modes() {
        assert!(wants_snapshot(SnapshotMode::Initial, false, false));
        assert!(!wants_snapshot(SnapshotMode::Initial, true, false));
        assert!(wants_snapshot(SnapshotMode::Initial, true, true));
        assert!(wants_snapshot(SnapshotMode::Always, true, false));
        assert!(!wants_snapshot(SnapshotMode::Never, false, true));
    }

    #[test]
    fn checkpoints_of_earlier_versions_still_load() {
        let mysql: Checkpoint<serde_json::Value> =
            serde_json::from_str(r#"{"binlog":{"file":"mysql-bin.000003","pos":81233},"snapshot":null}"#).unwrap();
        assert_eq!(mysql.position.unwrap()["pos"], 81233);
        let pg: Checkpoint<String> =
            serde_json::from_str(r#"{"lsn":"0/16B3748","snapshot":null,"slot":{"retained_bytes":5}}"#).unwrap();
        assert_eq!(pg.position.as_deref(), Some("0/16B3748"));
        assert_eq!(pg.notes["slot"]["retained_bytes"], 5);
        let text = serde_json::to_string(&pg).unwrap();
        assert!(
            text.contains(r#""position":"0/16B3748""#) && text.contains(r#""slot""#),
            "{text}"
        );
    }

    #[test]
    fn an_earlier_mysql_checkpoint_mid_snapshot_resumes() {
        let text = r#"{"binlog":null,"snapshot":{"start":{"file":"mysql-bin.000003","pos":81233},"done":["a"],
            "after":{"nsr_djxx":[{"Int":5},{"Text":"A-1"}]}}}"#;
        let state: Checkpoint<serde_json::Value> = serde_json::from_str(text).unwrap();
        let snap = state.snapshot.unwrap();
        assert_eq!(snap.after["nsr_djxx"], [KeyValue::Int(5), KeyValue::Text("A-1".into())]);
        assert_eq!(snap.attempt, 0);
        assert!(snap.started_micros > 1_700_000_000_000_000, "not 1970");
        assert_eq!(state.position, None);
    }

    #[test]
    fn snapshot_keys_keep_their_type() {
        let keys: Vec<KeyValue> = serde_json::from_str(r#"[5, 18446744073709551615, "A-1"]"#).unwrap();
        assert_eq!(
            keys,
            [KeyValue::Int(5), KeyValue::UInt(u64::MAX), KeyValue::Text("A-1".into())]
        );
    }
}
