//! The hub against a raw relay, on the real broker (`exhub-bench hub`).
//!
//! For each wire form (one document per message, then batches of `--batch` documents), the
//! ingress queue is preloaded with `--docs` documents of about 1 KB, then timed until a
//! consumer of the subscriber queue has acknowledged them all:
//!
//! - **raw relay**: consume the ingress queue, republish each message to the subscriber queue
//!   with confirms, acknowledge — the same queues, batching and confirms as the hub, and no hub
//!   logic: the ceiling;
//! - **hub**: the real `exhub hub` process (decode, authenticate, validate, hash, archive to
//!   SQLite, route, encode, publish with confirms, acknowledge).
//!
//! The last line is `RESULT hub_docs_per_s=… raw_relay_per_s=… ratio=… hub_rss_mb=… …`.
//!
//! Scaling out: `--broker cluster` runs on the three-node cluster of scripts/cluster.sh (every
//! connection with its `failover=` nodes), `--hubs N` runs N hub processes side by side on the
//! same queues, and `--archive postgres` gives them one PostgreSQL archive (a fresh database,
//! dropped afterwards) instead of a SQLite file.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use exhub_connect::publisher::Declare;
use exhub_connect::{Outgoing, Publisher, Topology, amqp, wire};
use exhub_schemas::Encoding;
use futures_util::StreamExt as _;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions};
use lapin::types::FieldTable;
use tokio_util::sync::CancellationToken;

use crate::procs::{Broker, Exhub, Flags, admin_url, login, provision, routes_toml, use_broker};

const SUBSCRIBER: &str = "bench";

struct Args {
    /// Hub processes side by side.
    hubs: usize,
    /// `sqlite` or `postgres`.
    archive: String,
    docs: u64,
    batch: usize,
    workers: usize,
    sign: String,
}

/// Runs the benchmark with `--docs N --batch N --workers N`.
pub async fn run(flags: Flags) -> Result<()> {
    let args = Args {
        docs: flags.get("docs", 200_000)?,
        batch: flags.get("batch", 100)?,
        // The hub's own default (`[hub] workers`), so that the figure is the hub as shipped.
        workers: flags.get("workers", 2)?,
        sign: flags.get("sign", "none".to_owned())?,
        hubs: flags.get("hubs", 1)?,
        archive: flags.get("archive", "sqlite".to_owned())?,
    };
    use_broker(Broker::named(&flags.get("broker", "local".to_owned())?)?);
    flags.done(&["docs", "batch", "workers", "sign", "hubs", "archive", "broker"])?;
    let dir = std::env::temp_dir().join(format!("exhub-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let docs: Vec<(String, Vec<u8>)> = (0..args.docs)
        .map(|n| {
            let id = uuid::Uuid::now_v7();
            (
                id.to_string(),
                exhub_schemas::samples::tax_registration(id, "nanhai.tax", n, "南海").into_bytes(),
            )
        })
        .collect();
    let avg = docs.iter().map(|(_, d)| d.len()).sum::<usize>() / docs.len().max(1);
    println!(
        "{} documents of {avg} bytes on average; batches of {}",
        args.docs, args.batch
    );

    let mut results = Vec::new();
    for batch in [1, args.batch] {
        let form = if batch == 1 { "single" } else { "batch" };
        let relay = run_relay(&docs, batch, args.workers).await?;
        println!("raw relay ({form}): {relay:.0} docs/s");
        let (hub, rss) = run_hub(&dir, &docs, batch, &args).await?;
        println!("hub ({form}): {hub:.0} docs/s, peak RSS {rss:.1} MB");
        results.push((relay, hub, rss));
    }
    let _ = std::fs::remove_dir_all(&dir);
    let (relay, hub, rss) = results[0];
    let (relay_b, hub_b, rss_b) = results[1];
    println!(
        "RESULT hubs={} hub_docs_per_s={hub:.0} raw_relay_per_s={relay:.0} ratio={:.2} hub_rss_mb={rss:.1} \
         hub_batch_docs_per_s={hub_b:.0} raw_relay_batch_per_s={relay_b:.0} batch_ratio={:.2} hub_batch_rss_mb={rss_b:.1}",
        args.hubs,
        hub / relay,
        hub_b / relay_b
    );
    Ok(())
}

/// Runs `f` until it succeeds, at most five times with a growing pause, as the exchange
/// retries passing failures: the broker may refuse a connection or a quorum queue declared
/// right after others with `INTERNAL_ERROR`.
async fn retried<T, F: Future<Output = Result<T>>>(what: &str, mut f: impl FnMut() -> F) -> Result<T> {
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if attempt < 5 => {
                eprintln!("{what} failed ({e:#}); retrying");
                tokio::time::sleep(Duration::from_millis(500) * attempt).await;
            }
            Err(e) => return Err(e.context(format!("{what}, {attempt} attempts"))),
        }
    }
}

