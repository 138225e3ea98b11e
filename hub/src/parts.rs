//! The parts of the exchange as their heartbeats tell it: every source and database sink of
//! routes.toml reports its status ([`exhub_connect::status`]) to the status exchange; each hub
//! process reads every heartbeat on a queue of its own ([`listen`]) and keeps the latest per
//! part ([`Parts`]), with when it came. A part that falls silent (no heartbeat for three of its
//! intervals) is shown down. The figures become gauges ([`crate::metrics`]) and readings for
//! the early warning ([`crate::alerts`]).
//!
//! A heartbeat is taken only from its part's own org: the AMQP user RabbitMQ verified must be
//! the org's of the source or subscriber it names, and it must be small and well formed;
//! anything else is counted (`exhub_status_refused_total`) and dropped — a heartbeat is a
//! reading, and no one else's may stand in for it. A part never heard from since this process
//! started is `unknown`, not down: the hub cannot tell a part that died from one not started.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use exhub_connect::amqp::{self, AmqpError, Backoff};
use exhub_connect::status::{self, Role, State, Status};
use exhub_connect::{Topology, wire};
use futures_util::StreamExt as _;
use lapin::types::{AMQPValue, FieldTable};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::alerts::{Metric, Readings};
use crate::config::Config;
use crate::metrics::{FloatGauge, Metrics, PartLabels, ReasonLabels, ReceiptLabels, SourceLabels, SubscriberLabels};

/// A part is down after this many heartbeats missed.
pub const MISSED: u32 = 3;
/// How often the gauges and readings are brought up to date.
pub const EVERY: Duration = Duration::from_secs(1);

/// Why a heartbeat was dropped (`exhub_status_refused_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Over [`status::MAX_BYTES`].
    TooLarge,
    /// Not JSON of a status.
    Malformed,
    /// No `user_id`, or not an org's user.
    Unauthenticated,
    /// The part it names is not in routes.toml, or belongs to another org.
    Unauthorized,
}

impl Refusal {
    /// The label.
    pub fn code(self) -> &'static str {
        match self {
            Refusal::TooLarge => "too_large",
            Refusal::Malformed => "malformed",
            Refusal::Unauthenticated => "unauthenticated",
            Refusal::Unauthorized => "unauthorized",
        }
    }
}

/// A part as the console and the gauges show it.
#[derive(Debug, Clone, Serialize)]
pub struct PartView {
    /// `source` or `sink`.
    pub role: Role,
    /// Its name in routes.toml.
    pub name: String,
    /// Its org.
    pub org: String,
    /// `up`, `down`, `stopped` or `unknown` (never heard from since this hub started).
    pub health: &'static str,
    /// Seconds since its last heartbeat (none when never heard from).
    pub silent_seconds: Option<f64>,
    /// Its last heartbeat.
    pub status: Option<Status>,
}

struct Seen {
    status: Status,
    at: Instant,
}

/// The latest status of every part.
pub struct Parts {
    /// (role, name) → org: the parts of routes.toml, the only ones taken.
    known: HashMap<(Role, String), String>,
    orgs_by_user: HashMap<String, String>,
    seen: Mutex<HashMap<(Role, String), Seen>>,
    metrics: Arc<Metrics>,
    readings: Arc<Readings>,
}

impl Parts {
    /// The parts of `config`: its sources and its database subscribers.
    pub fn new(config: &Config, metrics: Arc<Metrics>, readings: Arc<Readings>) -> Parts {
        let sources = config
            .sources
            .iter()
            .map(|s| ((Role::Source, s.name.clone()), s.org.clone()));
        let sinks = config
            .subscribers
            .iter()
            .filter(|s| s.is_database())
            .map(|s| ((Role::Sink, s.name.clone()), s.org.clone()));
        Parts {
            known: sources.chain(sinks).collect(),
            orgs_by_user: config.orgs_by_user(),
            seen: Mutex::new(HashMap::new()),
            metrics,
            readings,
        }
    }

    /// Takes one heartbeat published by AMQP user `user` (as RabbitMQ verified it).
    pub fn record(&self, user: Option<&str>, body: &[u8]) -> Result<(), Refusal> {
        let result = self.check(user, body).map(|status| {
            let key = (status.role, status.part.clone());
            self.lock().insert(
                key,
                Seen {
                    status,
                    at: Instant::now(),
                },
            );
        });
        if let Err(r) = result {
            let labels = ReasonLabels {
                reason: r.code().to_owned(),
            };
            self.metrics.status_refused.get_or_create(&labels).inc();
        }
        result
    }

    fn check(&self, user: Option<&str>, body: &[u8]) -> Result<Status, Refusal> {
        if body.len() > status::MAX_BYTES {
            return Err(Refusal::TooLarge);
        }
        let org = user
            .and_then(|u| self.orgs_by_user.get(u))
            .ok_or(Refusal::Unauthenticated)?;
        let status: Status = serde_json::from_slice(body).map_err(|_| Refusal::Malformed)?;
        match self.known.get(&(status.role, status.part.clone())) {
            Some(owner) if owner == org => Ok(status),
            _ => Err(Refusal::Unauthorized),
        }
    }

