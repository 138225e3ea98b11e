//! Early warning (两级预警): what the hub watches ([`Metric`]: every reading is one metric about
//! one scope — a source, a sink, a subscriber or the hub), the thresholds (`[[alert]]` rules
//! over built-in defaults, so that every exchange is protected without configuring anything),
//! and the level of each alert: raised yellow (预警), escalated red (告警), lowered and cleared,
//! each change only after the value held for the rule's duration and, going down, only once the
//! value is clear of the threshold by a margin (hysteresis), so that a value hovering at a
//! threshold does not flap.
//!
//! The readings come from the heartbeats ([`crate::parts`]), the broker's queues
//! ([`crate::queues`]) and the archive ([`crate::deliveries`]) into one [`Readings`] board;
//! [`Alerts`] turns a board into transitions. Each transition becomes a `supervision.alert`
//! document that the hub publishes to its own ingress as the exchange's own org
//! ([`HUB_ORG`]): archived, audited and routed like any other document
//! ([`crate::supervise`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::archive::{Archive, ArchiveError};

/// The org id under which the hub publishes its own documents (`supervision.alert`); no
/// `[[org]]` may take it, and only the hub's AMQP user may send as it.
pub const HUB_ORG: &str = "exhub.hub";
/// The doc type of an alert's transitions.
pub const ALERT_DOC_TYPE: &str = "supervision.alert";
/// Default margin a value must clear a threshold by before an alert goes down (10%).
pub const HYSTERESIS: f64 = 0.1;
/// The least time between two changes of one alert: a value made to flap (a department's own
/// heartbeat figures, say) yields at most one change per this, not one per reading.
pub const MIN_BETWEEN: Duration = Duration::from_secs(10);

/// What is watched. Each has a scope kind, a unit, a direction and built-in thresholds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Metric {
    /// Seconds since a part's last heartbeat (scope `source:<name>` or `sink:<name>`).
    PartSilentSeconds,
    /// How far a source reads behind its database, seconds.
    SourceLagSeconds,
    /// Log the database keeps for a source, bytes (slot WAL, binlog).
    LogRetainedBytes,
    /// How long before the database expires the oldest change a source needs, seconds.
    LogHeadroomSeconds,
    /// How much more WAL before a PostgreSQL slot is lost, bytes.
    LogHeadroomBytes,
    /// Messages waiting in a subscriber's queue.
    QueueMessages,
    /// Messages in a dead-letter queue (scope `subscriber:<name>` or `hub`).
    DeadLetters,
    /// Age of the oldest copy routed to a database subscriber with no receipt, seconds.
    DeliveryOverdueSeconds,
}

impl Metric {
    /// Every metric.
    pub const ALL: [Metric; 8] = [
        Metric::PartSilentSeconds,
        Metric::SourceLagSeconds,
        Metric::LogRetainedBytes,
        Metric::LogHeadroomSeconds,
        Metric::LogHeadroomBytes,
        Metric::QueueMessages,
        Metric::DeadLetters,
        Metric::DeliveryOverdueSeconds,
    ];

