//! Heartbeats (电子监察, "every part reports"): what a source or a sink says about itself to the
//! hub every few seconds ([`Status`]), kept up to date by the part as it works ([`Live`]) and
//! published by [`heartbeat`] to the status exchange (`<p>.status`, fanout), never to the
//! ingress: a heartbeat is a reading, not a record — transient, unconfirmed, expiring after three
//! intervals, and it must never queue behind documents or slow them. RabbitMQ stamps each with
//! the verified `user_id`; the hub accepts a part's status only from its own org's user.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Channel, Connection};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::Topology;
use crate::amqp::{self, AmqpError};
use crate::wire;

/// The AMQP `type` of a heartbeat.
pub const MESSAGE_TYPE: &str = "exhub.status";
/// The largest heartbeat the hub reads.
pub const MAX_BYTES: usize = 16 * 1024;
/// How often a part reports unless `[hub] heartbeat_seconds` says otherwise.
pub const DEFAULT_EVERY: Duration = Duration::from_secs(5);

/// Which side of the exchange a part is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// A `[[source]]`: reads a database's change log.
    Source,
    /// A `[[subscriber]]` with a database: applies copies.
    Sink,
}

impl Role {
    /// `source` or `sink`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Source => "source",
            Role::Sink => "sink",
        }
    }
}

/// What a part is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Connecting, checking its database.
    Starting,
    /// Reading a snapshot.
    Snapshot,
    /// Reading the change log (a source) or consuming (a sink).
    Running,
    /// Waiting to try again after a passing failure (`error` says which).
    Retrying,
    /// Stopped cleanly (its last heartbeat).
    Stopped,
}

/// One heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// The source's or subscriber's name in routes.toml.
    pub part: String,
    /// Which side it is on.
    pub role: Role,
    /// Its database kind (`mysql`, `postgres`, `mssql`).
    pub kind: String,
    /// What it is doing.
    pub state: State,
    /// How often it reports, ms (the hub counts it silent after a few missed).
    pub every_ms: u64,
    /// When this heartbeat was sent, Unix µs.
    pub sent_micros: i64,
    /// When the part started, Unix µs.
    pub started_micros: i64,
    /// The last passing failure while retrying, cut to a few hundred bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// A source's figures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<SourceFigures>,
    /// A sink's figures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sink: Option<SinkFigures>,
}

/// A source's figures.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SourceFigures {
    /// The position confirmed by the broker (where it would resume).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<String>,
    /// Commit time of the last change read, Unix µs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_commit_micros: Option<i64>,
    /// How far behind its database it reads, ms: 0 when its log had nothing more ready, else
    /// from the last change's commit to now; none during a snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_ms: Option<u64>,
    /// Changes read since it started.
    pub events: u64,
    /// Changes read per second over the last interval.
    pub events_per_second: f64,
    /// A snapshot in progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<SnapshotProgress>,
    /// The change log's health on the server, as last read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<LogHealth>,
}

/// A snapshot's progress.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SnapshotProgress {
    /// The table being read.
    pub table: String,
    /// Rows of it read so far.
    pub rows_done: u64,
    /// The server's estimate of its rows.
    pub rows_total: u64,
    /// Tables done of those mapped.
    pub tables_done: usize,
    /// Tables mapped.
    pub tables_total: usize,
}

/// What the database keeps for the source, and how long before it stops keeping it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LogHealth {
    /// Log the server keeps because of this source, bytes (PostgreSQL: WAL its slot retains;
    /// MySQL: binlog from its position to the end).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retained_bytes: Option<i64>,
    /// Log read but not confirmed to the server, bytes (PostgreSQL: current − confirmed flush
    /// LSN).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unconfirmed_bytes: Option<i64>,
    /// How much more the server keeps before the source's position is dropped, bytes
    /// (PostgreSQL with `max_slot_wal_keep_size`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headroom_bytes: Option<i64>,
    /// The server's retention of its log, seconds (MySQL's binlog expiry, SQL Server's CDC
    /// cleanup); the runner turns it into headroom with the source's lag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_seconds: Option<i64>,
    /// How long before the oldest change the source still needs is expired, seconds: the
    /// retention less the lag (conservative: a change is kept at least that long).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headroom_seconds: Option<i64>,
}

