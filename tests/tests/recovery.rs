//! Nothing is lost when the broker restarts or the hub is killed: 20,000 documents go in, and
//! afterwards every one is archived exactly once and in its subscriber's queue at least once.
//! Tests named `restart_*` restart a shared service and run alone (see .config/nextest.toml).

use std::collections::HashSet;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::exchange::{ArchiveKind, Exchange, tax_doc};

const DOCS: u64 = 20_000;
const CHUNK: usize = 500;

const GRAPH: &str = r#"
[[subscriber]]
name = "mirror"
org = "nanhai.commerce"
kind = "amqp"

[[route]]
name = "all"
doc_types = ["tax.registration"]
to = ["mirror"]
"#;

fn documents(base: u64) -> Vec<(String, Vec<u8>)> {
    (0..DOCS).map(|n| tax_doc("nanhai.tax", base + n, "南海")).collect()
}

/// Every document archived exactly once, and delivered at least once.
async fn assert_nothing_lost(ex: &Exchange, docs: &[(String, Vec<u8>)]) {
    let want: HashSet<String> = docs.iter().map(|(id, _)| id.clone()).collect();
    let got = ex
        .take(&ex.topology.subscriber_queue("mirror"), Duration::from_secs(240), |t| {
            t.ids.len() >= want.len()
        })
        .await;
    let missing = want.difference(&got.ids).count();
    assert_eq!(
        missing,
        0,
        "{missing} documents never reached the subscriber; hub log: {}",
        ex.hub_log(0)
    );
    let (archived, rows) = ex.archived_ids().await;
    assert_eq!(rows, docs.len(), "archived rows");
    assert_eq!(archived, want, "the archive holds exactly the published documents");
}

#[tokio::test(flavor = "multi_thread")]
async fn restart_rabbitmq_mid_stream_loses_nothing() {
    let mut ex = Exchange::new("restart-mq", ArchiveKind::Sqlite, "", GRAPH);
    ex.start_hub().await;
    let docs = documents(1_000_000);
    let stopped = Arc::new(AtomicBool::new(false));
    let restart = {
        let stopped = Arc::clone(&stopped);
        move || {
            let run = |arg: &str| {
                let out = Command::new("rabbitmqctl").arg(arg).output().unwrap();
                assert!(
                    out.status.success(),
                    "rabbitmqctl {arg}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            };
            run("stop_app");
            stopped.store(true, Ordering::SeqCst);
            run("start_app");
        }
    };
    let mut restarter = None;
    for (i, chunk) in docs.chunks(CHUNK).enumerate() {
        if i * CHUNK == DOCS as usize / 2 {
            // Half published: stop the broker, and publish the rest into the outage.
            restarter = Some(std::thread::spawn(restart.clone()));
            let deadline = Instant::now() + Duration::from_secs(60);
            while !stopped.load(Ordering::SeqCst) {
                assert!(Instant::now() < deadline, "rabbitmqctl stop_app did not return");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        ex.publish(chunk.iter().map(|(id, d)| (d.clone(), ex.props(id))).collect())
            .await;
    }
    restarter.unwrap().join().unwrap();
    assert_nothing_lost(&ex, &docs).await;
    assert!(
        ex.hub_log(0).contains("connection lost"),
        "the hub saw the restart: {}",
        ex.hub_log(0)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn hub_killed_mid_stream_loses_nothing() {
    let mut ex = Exchange::new("sigkill", ArchiveKind::Sqlite, "", GRAPH);
    ex.start_hub().await;
    let docs = documents(2_000_000);
    let publishing = {
        let handle = ex.handle();
        let docs = docs.clone();
        tokio::spawn(async move {
            let ex = handle;
            for chunk in docs.chunks(CHUNK) {
                ex.publish(chunk.iter().map(|(id, d)| (d.clone(), ex.props(id))).collect())
                    .await;
            }
        })
    };
    // Kill it once it is well into the stream.
    let deadline = Instant::now() + Duration::from_secs(120);
    while ex.depth(&ex.topology.subscriber_queue("mirror")).await < 3_000 {
        assert!(Instant::now() < deadline, "hub made no progress: {}", ex.hub_log(0));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    ex.kill_hubs();
    ex.start_hub().await;
    publishing.await.unwrap();
    assert_nothing_lost(&ex, &docs).await;
}