    /// Its name in routes.toml and in `supervision.alert` documents.
    pub fn name(self) -> &'static str {
        match self {
            Metric::PartSilentSeconds => "part_silent_seconds",
            Metric::SourceLagSeconds => "source_lag_seconds",
            Metric::LogRetainedBytes => "log_retained_bytes",
            Metric::LogHeadroomSeconds => "log_headroom_seconds",
            Metric::LogHeadroomBytes => "log_headroom_bytes",
            Metric::QueueMessages => "queue_messages",
            Metric::DeadLetters => "dead_letters",
            Metric::DeliveryOverdueSeconds => "delivery_overdue_seconds",
        }
    }

    /// The metric named `name`.
    pub fn parse(name: &str) -> Option<Metric> {
        Metric::ALL.into_iter().find(|m| m.name() == name)
    }

    /// Whether a lower value is the worse one (headroom).
    pub fn lower_is_worse(self) -> bool {
        matches!(self, Metric::LogHeadroomSeconds | Metric::LogHeadroomBytes)
    }

    /// The scope kinds it is read for: `source`, `sink`, `subscriber`, `hub`.
    pub fn scope_kinds(self) -> &'static [&'static str] {
        match self {
            Metric::PartSilentSeconds => &["source", "sink"],
            Metric::SourceLagSeconds
            | Metric::LogRetainedBytes
            | Metric::LogHeadroomSeconds
            | Metric::LogHeadroomBytes => &["source"],
            Metric::QueueMessages | Metric::DeliveryOverdueSeconds => &["subscriber"],
            Metric::DeadLetters => &["subscriber", "hub"],
        }
    }

    /// The built-in rule: (yellow, red, for). Silence is counted in heartbeats: yellow after 3
    /// missed, red after 12.
    pub fn builtin(self, heartbeat: Duration) -> Thresholds {
        const GIB: f64 = (1u64 << 30) as f64;
        let (yellow, red, hold) = match self {
            Metric::PartSilentSeconds => (heartbeat.as_secs_f64() * 3.0, heartbeat.as_secs_f64() * 12.0, 0),
            Metric::SourceLagSeconds => (60.0, 300.0, 30),
            Metric::LogRetainedBytes => (GIB, 8.0 * GIB, 0),
            Metric::LogHeadroomSeconds => (6.0 * 3600.0, 3600.0, 0),
            Metric::LogHeadroomBytes => (GIB, GIB / 4.0, 0),
            Metric::QueueMessages => (10_000.0, 100_000.0, 60),
            Metric::DeadLetters => (1.0, 1000.0, 0),
            Metric::DeliveryOverdueSeconds => (300.0, 1800.0, 0),
        };
        Thresholds {
            yellow,
            red,
            hold: Duration::from_secs(hold),
            enabled: true,
            rule: None,
        }
    }
}

/// `[[alert]]`: thresholds for one metric, for every scope or one, over the built-in ones (a
/// field left out keeps the built-in value).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertConfig {
    /// A name for the rule, shown in its alerts.
    pub name: Option<String>,
    /// The metric ([`Metric::name`]).
    pub metric: String,
    /// `source:<name>`, `sink:<name>`, `subscriber:<name>` or `hub`; every scope when left out.
    pub scope: Option<String>,
    /// The yellow (预警) threshold.
    pub yellow: Option<f64>,
    /// The red (告警) threshold.
    pub red: Option<f64>,
    /// How long a value must hold before the level changes, seconds.
    pub for_seconds: Option<u64>,
    /// `false` switches the metric (or the scope) off.
    pub enabled: Option<bool>,
}

/// A rule in effect for one metric and scope.
#[derive(Debug, Clone, PartialEq)]
pub struct Thresholds {
    /// The yellow threshold.
    pub yellow: f64,
    /// The red threshold.
    pub red: f64,
    /// How long a value must hold before the level changes.
    pub hold: Duration,
    /// Whether the alert is watched at all.
    pub enabled: bool,
    /// The `[[alert]]` rule's name, if one applies.
    pub rule: Option<String>,
}

/// An alert's level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// Nothing wrong.
    Clear,
    /// 预警: attention.
    Yellow,
    /// 告警: act now.
    Red,
}

impl Level {
    /// The level named `text`.
    pub fn parse(text: &str) -> Option<Level> {
        match text {
            "clear" => Some(Level::Clear),
            "yellow" => Some(Level::Yellow),
            "red" => Some(Level::Red),
            _ => None,
        }
    }

    /// `clear`, `yellow`, `red`.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Clear => "clear",
            Level::Yellow => "yellow",
            Level::Red => "red",
        }
    }
}

impl Thresholds {
    /// The level `value` stands at, for an alert now at `current`: a level is kept until the
    /// value is clear of its threshold by [`HYSTERESIS`].
    pub fn level_of(&self, metric: Metric, value: f64, current: Level) -> Level {
        let lower = metric.lower_is_worse();
        let reached = |threshold: f64, level: Level| {
            let margin = threshold.abs() * HYSTERESIS;
            let t = match (current >= level, lower) {
                (false, _) => threshold,
                (true, false) => threshold - margin,
                (true, true) => threshold + margin,
            };
            if lower { value <= t } else { value >= t }
        };
        if reached(self.red, Level::Red) {
            Level::Red
        } else if reached(self.yellow, Level::Yellow) {
            Level::Yellow
        } else {
            Level::Clear
        }
    }