    /// Every part of routes.toml, sources first, by name.
    pub fn view(&self) -> Vec<PartView> {
        let seen = self.lock();
        let mut out: Vec<PartView> = self
            .known
            .iter()
            .map(|((role, name), org)| {
                let s = seen.get(&(*role, name.clone()));
                let silent = s.map(|s| s.at.elapsed());
                let health = match s {
                    None => "unknown",
                    Some(s) if s.status.state == State::Stopped => "stopped",
                    Some(s) if s.at.elapsed() > window(&s.status) => "down",
                    Some(_) => "up",
                };
                PartView {
                    role: *role,
                    name: name.clone(),
                    org: org.clone(),
                    health,
                    silent_seconds: silent.map(|d| d.as_secs_f64()),
                    status: s.map(|s| s.status.clone()),
                }
            })
            .collect();
        out.sort_by(|a, b| (a.role, &a.name).cmp(&(b.role, &b.name)));
        out
    }

    /// Brings the gauges and the readings up to date.
    pub fn refresh(&self) {
        let m = &self.metrics;
        for p in self.view() {
            let labels = PartLabels {
                role: p.role.as_str().to_owned(),
                part: p.name.clone(),
            };
            let scope = format!("{}:{}", p.role.as_str(), p.name);
            let up = i64::from(p.health == "up");
            m.part_up.get_or_create(&labels).set(up);
            match p.silent_seconds {
                Some(s) => {
                    m.part_silent.get_or_create(&labels).set(s);
                    self.readings.set(Metric::PartSilentSeconds, &scope, s);
                }
                None => {
                    m.part_silent.remove(&labels);
                    self.readings.remove(Metric::PartSilentSeconds, &scope);
                }
            }
            let Some(status) = p.status else { continue };
            if let Some(f) = &status.source {
                self.source_figures(&p.name, &scope, f);
            }
            if let Some(f) = &status.sink {
                let outcome = |o: &str| ReceiptLabels {
                    subscriber: p.name.clone(),
                    outcome: o.to_owned(),
                };
                m.sink_documents
                    .get_or_create(&outcome("applied"))
                    .set(i64::try_from(f.applied).unwrap_or(i64::MAX));
                m.sink_documents
                    .get_or_create(&outcome("refused"))
                    .set(i64::try_from(f.refused).unwrap_or(i64::MAX));
                if let Some(ms) = f.applied_after_ms {
                    m.sink_applied_after
                        .get_or_create(&SubscriberLabels {
                            subscriber: p.name.clone(),
                        })
                        .set(ms as f64 / 1000.0);
                }
            }
        }
    }

    fn source_figures(&self, name: &str, scope: &str, f: &status::SourceFigures) {
        let m = &self.metrics;
        let labels = SourceLabels {
            source: name.to_owned(),
        };
        let gauge = |family: &prometheus_client::metrics::family::Family<SourceLabels, FloatGauge>,
                     metric: Option<Metric>,
                     value: Option<f64>| {
            match value {
                Some(v) => {
                    family.get_or_create(&labels).set(v);
                    if let Some(metric) = metric {
                        self.readings.set(metric, scope, v);
                    }
                }
                None => {
                    family.remove(&labels);
                    if let Some(metric) = metric {
                        self.readings.remove(metric, scope);
                    }
                }
            }
        };
        let log = f.log.as_ref();
        gauge(
            &m.source_lag,
            Some(Metric::SourceLagSeconds),
            f.lag_ms.map(|ms| ms as f64 / 1000.0),
        );
        gauge(&m.source_events_per_second, None, Some(f.events_per_second));
        gauge(
            &m.log_retained,
            Some(Metric::LogRetainedBytes),
            log.and_then(|l| l.retained_bytes).map(|b| b as f64),
        );
        gauge(
            &m.log_headroom_seconds,
            Some(Metric::LogHeadroomSeconds),
            log.and_then(|l| l.headroom_seconds).map(|s| s as f64),
        );
        gauge(
            &m.log_headroom_bytes,
            Some(Metric::LogHeadroomBytes),
            log.and_then(|l| l.headroom_bytes).map(|b| b as f64),
        );
        let snap = f.snapshot.as_ref();
        gauge(&m.snapshot_rows_done, None, snap.map(|s| s.rows_done as f64));
        gauge(&m.snapshot_rows_total, None, snap.map(|s| s.rows_total as f64));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(Role, String), Seen>> {
        self.seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// How long a part may be silent before it is down: [`MISSED`] of its intervals.
fn window(status: &Status) -> Duration {
    Duration::from_millis(status.every_ms.clamp(100, 3_600_000)) * MISSED
}

/// Reads every heartbeat into `parts` until `shutdown`, on a connection and a queue of its own
/// (exclusive, bounded, each message expiring after a minute), bringing the gauges up to date
/// every [`EVERY`]. A lost connection is logged once and connected again with backoff.
pub async fn listen(url: String, topology: Topology, parts: Arc<Parts>, shutdown: CancellationToken) {
    let name = format!("exhub-hub-{}-status", std::process::id());
    let mut backoff = Backoff::default();
    let mut failing = false;
    loop {
        match listen_once(&url, &name, &topology, &parts, &shutdown, &mut backoff).await {
            Ok(()) => return,
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "heartbeats cannot be read; parts will show as silent until they can");
                    failing = true;
                }
            }
        }
        if backoff.wait(&shutdown).await.is_err() {
            return;
        }
    }
}