/// A fresh topology with one subscriber.
async fn topology() -> Result<Topology> {
    let t = Topology::new(format!("bench{}", uuid::Uuid::now_v7().simple()));
    let declared = retried("declaring the bench topology", || on_topology(&t, Op::Declare)).await;
    match declared {
        Ok(()) => Ok(t),
        Err(e) => {
            cleanup(&t).await;
            Err(e)
        }
    }
}

/// Deletes the run's queues and exchanges; reports, never fails (a run's error matters more).
async fn cleanup(t: &Topology) {
    let deleted = retried("deleting the bench topology", || on_topology(t, Op::Delete)).await;
    if let Err(e) = deleted {
        eprintln!("cleanup of {}: {e:#} (delete its queues by hand)", t.prefix());
    }
}

/// What to do with a run's topology.
#[derive(Clone, Copy)]
enum Op {
    Declare,
    Delete,
}

/// Declares or deletes `t` on a connection of its own.
async fn on_topology(t: &Topology, op: Op) -> Result<()> {
    let conn = amqp::connect(&admin_url(), "exhub-bench-setup").await?;
    let ch = conn.create_channel().await?;
    match op {
        Op::Declare => t.declare_all(&ch, &[SUBSCRIBER]).await?,
        Op::Delete => t.delete_all(&ch, &[SUBSCRIBER]).await?,
    }
    conn.close(200, "".into()).await?;
    Ok(())
}

/// Fills the ingress queue: `batch` documents per message, published by AMQP user `user`
/// logging in with `url`.
async fn preload(
    t: &Topology,
    docs: &[(String, Vec<u8>)],
    batch: usize,
    url: &str,
    user: &str,
    signer: Option<&exhub_connect::sign::SigningKey>,
) -> Result<()> {
    let mut publisher = Publisher::new(url, "exhub-bench-preload", Declare::Ingress(t.clone()));
    let cancel = CancellationToken::new();
    for chunk in docs.chunks(5_000) {
        let messages: Vec<Outgoing> = chunk
            .chunks(batch)
            .map(|group| {
                let (payload, properties) = if group.len() == 1 {
                    let (id, d) = &group[0];
                    let props = lapin::BasicProperties::default()
                        .with_delivery_mode(2)
                        .with_content_type("application/json".into())
                        .with_message_id(id.as_str().into())
                        .with_type("tax.registration".into())
                        .with_user_id(user.into());
                    (d.clone(), wire::signed(props, signer, &[d]))
                } else {
                    let bodies: Vec<&[u8]> = group.iter().map(|(_, d)| d.as_slice()).collect();
                    let props = wire::batch_properties(Encoding::Json, group.len(), user);
                    (
                        wire::encode_batch(Encoding::Json, &bodies),
                        wire::signed(props, signer, &bodies),
                    )
                };
                Outgoing {
                    exchange: t.ingress_exchange(),
                    routing_key: String::new(),
                    payload,
                    properties,
                }
            })
            .collect();
        publisher.publish(&messages, &cancel).await?;
    }
    Ok(())
}