    /// The threshold of `level` (none for clear).
    pub fn of(&self, level: Level) -> Option<f64> {
        match level {
            Level::Clear => None,
            Level::Yellow => Some(self.yellow),
            Level::Red => Some(self.red),
        }
    }
}

/// The rules: built-ins for every metric, overridden by `[[alert]]` entries.
#[derive(Debug, Clone)]
pub struct Rules {
    heartbeat: Duration,
    /// (metric, scope or none) → the entry.
    entries: HashMap<(Metric, Option<String>), AlertConfig>,
}

impl Rules {
    /// The rules of routes.toml's `[[alert]]` entries (those whose metric is unknown are left
    /// out: `exhub check` reports them), with heartbeats every `heartbeat`.
    pub fn new(alerts: &[AlertConfig], heartbeat: Duration) -> Rules {
        let entries = alerts
            .iter()
            .filter_map(|a| Some(((Metric::parse(&a.metric)?, a.scope.clone()), a.clone())))
            .collect();
        Rules { heartbeat, entries }
    }

    /// The thresholds for `metric` on `scope`: the scope's entry over the metric's entry over
    /// the built-in rule, field by field.
    pub fn for_scope(&self, metric: Metric, scope: &str) -> Thresholds {
        let mut t = metric.builtin(self.heartbeat);
        for key in [(metric, None), (metric, Some(scope.to_owned()))] {
            if let Some(e) = self.entries.get(&key) {
                t.yellow = e.yellow.unwrap_or(t.yellow);
                t.red = e.red.unwrap_or(t.red);
                t.hold = e.for_seconds.map_or(t.hold, Duration::from_secs);
                t.enabled = e.enabled.unwrap_or(t.enabled);
                t.rule = e.name.clone().or(t.rule);
            }
        }
        t
    }
}

/// The latest value of every metric for every scope, as the samplers and the heartbeats last
/// set it.
#[derive(Debug, Default)]
pub struct Readings {
    values: Mutex<BTreeMap<(Metric, String), f64>>,
}

impl Readings {
    /// Sets `metric` for `scope`.
    pub fn set(&self, metric: Metric, scope: &str, value: f64) {
        self.lock().insert((metric, scope.to_owned()), value);
    }

    /// Forgets `metric` for `scope` (it cannot be read now: its alert stays as it is).
    pub fn remove(&self, metric: Metric, scope: &str) {
        self.lock().remove(&(metric, scope.to_owned()));
    }

    /// Forgets every reading of `metrics`.
    pub fn clear(&self, metrics: &[Metric]) {
        self.lock().retain(|(m, _), _| !metrics.contains(m));
    }