/// Why the heartbeats stopped coming.
#[derive(Debug, thiserror::Error)]
enum ListenError {
    #[error(transparent)]
    Amqp(#[from] AmqpError),
    #[error("the broker ended the status queue's consumer")]
    Closed,
}

async fn listen_once(
    url: &str,
    name: &str,
    topology: &Topology,
    parts: &Parts,
    shutdown: &CancellationToken,
    backoff: &mut Backoff,
) -> Result<(), ListenError> {
    let conn = amqp::connect(url, name).await?;
    let channel = conn.create_channel().await.map_err(AmqpError::from)?;
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongLongInt(10_000));
    args.insert("x-max-length-bytes".into(), AMQPValue::LongLongInt(16 << 20));
    args.insert("x-message-ttl".into(), AMQPValue::LongLongInt(60_000));
    let mut consumer = exhub_connect::consumer::tap(&channel, &topology.status_exchange(), "", args, name).await?;
    *backoff = Backoff::default();
    let mut ticks = tokio::time::interval(EVERY);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => {
                let _ = conn.close(200, "shutdown".into()).await;
                return Ok(());
            }
            _ = ticks.tick() => parts.refresh(),
            d = consumer.next() => match d {
                Some(Ok(d)) => {
                    let user = d.properties.user_id().as_ref().map(|u| u.as_str());
                    if let Err(r) = parts.record(user, &d.data) {
                        tracing::debug!(user = %wire::excerpt(user.unwrap_or(""), 64), reason = r.code(), "heartbeat refused");
                    }
                }
                Some(Err(e)) => return Err(AmqpError::from(e).into()),
                None => return Err(ListenError::Closed),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use exhub_connect::status::Live;

    fn parts() -> Parts {
        let text = r#"
            [hub]
            amqp = "amqp://hub@localhost/"
            archive = "sqlite://a.db"
            [[org]]
            id = "tax"
            name = "Tax"
            [[org]]
            id = "commerce"
            name = "Commerce"
            [[source]]
            name = "ctais"
            org = "tax"
            kind = "mysql"
            url = "mysql://x@localhost/db"
        "#;
        let file = crate::config::ConfigFile::parse(std::path::Path::new("routes.toml"), text.into());
        let config = file.config.expect("config");
        Parts::new(&config, Arc::new(Metrics::new()), Arc::new(Readings::default()))
    }

    fn heartbeat(part: &str) -> Vec<u8> {
        let live = Live::new(part, Role::Source, "mysql", Duration::from_secs(5));
        live.state(State::Running, None);
        let mut s = None;
        live.update(|st| s = Some(st.clone()));
        serde_json::to_vec(&s.unwrap()).unwrap()
    }

    #[test]
    fn a_part_is_taken_only_from_its_own_org() {
        let p = parts();
        assert_eq!(p.view()[0].health, "unknown");
        assert_eq!(
            p.record(Some("commerce"), &heartbeat("ctais")),
            Err(Refusal::Unauthorized)
        );
        assert_eq!(p.record(None, &heartbeat("ctais")), Err(Refusal::Unauthenticated));
        assert_eq!(
            p.record(Some("hub"), &heartbeat("ctais")),
            Err(Refusal::Unauthenticated)
        );
        assert_eq!(p.record(Some("tax"), &heartbeat("other")), Err(Refusal::Unauthorized));
        assert_eq!(p.record(Some("tax"), b"{not json"), Err(Refusal::Malformed));
        let big = vec![b' '; status::MAX_BYTES + 1];
        assert_eq!(p.record(Some("tax"), &big), Err(Refusal::TooLarge));
        assert_eq!(p.view()[0].health, "unknown");
        p.record(Some("tax"), &heartbeat("ctais")).unwrap();
        let v = p.view();
        assert_eq!((v[0].health, v[0].org.as_str()), ("up", "tax"));
        p.refresh();
        let text = p.metrics.encode().unwrap();
        assert!(
            text.contains(r#"exhub_part_up{role="source",part="ctais"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"exhub_status_refused_total{reason="unauthorized"} 2"#),
            "{text}"
        );
    }
}