/// A sink's figures.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SinkFigures {
    /// Documents applied since it started (stale versions included: they are done).
    pub applied: u64,
    /// Documents the target refused (into the subscriber's DLQ).
    pub refused: u64,
    /// When it last applied a batch, Unix µs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_applied_micros: Option<i64>,
    /// From the newest document's `created_at` to its commit in the target, ms (last batch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_after_ms: Option<u64>,
}

/// A part's status as it works: updated by the part, read by [`heartbeat`].
#[derive(Debug)]
pub struct Live {
    status: Mutex<Status>,
    /// The source has read everything its log had ready (lag 0).
    caught_up: Mutex<bool>,
}

impl Live {
    /// A part that is starting.
    pub fn new(part: &str, role: Role, kind: &str, every: Duration) -> Live {
        let now = exhub_schemas::time::unix_micros_now();
        let status = Status {
            part: part.to_owned(),
            role,
            kind: kind.to_owned(),
            state: State::Starting,
            every_ms: u64::try_from(every.as_millis()).unwrap_or(u64::MAX),
            sent_micros: now,
            started_micros: now,
            error: None,
            source: (role == Role::Source).then(SourceFigures::default),
            sink: (role == Role::Sink).then(SinkFigures::default),
        };
        Live {
            status: Mutex::new(status),
            caught_up: Mutex::new(false),
        }
    }

    /// Changes the status under the lock (a poisoned lock is taken over: a status is a reading).
    pub fn update(&self, change: impl FnOnce(&mut Status)) {
        let mut s = self.status.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        change(&mut s);
    }

    /// A source's figures, changed under the lock.
    pub fn source(&self, change: impl FnOnce(&mut SourceFigures)) {
        self.update(|s| change(s.source.get_or_insert_with(SourceFigures::default)));
    }

    /// A sink's figures, changed under the lock.
    pub fn sink(&self, change: impl FnOnce(&mut SinkFigures)) {
        self.update(|s| change(s.sink.get_or_insert_with(SinkFigures::default)));
    }

    /// The part's state; `error` is kept only while retrying.
    pub fn state(&self, state: State, error: Option<String>) {
        let error = error.map(|e| wire::excerpt(&e, 300).into_owned());
        self.update(|s| {
            s.state = state;
            s.error = error;
        });
    }

    /// A source read a change committed at `committed_micros`.
    pub fn read_change(&self, committed_micros: i64) {
        self.set_caught_up(false);
        self.source(|f| {
            f.events += 1;
            f.last_commit_micros = Some(committed_micros);
        });
    }

    /// A source's log has nothing more ready (`true`), or has again (`false`).
    pub fn set_caught_up(&self, caught_up: bool) {
        *self.caught_up.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = caught_up;
    }

    /// What is sent now: the status with its lag, rate and headroom worked out, given the
    /// events counted at the previous heartbeat `before` (µs ago `elapsed`).
    fn snapshot(&self, before: &mut (u64, Instant)) -> Status {
        let caught_up = *self.caught_up.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = exhub_schemas::time::unix_micros_now();
        let mut s = self
            .status
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        s.sent_micros = now;
        if let Some(f) = s.source.as_mut() {
            let elapsed = before.1.elapsed().as_secs_f64();
            if elapsed > 0.0 {
                f.events_per_second = (f.events.saturating_sub(before.0)) as f64 / elapsed;
            }
            *before = (f.events, Instant::now());
            let lag_ms = match (s.state, caught_up, f.last_commit_micros) {
                (State::Snapshot, _, _) => None,
                (_, true, _) | (_, _, None) => Some(0),
                (_, false, Some(t)) => Some(u64::try_from((now - t).max(0) / 1000).unwrap_or(0)),
            };
            f.lag_ms = lag_ms;
            if let Some(log) = f.log.as_mut() {
                log.headroom_seconds = log
                    .retention_seconds
                    .map(|r| r - i64::try_from(lag_ms.unwrap_or(0) / 1000).unwrap_or(i64::MAX));
            }
        }
        s
    }
}

