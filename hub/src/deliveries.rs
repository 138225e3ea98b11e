//! Copies not yet applied, as metrics: every [`EVERY`], for each database subscriber (those
//! send receipts), how many copies routed to it in the last [`WINDOW`] have no receipt yet, and
//! how old the oldest is: `exhub_unapplied_copies` and `exhub_oldest_unapplied_copy_seconds`.
//! A sink that stopped applying shows here before anywhere else. Read from the archive, the
//! one truth every hub process shares (a receipt may reach another hub than the one that sent
//! the copy), on a connection of its own, off the workers' hot path.

use std::sync::Arc;
use std::time::Duration;

use exhub_schemas::time::unix_micros_now;
use tokio_util::sync::CancellationToken;

use crate::alerts::{Metric, Readings};
use crate::archive::{Archive, ArchiveError};
use crate::metrics::{Metrics, Sampled, SubscriberLabels};

/// How often the archive is read.
pub const EVERY: Duration = Duration::from_secs(10);
/// How far back copies are looked at.
pub const WINDOW: Duration = Duration::from_secs(24 * 3600);

/// Reads the archive at `url` every [`EVERY`] until `shutdown`, for `subscribers`. A failure
/// (opening the archive included) is logged once, and the gauges are cleared until a round
/// succeeds.
pub async fn sample(
    url: String,
    subscribers: Vec<String>,
    metrics: Arc<Metrics>,
    readings: Arc<Readings>,
    shutdown: CancellationToken,
) {
    if subscribers.is_empty() {
        return;
    }
    let mut unapplied = Unapplied {
        url,
        archive: None,
        subscribers,
        metrics,
        readings,
    };
    crate::metrics::sample_every(EVERY, &mut unapplied, &shutdown).await;
    if let Some(a) = unapplied.archive {
        a.close().await;
    }
}

/// The copies without a receipt, read on an archive connection of their own.
struct Unapplied {
    url: String,
    archive: Option<Archive>,
    subscribers: Vec<String>,
    metrics: Arc<Metrics>,
    readings: Arc<Readings>,
}

impl Sampled for Unapplied {
    type Error = ArchiveError;
    const WHAT: &'static str = "copies not yet applied";

    async fn read(&mut self) -> Result<(), ArchiveError> {
        let a = match self.archive.take() {
            Some(a) => a,
            None => Archive::open(&self.url).await?,
        };
        let read = read(&a, &self.subscribers, &self.metrics, &self.readings).await;
        match read {
            Ok(()) => self.archive = Some(a),
            Err(_) => a.close().await,
        }
        read
    }

    fn clear(&self) {
        self.metrics.unapplied.clear();
        self.metrics.oldest_unapplied.clear();
        self.readings.clear(&[Metric::DeliveryOverdueSeconds]);
    }
}

/// One round: each subscriber's copies without a receipt into the gauges.
async fn read(
    archive: &Archive,
    subscribers: &[String],
    metrics: &Metrics,
    readings: &Readings,
) -> Result<(), ArchiveError> {
    let now = unix_micros_now();
    let since = now - i64::try_from(WINDOW.as_micros()).unwrap_or(i64::MAX);
    for s in subscribers {
        let (count, oldest) = archive.unapplied(s, since).await?;
        let labels = SubscriberLabels { subscriber: s.clone() };
        let age = oldest.map_or(0.0, |t| (now - t).max(0) as f64 / 1e6);
        metrics
            .unapplied
            .get_or_create(&labels)
            .set(i64::try_from(count).unwrap_or(i64::MAX));
        metrics.oldest_unapplied.get_or_create(&labels).set(age);
        readings.set(Metric::DeliveryOverdueSeconds, &format!("subscriber:{s}"), age);
    }
    Ok(())
}
