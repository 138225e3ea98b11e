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

use crate::archive::Archive;
use crate::metrics::{Metrics, SubscriberLabels};

/// How often the archive is read.
pub const EVERY: Duration = Duration::from_secs(10);
/// How far back copies are looked at.
pub const WINDOW: Duration = Duration::from_secs(24 * 3600);

/// Reads the archive at `url` every [`EVERY`] until `shutdown`, for `subscribers`. A failure
/// is logged once, and the gauges are cleared until a round succeeds.
pub async fn sample(url: String, subscribers: Vec<String>, metrics: Arc<Metrics>, shutdown: CancellationToken) {
    if subscribers.is_empty() {
        return;
    }
    let mut archive: Option<Archive> = None;
    let mut failing = false;
    let mut every = tokio::time::interval(EVERY);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = every.tick() => {}
        }
        if archive.is_none() {
            archive = Archive::open(&url).await.ok();
        }
        let Some(a) = &archive else { continue };
        let now = unix_micros_now();
        let since = now - i64::try_from(WINDOW.as_micros()).unwrap_or(i64::MAX);
        let mut failed = None;
        for s in &subscribers {
            match a.unapplied(s, since).await {
                Ok((count, oldest)) => {
                    let labels = SubscriberLabels { subscriber: s.clone() };
                    let age = oldest.map_or(0.0, |t| (now - t).max(0) as f64 / 1e6);
                    metrics
                        .unapplied
                        .get_or_create(&labels)
                        .set(i64::try_from(count).unwrap_or(i64::MAX));
                    metrics.oldest_unapplied.get_or_create(&labels).set(age);
                }
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        match failed {
            None if failing => {
                tracing::info!("copies not yet applied are read again");
                failing = false;
            }
            None => {}
            Some(e) => {
                metrics.unapplied.clear();
                metrics.oldest_unapplied.clear();
                if !failing {
                    tracing::warn!(error = %e, "copies not yet applied cannot be read; the gauges are empty until they can");
                    failing = true;
                }
                if let Some(a) = archive.take() {
                    a.close().await;
                }
            }
        }
    }
    if let Some(a) = archive {
        a.close().await;
    }
}