    /// Every reading now.
    pub fn all(&self) -> Vec<(Metric, String, f64)> {
        self.lock().iter().map(|((m, s), v)| (*m, s.clone(), *v)).collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<(Metric, String), f64>> {
        self.values.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// One change of an alert's level, as its `supervision.alert` document says it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AlertRow {
    /// `<metric>@<scope>`.
    pub alert: String,
    /// The metric.
    pub metric: String,
    /// What it is about.
    pub scope: String,
    /// `yellow`, `red` or `clear`.
    pub level: String,
    /// The level before.
    pub previous: String,
    /// The value that made it.
    pub value: String,
    /// The threshold crossed.
    pub threshold: Option<String>,
    /// When.
    pub at: String,
    /// For people.
    pub message: String,
}

/// The alert changes archived since `since` (Unix µs), oldest first, at most `limit` of them
/// (the hub's own documents only).
pub async fn history(archive: &Archive, since: i64, limit: usize) -> Result<Vec<AlertRow>, ArchiveError> {
    let q = crate::archive::Query {
        doc_type: Some(ALERT_DOC_TYPE.to_owned()),
        org: Some(HUB_ORG.to_owned()),
        since: Some(since),
        ..Default::default()
    };
    let mut out = Vec::new();
    let mut after: Option<(i64, String)> = None;
    while out.len() < limit {
        let page = archive
            .search(&q, after.as_ref().map(|(t, i)| (*t, i.as_str())), 1000)
            .await?;
        let Some(last) = page.last() else { break };
        after = Some((last.received_at, last.id.clone()));
        for r in page {
            let Ok(doc) = serde_json::from_slice::<serde_json::Value>(&r.raw) else {
                continue;
            };
            if let Ok(row) = serde_json::from_value::<AlertRow>(doc["body"].clone()) {
                out.push(row);
            }
        }
    }
    Ok(out)
}

/// The alerts whose latest change in `rows` (oldest first) left them open.
pub fn open(rows: Vec<AlertRow>) -> Vec<AlertRow> {
    let mut latest: BTreeMap<String, AlertRow> = BTreeMap::new();
    for row in rows {
        latest.insert(row.alert.clone(), row);
    }
    latest.into_values().filter(|r| r.level != "clear").collect()
}

/// A change of an alert's level.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    /// The metric.
    pub metric: Metric,
    /// What it is about.
    pub scope: String,
    /// The level before.
    pub from: Level,
    /// The level now.
    pub to: Level,
    /// The value that made it.
    pub value: f64,
    /// The threshold crossed: the new level's, or the old one's when going down.
    pub threshold: f64,
    /// The `[[alert]]` rule's name, if one applies.
    pub rule: Option<String>,
}

impl Transition {
    /// The alert's stable id: `<metric>@<scope>`.
    pub fn alert_id(&self) -> String {
        format!("{}@{}", self.metric.name(), self.scope)
    }

    /// One line for people.
    pub fn message(&self) -> String {
        let (m, s, v, t) = (self.metric.name(), &self.scope, self.value, self.threshold);
        match (self.from, self.to) {
            (_, Level::Clear) => format!("{s}: {m} is {v} again, clear of {t}: cleared"),
            (from, to) if to > from => {
                let side = if self.metric.lower_is_worse() {
                    "at or below"
                } else {
                    "at or above"
                };
                format!("{s}: {m} is {v}, {side} the {} threshold {t}", to.as_str())
            }
            (_, to) => format!("{s}: {m} is {v}, back to {} (below the red threshold {t})", to.as_str()),
        }
    }
}

/// Each alert's level, and the level it is heading for and since when.
#[derive(Debug, Default)]
pub struct Alerts {
    tracks: HashMap<(Metric, String), Track>,
}

#[derive(Debug)]
struct Track {
    level: Level,
    /// A level the value stands at, different from `level`, since when.
    heading: Option<(Level, Instant)>,
    /// When the level last changed.
    changed: Option<Instant>,
}

impl Alerts {
    /// Nothing raised yet.
    pub fn new() -> Alerts {
        Alerts::default()
    }

    /// Takes `level` as the alert's level (as the archive last said it), so that a new watcher
    /// goes on from there: what is still wrong is not raised again, what was put right is
    /// cleared.
    pub fn seed(&mut self, metric: Metric, scope: &str, level: Level) {
        self.tracks.insert(
            (metric, scope.to_owned()),
            Track {
                level,
                heading: None,
                changed: None,
            },
        );
    }

    /// Every alert not clear: (metric, scope, level).
    pub fn open(&self) -> Vec<(Metric, String, Level)> {
        let mut open: Vec<_> = self
            .tracks
            .iter()
            .filter(|(_, t)| t.level != Level::Clear)
            .map(|((m, s), t)| (*m, s.clone(), t.level))
            .collect();
        open.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        open
    }