/// Publishes `live`'s status to the status exchange every `every` until `stop`, then once more
/// (its last word: stopped). On its own connection, named after the part; a failure is logged
/// once and the next beat connects again. A heartbeat is never worth holding a part up for.
pub async fn heartbeat(
    amqp_url: &str,
    topology: &Topology,
    user: &str,
    every: Duration,
    live: &Live,
    stop: &CancellationToken,
) {
    let (part, role) = {
        let s = live.status.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        (s.part.clone(), s.role)
    };
    let name = format!("exhub-{}-{part}-{}-status", role.as_str(), std::process::id());
    let mut beat = Beat {
        url: amqp_url,
        name,
        exchange: topology.status_exchange(),
        user,
        conn: None,
        failing: false,
    };
    let mut before = (0, Instant::now());
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = ticks.tick() => {}
        }
        let status = live.snapshot(&mut before);
        beat.send(&status, every).await;
    }
    live.state(State::Stopped, None);
    let status = live.snapshot(&mut before);
    let _ = tokio::time::timeout(Duration::from_secs(2), beat.send(&status, every)).await;
    if let Some((conn, _)) = beat.conn.take() {
        let _ = conn.close(200, "stopped".into()).await;
    }
}

/// A heartbeat's connection.
struct Beat<'a> {
    url: &'a str,
    name: String,
    exchange: String,
    user: &'a str,
    conn: Option<(Connection, Channel)>,
    failing: bool,
}

impl Beat<'_> {
    async fn send(&mut self, status: &Status, every: Duration) {
        match self.try_send(status, every).await {
            Ok(()) if self.failing => {
                tracing::info!(part = %status.part, "heartbeats are published again");
                self.failing = false;
            }
            Ok(()) => {}
            Err(e) => {
                self.conn = None;
                if !self.failing {
                    tracing::warn!(part = %status.part, error = %e, "heartbeat not published; the hub will show this part as silent until one is");
                    self.failing = true;
                }
            }
        }
    }

    async fn try_send(&mut self, status: &Status, every: Duration) -> Result<(), AmqpError> {
        let channel = match &self.conn {
            Some((c, ch)) if c.status().connected() && ch.status().connected() => ch.clone(),
            _ => {
                let conn = amqp::connect(self.url, &self.name).await?;
                let ch = conn.create_channel().await?;
                self.conn = Some((conn, ch.clone()));
                ch
            }
        };
        let body = serde_json::to_vec(status).unwrap_or_default();
        let expiration = (every.as_millis() * 3).to_string();
        let props = BasicProperties::default()
            .with_type(MESSAGE_TYPE.into())
            .with_content_type("application/json".into())
            .with_user_id(self.user.into())
            .with_expiration(expiration.into())
            .with_timestamp(u64::try_from(status.sent_micros / 1_000_000).unwrap_or(0))
            .with_delivery_mode(1);
        channel
            .basic_publish(
                self.exchange.as_str().into(),
                "".into(),
                BasicPublishOptions::default(),
                &body,
                props,
            )
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_is_zero_when_caught_up_and_grows_behind() {
        let live = Live::new("tax-ctais", Role::Source, "mysql", DEFAULT_EVERY);
        live.state(State::Running, None);
        let ten_s_ago = exhub_schemas::time::unix_micros_now() - 10_000_000;
        live.read_change(ten_s_ago);
        live.source(|f| {
            f.log = Some(LogHealth {
                retention_seconds: Some(3600),
                ..Default::default()
            })
        });
        let mut before = (0, Instant::now() - Duration::from_secs(1));
        let s = live.snapshot(&mut before);
        let f = s.source.unwrap();
        assert!((10_000..11_000).contains(&f.lag_ms.unwrap()), "{f:?}");
        assert_eq!(f.events, 1);
        assert!(f.events_per_second > 0.5 && f.events_per_second <= 1.0, "{f:?}");
        assert_eq!(f.log.unwrap().headroom_seconds, Some(3590));
        live.set_caught_up(true);
        let f = live.snapshot(&mut before).source.unwrap();
        assert_eq!(f.lag_ms, Some(0));
        live.state(State::Snapshot, None);
        assert_eq!(live.snapshot(&mut before).source.unwrap().lag_ms, None);
    }

    #[test]
    fn a_status_reads_back_and_an_error_is_cut() {
        let live = Live::new("archive", Role::Sink, "postgres", DEFAULT_EVERY);
        live.state(State::Retrying, Some("x".repeat(5000)));
        live.sink(|f| f.applied = 7);
        let s = live.snapshot(&mut (0, Instant::now()));
        assert!(s.error.as_ref().unwrap().len() <= 303, "{:?}", s.error);
        let text = serde_json::to_string(&s).unwrap();
        assert!(text.len() < MAX_BYTES);
        let back: Status = serde_json::from_str(&text).unwrap();
        assert_eq!(back, s);
        assert!(s.source.is_none());
        assert_eq!(back.sink.unwrap().applied, 7);
    }
}
