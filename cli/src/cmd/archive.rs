//! `exhub archive search` and `exhub replay`: reading the archive (转储), and sending a
//! selection of it again to one subscriber.

use std::path::Path;

use anyhow::{Context as _, Result, bail};
use exhub_connect::publisher::Declare;
use exhub_connect::wire::{self, header};
use exhub_connect::{Outgoing, Publisher};
use exhub_hub::archive::{Archive, AuditEntry, Query};
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
    let archive = super::open_archive(&loaded).await?;
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
    let signer = config.hub_signer(&loaded.base).context("the hub's signing key")?;
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
            let payload = copy_for(&admitted, &r.raw, &target, &loaded.registry);
            out.push(Outgoing {
                exchange: topology.out_exchange(),
                routing_key: subscriber.to_owned(),
                properties: wire::signed(props, signer.as_ref(), &[&payload]),
                payload,
            });
            done.push(id);
        }
        publisher.publish(&out, &cancel).await?;
        let marks: Vec<(uuid::Uuid, &str)> = done.iter().map(|id| (*id, subscriber)).collect();
        archive.mark_published(&marks, &user).await?;
        sent += out.len() as u64;
        bar.inc(page.len() as u64);
    }
    bar.finish_and_clear();
    let record = AuditEntry::new(
        &super::operator(),
        "replayed",
        format!("{sent} document(s) to {subscriber}"),
        serde_json::json!({
            "subscriber": subscriber,
            "doc_type": q.doc_type, "org": q.org, "since": q.since, "until": q.until, "key": q.key,
            "sent": sent,
        }),
    );
    archive.audit(&[record]).await?;
    println!("replayed {sent} document(s) to {subscriber}; {skipped} not routed to it; {unreadable} unreadable");
    archive.close().await;
    Ok(())
}

/// Prints the whole chain of one document: received (from whom, which login, which signature),
/// validated and archived (its hash), published to each subscriber, applied or refused by each
/// (their receipts). The signature is checked again, against the keys routes.toml has now.
pub async fn show(path: &Path, id: &str) -> Result<()> {
    let loaded = load(path)?;
    let config = &loaded.config;
    let archive = Archive::open(config.hub.archive.expose())
        .await
        .with_context(|| format!("opening the archive {}", config.hub.archive))?;
    let Some((r, amqp_user)) = archive.get(id).await? else {
        bail!("document {id} is not in the archive");
    };
    let at = |micros: i64| exhub_schemas::Timestamp::from_unix_micros(micros).to_string();
    println!("document   {} {} {} ({})", r.id, r.doc_type, r.op, r.key);
    println!(
        "received   {} from org {} as AMQP user {amqp_user:?} (verified by RabbitMQ)",
        at(r.received_at),
        r.sender_org
    );
    match archive.proof(id).await? {
        None => println!("signature  none (the message was not signed)"),
        Some(p) => {
            let digest = exhub_connect::sign::digest(&r.raw);
            let line = p.manifest.lines().skip(1).position(|l| l == digest);
            let count = p.manifest.lines().count().saturating_sub(1);
            let keys = config
                .org(&r.sender_org)
                .map(|o| o.public_keys.clone())
                .unwrap_or_default();
            let verdict = match (line, exhub_connect::sign::Keyring::from_lines(&keys)) {
                (None, _) => "BROKEN: the archived bytes are not in the signed manifest".to_owned(),
                (Some(_), Err(e)) => format!("cannot check: {e}"),
                (Some(n), Ok(ring)) => match ring.verify_manifest(&p.signature, p.manifest.as_bytes()) {
                    Ok(_) => format!(
                        "verified; the document is item {} of {count} in the signed manifest {}",
                        n + 1,
                        p.id
                    ),
                    Err(e) => format!("BROKEN: {e}"),
                },
            };
            println!("signature  key {}: {verdict}", p.key_id);
        }
    }
    println!(
        "archived   content_hash {}, validated against its schema",
        r.content_hash
    );
    let deliveries = archive.deliveries(std::slice::from_ref(&r.id)).await?;
    let receipts = archive.receipts(id).await?;
    for (subscriber, status) in deliveries.get(&r.id).map(Vec::as_slice).unwrap_or_default() {
        let receipt = receipts.iter().find(|x| &x.subscriber == subscriber);
        match receipt {
            Some(x) => println!(
                "{:<10} {subscriber}: {} at {} (receipt from AMQP user {:?}{}{})",
                if x.outcome == exhub_hub::archive::APPLIED {
                    "applied"
                } else {
                    "refused"
                },
                x.outcome,
                at(x.received_at),
                x.amqp_user,
                x.key_id
                    .as_deref()
                    .map(|k| format!(", signed by {k}"))
                    .unwrap_or_else(|| ", unsigned".into()),
                x.reason.as_deref().map(|r| format!(", reason {r}")).unwrap_or_default(),
            ),
            None => println!(
                "{:<10} {subscriber}: {status}",
                if status == "pending" { "routed" } else { "published" }
            ),
        }
    }
    archive.close().await;
    Ok(())
}
