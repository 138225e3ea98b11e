//! `exhub archive search` and `exhub replay`: reading the archive (转储), and sending a
//! selection of it again to one subscriber.

use std::path::Path;

use anyhow::{Context as _, Result, bail};
use exhub_connect::publisher::Declare;
use exhub_connect::wire::{self, header};
use exhub_connect::{Outgoing, Publisher};
use exhub_hub::archive::{Archive, Query};
use exhub_hub::gate::Admitted;
use exhub_hub::pipeline::{amqp_user, copy_for};
use exhub_hub::router::Router;
use exhub_schemas::{Encoding, Timestamp, decode};
use indicatif::{ProgressBar, ProgressStyle};

use super::{load, shutdown_on_signal};

/// Documents read from the archive per round trip.
const PAGE: usize = 1000;

/// Prints archived documents matching `q` with their delivery status per subscriber.
pub async fn search(path: &Path, q: &Query, limit: usize) -> Result<()> {
    let loaded = load(path)?;
    let archive = Archive::open(loaded.config.hub.archive.expose())
        .await
        .with_context(|| format!("opening the archive {}", loaded.config.hub.archive))?;
    let total = archive.count(q).await?;
    let records = archive.search(q, None, limit).await?;
    let ids: Vec<String> = records.iter().map(|r| r.id.clone()).collect();
    let deliveries = archive.deliveries(&ids).await?;
    for r in &records {
        let status: Vec<String> = deliveries
            .get(&r.id)
            .into_iter()
            .flatten()
            .map(|(s, st)| format!("{s}:{st}"))
            .collect();
        println!(
            "{}\t{}\t{}\t{}\t{}\t{}\t{}",
            Timestamp::from_unix_micros(r.received_at),
            r.id,
            r.doc_type,
            r.op,
            r.sender_org,
            r.key,
            if status.is_empty() {
                "(routed nowhere)".to_owned()
            } else {
                status.join(" ")
            }
        );
    }
    eprintln!("{} of {total} matching document(s) shown", records.len());
    archive.close().await;
    Ok(())
}

/// Sends archived documents matching `q` again to `subscriber` — those a route brings to it,
/// masked and encoded as the hub would — with confirms, a progress bar and a final count.
pub async fn replay(path: &Path, subscriber: &str, q: &Query) -> Result<()> {
    let loaded = load(path)?;
    let config = &loaded.config;
    let router = Router::new(config)?;
    if !router.subscribers().iter().any(|s| s == subscriber) {
        bail!("subscriber {subscriber:?} is not in {}", path.display());
    }
    let archive = Archive::open(config.hub.archive.expose())
        .await
        .with_context(|| format!("opening the archive {}", config.hub.archive))?;
    let total = archive.count(q).await?;
    let bar = ProgressBar::new(total).with_style(
        ProgressStyle::with_template("replaying {bar:40} {pos}/{len} documents ({per_sec}, eta {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let topology = config.hub.topology();
    let user = amqp_user(&config.hub.amqp);
    let mut publisher = Publisher::new(
        config.hub.amqp.expose(),
        format!("exhub-replay-{subscriber}"),
        Declare::All(topology.clone(), router.subscribers()),
    );
    let cancel = shutdown_on_signal();
    let limits = config.hub.limits();
    let (mut sent, mut skipped, mut unreadable) = (0u64, 0u64, 0u64);
    let mut after: Option<(i64, String)> = None;
    loop {
        let page = archive
            .search(q, after.as_ref().map(|(t, id)| (*t, id.as_str())), PAGE)
            .await?;
        let Some(last) = page.last() else { break };
        after = Some((last.received_at, last.id.clone()));
        let mut out = Vec::new();
        let mut done = Vec::new();
        for r in &page {
            let doc = match decode(&r.raw, &loaded.registry, &limits) {
                Ok(d) => d,
                Err(e) => {
                    // The schema may have been removed since; say so and go on.
                    bar.suspend(|| eprintln!("{}: cannot be decoded any more: {e}", r.id));
                    unreadable += 1;
                    continue;
                }
            };
            let Some(target) = router.target(&doc, subscriber) else {
                skipped += 1;
                continue;
            };
            let encoding = Encoding::detect(&r.raw).unwrap_or(Encoding::Json);
            let id = doc.header.id;
            let props = wire::with_header(
                wire::document_properties(&doc, target.format, &user),
                header::REPLAY,
                "true",
            );
            let admitted = Admitted {
                doc,
                encoding,
                hash: r.content_hash.clone(),
            };
            out.push(Outgoing {
                exchange: topology.out_exchange(),
                routing_key: subscriber.to_owned(),
                payload: copy_for(&admitted, &r.raw, &target, &loaded.registry),
                properties: props,
            });
            done.push(id);
        }
        publisher.publish(&out, &cancel).await?;
        let marks: Vec<(uuid::Uuid, &str)> = done.iter().map(|id| (*id, subscriber)).collect();
        archive.mark_published(&marks).await?;
        sent += out.len() as u64;
        bar.inc(page.len() as u64);
    }
    bar.finish_and_clear();
    println!("replayed {sent} document(s) to {subscriber}; {skipped} not routed to it; {unreadable} unreadable");
    archive.close().await;
    Ok(())
}