/// Consumes the subscriber queue, acknowledging in groups, until `want` documents arrived.
async fn drain(t: &Topology, want: u64) -> Result<()> {
    let conn = amqp::connect(&admin_url(), "exhub-bench-drain").await?;
    let ch = conn.create_channel().await?;
    ch.basic_qos(2_000, BasicQosOptions::default()).await?;
    let mut consumer = ch
        .basic_consume(
            t.subscriber_queue(SUBSCRIBER).as_str().into(),
            "drain".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut got = 0u64;
    let mut unacked = 0;
    while got < want {
        let Some(d) = tokio::time::timeout(Duration::from_secs(120), consumer.next()).await? else {
            bail!("subscriber queue consumer ended");
        };
        let d = d?;
        got += wire::header_str(&d.properties, wire::header::COUNT)
            .and_then(|c| c.parse().ok())
            .unwrap_or(1);
        unacked += 1;
        if unacked >= 200 || got >= want {
            ch.basic_ack(d.delivery_tag, BasicAckOptions { multiple: true }).await?;
            unacked = 0;
        }
    }
    conn.close(200, "".into()).await?;
    Ok(())
}

/// The raw relay: as many workers as the hub, same batching, same confirms, no hub logic.
async fn run_relay(docs: &[(String, Vec<u8>)], batch: usize, n_workers: usize) -> Result<f64> {
    with_topology(|t| async move { relay_on(&t, docs, batch, n_workers).await }).await
}

/// Runs `run` on a fresh topology, and deletes it afterwards whatever happened.
async fn with_topology<T, F: Future<Output = Result<T>>>(run: impl FnOnce(Topology) -> F) -> Result<T> {
    let t = topology().await?;
    let result = run(t.clone()).await;
    cleanup(&t).await;
    result
}

async fn relay_on(t: &Topology, docs: &[(String, Vec<u8>)], batch: usize, n_workers: usize) -> Result<f64> {
    preload(t, docs, batch, &admin_url(), "guest", None).await?;
    let started = Instant::now();
    let stop = CancellationToken::new();
    let relayed = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for n in 0..n_workers {
        let (t, stop, relayed) = (t.clone(), stop.clone(), Arc::clone(&relayed));
        workers.push(tokio::spawn(async move { relay(&t, n, &stop, &relayed).await }));
    }
    let drained = drain(t, docs.len() as u64).await;
    let rate = docs.len() as f64 / started.elapsed().as_secs_f64();
    stop.cancel();
    for w in workers {
        w.await??;
    }
    drained?;
    Ok(rate)
}

async fn relay(t: &Topology, n: usize, stop: &CancellationToken, relayed: &AtomicU64) -> Result<()> {
    let conn = amqp::connect(&admin_url(), &format!("exhub-bench-relay-{n}")).await?;
    let publish_conn = amqp::connect(&admin_url(), &format!("exhub-bench-relay-{n}-publish")).await?;
    let out = amqp::confirmed_channel(&publish_conn).await?;
    let ch = conn.create_channel().await?;
    ch.basic_qos(1000, BasicQosOptions::default()).await?;
    let mut consumer = ch
        .basic_consume(
            t.ingress_queue().as_str().into(),
            "relay".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    loop {
        let first = tokio::select! {
            () = stop.cancelled() => break,
            d = consumer.next() => match d { Some(d) => d?, None => break },
        };
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + Duration::from_millis(5);
        while batch.len() < 500 {
            match tokio::time::timeout_at(deadline, consumer.next()).await {
                Ok(Some(d)) => batch.push(d?),
                Ok(None) | Err(_) => break,
            }
        }
        let mut confirms = Vec::with_capacity(batch.len());
        for d in &batch {
            let props = d.properties.clone();
            confirms.push(
                out.basic_publish(
                    t.out_exchange().as_str().into(),
                    SUBSCRIBER.into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    &d.data,
                    props,
                )
                .await?,
            );
        }
        for c in futures_util::future::join_all(confirms).await {
            if !c?.is_ack() {
                bail!("relay publish was nacked");
            }
        }
        if let Some(last) = batch.last() {
            ch.basic_ack(last.delivery_tag, BasicAckOptions { multiple: true })
                .await?;
        }
        relayed.fetch_add(batch.len() as u64, Ordering::Relaxed);
    }
    let _ = conn.close(200, "".into()).await;
    let _ = publish_conn.close(200, "".into()).await;
    Ok(())
}

/// The real hub processes (`--hubs`) on the same kind of topology; returns (docs/s, the
/// largest peak RSS of one hub in MB).
async fn run_hub(dir: &Path, docs: &[(String, Vec<u8>)], batch: usize, args: &Args) -> Result<(f64, f64)> {
    with_topology(|t| async move {
        let t = &t;
        // A directory per run: its own config, archive, passwords and keys.
        let dir = &dir.join(t.prefix());
        std::fs::create_dir_all(dir)?;
        let config = dir.join("routes.toml");
        let graph = format!(
            r#"[[subscriber]]
name = "{SUBSCRIBER}"
org = "nanhai.tax"
kind = "amqp"
batch = true

[[route]]
name = "all"
doc_types = ["tax.registration"]
to = ["{SUBSCRIBER}"]
"#
        );
        let archive_db = format!("{}_archive", t.prefix());
        let archive = match args.archive.as_str() {
            "sqlite" => format!("sqlite://{}", dir.join("archive.db").display()),
            "postgres" => {
                postgres(&format!("CREATE DATABASE {archive_db}")).await?;
                format!("{}/{archive_db}", crate::cdc::POSTGRES)
            }
            other => bail!("--archive {other}: sqlite or postgres"),
        };
        let run = async {
            std::fs::write(&config, routes_toml(&archive, t.prefix(), args.workers, &graph))?;
            provision(&config)?;
            crate::procs::enable_signing(&config, &args.sign)?;
            let signer = match args.sign.as_str() {
                "none" => None,
                _ => Some(exhub_connect::sign::SigningKey::read_file(
                    &dir.join("secrets/nanhai.tax.signing-key"),
                )?),
            };
            let tax = login(dir, t.prefix(), "tax")?;
            preload(t, docs, batch, &tax, &format!("{}-tax", t.prefix()), signer.as_ref()).await?;
            let started = Instant::now();
            let mut hubs = (0..args.hubs.max(1))
                .map(|n| {
                    let log = dir.join(format!("hub-{n}.log"));
                    Exhub::spawn(&config, &["hub"], "warn,exhub_hub::pipeline=info", &log)
                })
                .collect::<Result<Vec<_>>>()?;
            drain(t, docs.len() as u64).await?;
            let rate = docs.len() as f64 / started.elapsed().as_secs_f64();
            let mut rss: f64 = 0.0;
            for (n, hub) in hubs.iter_mut().enumerate() {
                rss = rss.max(hub.peak_rss_mb()?);
                hub.stop();
                println!("  hub {n}:");
                hub.print_stages()?;
            }
            Ok((rate, rss))
        };
        let result = run.await;
        if args.archive == "postgres"
            && let Err(e) = postgres(&format!("DROP DATABASE IF EXISTS {archive_db} WITH (FORCE)")).await
        {
            eprintln!("dropping the archive database {archive_db}: {e:#}");
        }
        result
    })
    .await
}

/// Runs `statement` on the machine's PostgreSQL.
pub async fn postgres(statement: &str) -> Result<()> {
    use sqlx::Connection as _;
    let mut pg = sqlx::PgConnection::connect(crate::cdc::POSTGRES).await?;
    crate::cdc::sql(statement.to_owned()).execute(&mut pg).await?;
    pg.close().await?;
    Ok(())
}
