//! The archive's hot path alone, no broker (`exhub-bench archive`): `--writers` tasks store
//! batches of `--batch` documents of about 1 KB (`Archive::store`, one durable transaction each)
//! and confirm each one (`Archive::confirm`), as hub workers do, until `--docs` are archived in a
//! fresh SQLite file or PostgreSQL database (`--archive sqlite|postgres`).
//!
//! `--receipts true` adds, to each store, the subscriber's receipts for a batch stored before
//! (every document applied), as a database sink's receipts reach the hub in a CDC run.
//!
//! The figure is the archive's ceiling under the hub: if the hub gets close to it, the archive
//! is what holds the hub back. The last line is `RESULT archive_docs_per_s=… store_us_per_doc=…
//! confirm_us_per_doc=…` (wall time inside each call, summed over the writers, per document).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::{Result, bail};
use exhub_hub::archive::{APPLIED, Archive, Entry, ReceiptRow};
use uuid::Uuid;

use crate::procs::Flags;

/// One document to archive, owned.
struct Doc {
    id: Uuid,
    key: String,
    hash: String,
    raw: Vec<u8>,
}

/// Runs the benchmark with `--docs N --batch N --writers N --archive sqlite|postgres`.
pub async fn run(flags: Flags) -> Result<()> {
    let docs: usize = flags.get("docs", 200_000)?;
    let batch: usize = flags.get("batch", 600)?;
    let writers: usize = flags.get("writers", 4)?;
    let kind = flags.get("archive", "sqlite".to_owned())?;
    let receipts: bool = flags.get("receipts", false)?;
    flags.done(&["docs", "batch", "writers", "archive", "receipts"])?;
    let dir = std::env::temp_dir().join(format!("exhub-bench-archive-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let db = format!("exhub_bench_archive_{}", std::process::id());
    let url = match kind.as_str() {
        "sqlite" => format!("sqlite://{}", dir.join("archive.db").display()),
        "postgres" => {
            crate::hub::postgres(&format!("CREATE DATABASE {db}")).await?;
            format!("{}/{db}", crate::cdc::POSTGRES)
        }
        other => bail!("--archive {other}: sqlite or postgres"),
    };
    let result = measure(&url, docs, batch.max(1), writers.max(1), receipts).await;
    if kind == "postgres"
        && let Err(e) = crate::hub::postgres(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)")).await
    {
        eprintln!("dropping the archive database {db}: {e:#}");
    }
    let _ = std::fs::remove_dir_all(&dir);
    let (rate, store_us, confirm_us) = result?;
    let with = if receipts { " with receipts" } else { "" };
    println!(
        "{docs} documents in batches of {batch}{with}, {writers} writers, {kind} archive: {rate:.0} docs/s \
         (store {store_us:.1} µs, confirm {confirm_us:.1} µs per document, summed over the writers)"
    );
    println!("RESULT archive_docs_per_s={rate:.0} store_us_per_doc={store_us:.1} confirm_us_per_doc={confirm_us:.1}");
    Ok(())
}

/// Stores and confirms every document; docs/s and the µs per document inside each call.
async fn measure(url: &str, docs: usize, batch: usize, writers: usize, receipts: bool) -> Result<(f64, f64, f64)> {
    let archive = Archive::open(url).await?;
    let all: Arc<Vec<Doc>> = Arc::new(
        (0..docs)
            .map(|n| {
                let id = Uuid::now_v7();
                let raw = exhub_schemas::samples::tax_registration(id, "nanhai.tax", n as u64, "南海").into_bytes();
                Doc {
                    id,
                    key: format!("9144{n:014}"),
                    hash: exhub_connect::sign::digest(&raw),
                    raw,
                }
            })
            .collect(),
    );
    let next = Arc::new(AtomicUsize::new(0));
    let (store_us, confirm_us) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let started = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|_| {
            let (archive, all, next) = (archive.clone(), all.clone(), next.clone());
            let (store_us, confirm_us) = (store_us.clone(), confirm_us.clone());
            tokio::spawn(async move {
                loop {
                    let from = next.fetch_add(batch, Ordering::Relaxed);
                    if from >= all.len() {
                        return Ok::<_, anyhow::Error>(());
                    }
                    let docs = &all[from..(from + batch).min(all.len())];
                    let entries: Vec<Entry<'_>> = docs.iter().map(entry).collect();
                    // The receipts for the batch stored `writers` batches ago (stored by now).
                    let receipts: Vec<ReceiptRow> = match from.checked_sub(batch * writers) {
                        Some(earlier) if receipts => all[earlier..earlier + batch].iter().map(receipt).collect(),
                        _ => Vec::new(),
                    };
                    let t = Instant::now();
                    let stored = archive.store(&entries, &receipts, &[]).await?;
                    store_us.fetch_add(t.elapsed().as_micros() as u64, Ordering::Relaxed);
                    let copies: Vec<(Uuid, &str)> = docs.iter().map(|d| (d.id, "bench")).collect();
                    let t = Instant::now();
                    if let Some(b) = stored.batch {
                        archive.confirm(b, &copies, "exhub-bench").await?;
                    }
                    confirm_us.fetch_add(t.elapsed().as_micros() as u64, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    let rate = docs as f64 / started.elapsed().as_secs_f64();
    archive.close().await;
    let per_doc = |us: &AtomicU64| us.load(Ordering::Relaxed) as f64 / docs.max(1) as f64;
    Ok((rate, per_doc(&store_us), per_doc(&confirm_us)))
}

fn receipt(d: &Doc) -> ReceiptRow {
    ReceiptRow {
        document_id: d.id.to_string(),
        subscriber: "bench".into(),
        outcome: APPLIED,
        reason: None,
        amqp_user: "bench-sink".into(),
        key_id: None,
        received_at: 0,
    }
}

fn entry(d: &Doc) -> Entry<'_> {
    Entry {
        id: d.id,
        doc_type: "tax.registration",
        schema_version: 1,
        op: "upsert",
        sender_org: "nanhai.tax",
        sender_system: Some("ctais"),
        amqp_user: "bench-tax",
        key: vec![("taxpayer_id", d.key.clone())],
        created_at: 0,
        content_type: "application/json",
        content_hash: &d.hash,
        raw: &d.raw,
        subscribers: vec!["bench"],
        proof: None,
    }
}
