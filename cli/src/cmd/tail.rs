//! `exhub tail SUBSCRIBER`: shows documents as the hub routes them to a subscriber, without
//! taking them from its queue — a temporary exclusive queue bound to the out exchange with the
//! subscriber's routing key receives a copy of each.

use std::io::Write as _;
use std::path::Path;

use anyhow::{Context as _, Result, bail};
use exhub_connect::{amqp, wire};
use exhub_hub::router::Router;
use exhub_schemas::{Registry, decode};
use futures_util::StreamExt as _;
use lapin::types::FieldTable;

use super::{load, shutdown_on_signal};

/// Prints what reaches `subscriber` until Ctrl-C, or until `count` documents were shown.
pub async fn tail(path: &Path, subscriber: &str, count: Option<u64>, full: bool) -> Result<()> {
    let loaded = load(path)?;
    let config = &loaded.config;
    let router = Router::new(config)?;
    if !router.subscribers().iter().any(|s| s == subscriber) {
        bail!(
            "subscriber {subscriber:?} is not in {} (known: {})",
            path.display(),
            router.subscribers().join(", ")
        );
    }
    let topology = config.hub.topology();
    let cancel = shutdown_on_signal();
    let conn = amqp::connect(config.hub.amqp.expose(), &format!("exhub-tail-{subscriber}"))
        .await
        .with_context(|| format!("connecting to {}", config.hub.amqp))?;
    let channel = conn.create_channel().await?;
    topology.declare_all(&channel, &router.subscribers()).await?;
    let mut consumer = exhub_connect::consumer::tap(
        &channel,
        &topology.out_exchange(),
        subscriber,
        FieldTable::default(),
        "exhub-tail",
    )
    .await?;
    eprintln!(
        "tailing {subscriber} (what the hub routes to {})",
        topology.subscriber_queue(subscriber)
    );
    let mut shown = 0u64;
    let limits = config.hub.limits();
    loop {
        if count.is_some_and(|c| shown >= c) {
            break;
        }
        let delivery = tokio::select! {
            () = cancel.cancelled() => break,
            d = consumer.next() => match d {
                Some(d) => d?,
                None => bail!("the broker closed the tail"),
            },
        };
        let parts = if wire::is_batch(&delivery.properties) {
            wire::split_batch(&delivery.data)?
        } else {
            vec![delivery.data.as_slice()]
        };
        let mut out = std::io::stdout().lock();
        for raw in parts {
            writeln!(out, "{}", summary(raw, &loaded.registry, &limits))?;
            if full {
                out.write_all(raw)?;
                writeln!(out)?;
            }
            shown += 1;
        }
        out.flush()?;
    }
    let _ = conn.close(200, "tail done".into()).await;
    Ok(())
}

/// One line about a document: doc type, op, id, key, sender.
pub fn summary(raw: &[u8], registry: &Registry, limits: &exhub_schemas::Limits) -> String {
    match decode(raw, registry, limits) {
        Ok(doc) => {
            let h = &doc.header;
            let key: Vec<String> = h
                .key
                .iter()
                .map(|(k, v)| format!("{k}={}", v.scalar_text().unwrap_or_default()))
                .collect();
            let format = if raw.trim_ascii_start().starts_with(b"<") {
                "xml"
            } else {
                "json"
            };
            format!(
                "{}\t{}\t{}\t{}\t{}\tfrom {}\t{format}",
                h.created_at,
                h.doc_type,
                h.op,
                h.id,
                key.join(","),
                h.sender.org
            )
        }
        Err(e) => format!("(undecodable document: {e})"),
    }
}
