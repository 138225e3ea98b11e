//! `exhub dlq list` and `exhub dlq retry`: the documents the hub (or a subscriber) could not
//! take, with their reasons, and sending them back through the hub once the cause is fixed
//! ([`exhub_hub::dlq`], which the console uses too).

use std::path::Path;

use anyhow::{Context as _, Result};
use exhub_connect::amqp;
use exhub_hub::router::Router;
use lapin::Connection;

use super::{Loaded, load};

/// The hub's connection, with the topology declared (a DLQ may not exist yet).
async fn open(loaded: &Loaded) -> Result<Connection> {
    let config = &loaded.config;
    let router = Router::new(config)?;
    let conn = amqp::connect(config.hub.amqp.expose(), "exhub-dlq")
        .await
        .with_context(|| format!("connecting to {}", config.hub.amqp))?;
    let channel = conn.create_channel().await?;
    config
        .hub
        .topology()
        .declare_all(&channel, &router.subscribers())
        .await?;
    let _ = channel.close(200, "declared".into()).await;
    Ok(conn)
}

/// Shows up to `limit` dead-lettered documents of the hub DLQ (or of `subscriber`'s DLQ).
pub async fn list(path: &Path, subscriber: Option<&str>, limit: usize) -> Result<()> {
    let loaded = load(path)?;
    let topology = loaded.config.hub.topology();
    let conn = open(&loaded).await?;
    let queue = subscriber.map_or_else(|| topology.hub_dlq(), |s| topology.subscriber_dlq(s));
    let letters = exhub_hub::dlq::list(&conn, &queue, limit).await?;
    for d in &letters {
        println!("{}\t{}\t{}\t{}\t{}", d.id, d.kind, d.reason, d.sender, d.detail);
    }
    println!("{} dead-lettered document(s) shown from {queue}", letters.len());
    let _ = conn.close(200, "listed".into()).await;
    Ok(())
}

/// Sends dead-lettered documents of the hub DLQ back through the hub: the one with message id
/// `id`, or all of them; audited.
pub async fn retry(path: &Path, id: Option<&str>) -> Result<()> {
    let loaded = load(path)?;
    let config = &loaded.config;
    let topology = config.hub.topology();
    let conn = open(&loaded).await?;
    let done = exhub_hub::dlq::retry(&conn, &topology, &config.hub.user(), id).await?;
    let queue = topology.hub_dlq();
    if !done.sent.is_empty() {
        let archive = super::open_archive(&loaded).await?;
        let record = exhub_hub::archive::AuditEntry::new(
            &super::operator(),
            "dlq-retried",
            format!("{} from {queue}", done.sent.len()),
            serde_json::json!({ "queue": queue, "documents": done.sent }),
        );
        archive.audit(&[record]).await?;
        archive.close().await;
    }
    println!(
        "{} document(s) sent back through the hub; {} left in {queue}",
        done.sent.len(),
        done.kept
    );
    let _ = conn.close(200, "retried".into()).await;
    Ok(())
}