    /// Weighs `readings` at `now` under `rules`; returns the alerts whose level changed. A
    /// level changes once the value stood at the new level (or anywhere on the same side of
    /// the old one) for the rule's hold. A disabled rule clears its alert at once.
    pub fn step(&mut self, readings: &[(Metric, String, f64)], rules: &Rules, now: Instant) -> Vec<Transition> {
        let mut out = Vec::new();
        for (metric, scope, value) in readings {
            let t = rules.for_scope(*metric, scope);
            let track = self.tracks.entry((*metric, scope.clone())).or_insert(Track {
                level: Level::Clear,
                heading: None,
                changed: None,
            });
            let target = if t.enabled {
                t.level_of(*metric, *value, track.level)
            } else {
                Level::Clear
            };
            if target == track.level {
                track.heading = None;
                continue;
            }
            let worse = target > track.level;
            let since = match track.heading {
                // Still on the same side of the current level: the clock keeps running.
                Some((heading, since)) if (heading > track.level) == worse => since,
                _ => now,
            };
            track.heading = Some((target, since));
            if t.enabled && now.duration_since(since) < t.hold {
                continue;
            }
            if track.changed.is_some_and(|c| now.duration_since(c) < MIN_BETWEEN) {
                continue;
            }
            let from = track.level;
            let threshold = t.of(if worse { target } else { from }).unwrap_or(0.0);
            track.level = target;
            track.heading = None;
            track.changed = Some(now);
            out.push(Transition {
                metric: *metric,
                scope: scope.clone(),
                from,
                to: target,
                value: *value,
                threshold,
                rule: t.rule.clone(),
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(metric: &str, scope: Option<&str>, yellow: f64, red: f64, hold: u64) -> AlertConfig {
        AlertConfig {
            name: Some("r".into()),
            metric: metric.into(),
            scope: scope.map(str::to_owned),
            yellow: Some(yellow),
            red: Some(red),
            for_seconds: Some(hold),
            enabled: None,
        }
    }

    #[test]
    fn a_queue_goes_yellow_then_red_then_clears_with_hysteresis() {
        let rules = Rules::new(&[rule("queue_messages", None, 10.0, 100.0, 0)], Duration::from_secs(5));
        let mut alerts = Alerts::new();
        let t0 = Instant::now();
        let q = |v: f64| vec![(Metric::QueueMessages, "subscriber:s".to_owned(), v)];
        let at = |n: u32| t0 + MIN_BETWEEN * n;
        assert!(alerts.step(&q(5.0), &rules, at(0)).is_empty());
        let up = alerts.step(&q(12.0), &rules, at(0));
        assert_eq!(
            (up[0].from, up[0].to, up[0].threshold),
            (Level::Clear, Level::Yellow, 10.0)
        );
        // Red at once is held back: one change per MIN_BETWEEN.
        assert!(alerts.step(&q(150.0), &rules, at(0)).is_empty());
        let up = alerts.step(&q(150.0), &rules, at(1));
        assert_eq!(
            (up[0].from, up[0].to, up[0].threshold),
            (Level::Yellow, Level::Red, 100.0)
        );
        // Within the margin (95 ≥ 100 − 10%): still red.
        assert!(alerts.step(&q(95.0), &rules, at(2)).is_empty());
        let down = alerts.step(&q(50.0), &rules, at(3));
        assert_eq!((down[0].from, down[0].to), (Level::Red, Level::Yellow));
        assert!(alerts.step(&q(9.5), &rules, at(4)).is_empty(), "9.5 ≥ 10 − 10%");
        let clear = alerts.step(&q(0.0), &rules, at(5));
        assert_eq!((clear[0].to, clear[0].threshold), (Level::Clear, 10.0));
        assert!(clear[0].message().contains("cleared"), "{}", clear[0].message());
        assert!(alerts.open().is_empty());
    }

    #[test]
    fn a_level_changes_only_after_the_value_held() {
        let rules = Rules::new(
            &[rule("source_lag_seconds", None, 60.0, 300.0, 30)],
            Duration::from_secs(5),
        );
        let mut alerts = Alerts::new();
        let t0 = Instant::now();
        let lag = |v: f64| vec![(Metric::SourceLagSeconds, "source:a".to_owned(), v)];
        assert!(alerts.step(&lag(400.0), &rules, t0).is_empty());
        // Dipping to yellow keeps the clock: it is still worse than clear.
        assert!(
            alerts
                .step(&lag(100.0), &rules, t0 + Duration::from_secs(20))
                .is_empty()
        );
        let up = alerts.step(&lag(100.0), &rules, t0 + Duration::from_secs(31));
        assert_eq!(up[0].to, Level::Yellow);
        // Back to normal briefly: no change; the clock restarts when it is bad again.
        assert!(alerts.step(&lag(0.0), &rules, t0 + Duration::from_secs(40)).is_empty());
        assert!(
            alerts
                .step(&lag(100.0), &rules, t0 + Duration::from_secs(41))
                .is_empty()
        );
        assert!(alerts.step(&lag(0.0), &rules, t0 + Duration::from_secs(42)).is_empty());
        let clear = alerts.step(&lag(0.0), &rules, t0 + Duration::from_secs(73));
        assert_eq!(clear[0].to, Level::Clear);
    }

    #[test]
    fn headroom_is_worse_when_lower_and_rules_override_field_by_field() {
        let rules = Rules::new(
            &[
                rule("log_headroom_seconds", None, 600.0, 60.0, 0),
                AlertConfig {
                    name: None,
                    metric: "log_headroom_seconds".into(),
                    scope: Some("source:b".into()),
                    yellow: None,
                    red: Some(10.0),
                    for_seconds: None,
                    enabled: None,
                },
                AlertConfig {
                    name: None,
                    metric: "dead_letters".into(),
                    scope: Some("hub".into()),
                    yellow: None,
                    red: None,
                    for_seconds: None,
                    enabled: Some(false),
                },
            ],
            Duration::from_secs(5),
        );
        let b = rules.for_scope(Metric::LogHeadroomSeconds, "source:b");
        assert_eq!((b.yellow, b.red, b.rule.as_deref()), (600.0, 10.0, Some("r")));
        let mut alerts = Alerts::new();
        let now = Instant::now();
        let h = |s: &str, v: f64| vec![(Metric::LogHeadroomSeconds, s.to_owned(), v)];
        assert_eq!(alerts.step(&h("source:a", 30.0), &rules, now)[0].to, Level::Red);
        assert_eq!(alerts.step(&h("source:b", 30.0), &rules, now)[0].to, Level::Yellow);
        assert!(alerts.step(&h("source:c", 7200.0), &rules, now).is_empty());
        let dl = vec![(Metric::DeadLetters, "hub".to_owned(), 5000.0)];
        assert!(alerts.step(&dl, &rules, now).is_empty(), "switched off");
        let silent = rules.for_scope(Metric::PartSilentSeconds, "sink:x");
        assert_eq!((silent.yellow, silent.red), (15.0, 60.0));
    }

    #[test]
    fn a_new_watcher_goes_on_from_the_levels_it_is_given() {
        let rules = Rules::new(&[rule("queue_messages", None, 10.0, 100.0, 0)], Duration::from_secs(5));
        let mut alerts = Alerts::new();
        alerts.seed(Metric::QueueMessages, "subscriber:a", Level::Red);
        alerts.seed(Metric::QueueMessages, "subscriber:b", Level::Yellow);
        let now = Instant::now();
        let readings = vec![
            (Metric::QueueMessages, "subscriber:a".to_owned(), 500.0),
            (Metric::QueueMessages, "subscriber:b".to_owned(), 0.0),
        ];
        let changes = alerts.step(&readings, &rules, now);
        assert_eq!(changes.len(), 1, "a is still red: not raised again; {changes:?}");
        assert_eq!(
            (changes[0].scope.as_str(), changes[0].to),
            ("subscriber:b", Level::Clear)
        );
        assert_eq!(Level::parse("red"), Some(Level::Red));
        assert_eq!(Level::parse("orange"), None);
    }

    #[test]
    fn every_metric_has_a_name_it_parses_back_from() {
        for m in Metric::ALL {
            assert_eq!(Metric::parse(m.name()), Some(m));
            let t = m.builtin(Duration::from_secs(5));
            assert!(
                if m.lower_is_worse() {
                    t.yellow > t.red
                } else {
                    t.yellow < t.red
                },
                "{m:?}"
            );
        }
    }
}
