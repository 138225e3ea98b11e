//! Nothing is lost when the broker restarts or the hub is killed: 20,000 documents go in, and
//! afterwards every one is archived exactly once and in its subscriber's queue at least once.
//! Tests named `restart_*` restart a shared service and run alone (see .config/nextest.toml);
//! `restart_cluster_*` runs on the three-node RabbitMQ cluster of scripts/cluster.sh, which it
//! starts, and stops when done.

use std::collections::HashSet;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use exhub_hub::archive::Query;

use crate::exchange::{ArchiveKind, CLUSTER, Exchange, tax_doc};
use crate::services::psql;

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

/// `scripts/cluster.sh ARGS`, asserting success.
fn cluster(args: &[&str]) {
    let out = Command::new("bash")
        .arg(crate::root().join("scripts/cluster.sh"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "scripts/cluster.sh {}: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What the cluster test leaves running, undone however it ends: the sink, the ledger
/// database, the cluster itself. Declared before the exchange, so dropped after it (the
/// exchange deletes its queues and users on the cluster first).
struct ClusterRun {
    db: String,
    sink: Option<std::process::Child>,
}

impl Drop for ClusterRun {
    fn drop(&mut self) {
        if let Some(sink) = &mut self.sink {
            let _ = sink.kill();
            let _ = sink.wait();
        }
        // No assertions here: this also runs while a failed test unwinds.
        let _ = Command::new("psql")
            .args(["-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-XAtq", "-c"])
            .arg(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.db))
            .output();
        let _ = Command::new("bash")
            .arg(crate::root().join("scripts/cluster.sh"))
            .arg("stop")
            .output();
    }
}

/// On a three-node RabbitMQ cluster, 20,000 documents go in while a second hub joins, the node
/// every participant connected to first stops (documents keep coming, and must be archived
/// through the other nodes before it returns), and the first hub is SIGKILLed: every document
/// is archived exactly once, reaches the AMQP subscriber, and is applied by the PostgreSQL sink
/// — one row per document, each receipted `applied`.
#[tokio::test(flavor = "multi_thread")]
async fn restart_cluster_node_and_hubs_lose_nothing() {
    cluster(&["start"]);
    let mut run = ClusterRun {
        db: format!("exhub_ledger_{}", uuid::Uuid::now_v7().simple()),
        sink: None,
    };
    let db = run.db.clone();
    psql("postgres", &format!("CREATE DATABASE {db}"));
    let table = std::fs::read_to_string(crate::root().join("examples/legacy/commerce_mirror.sql")).unwrap();
    crate::services::psql_with(&db, &["-c", &table]);
    let graph = format!(
        r#"
[[subscriber]]
name = "mirror"
org = "nanhai.commerce"
kind = "amqp"

[[subscriber]]
name = "ledger"
org = "nanhai.commerce"
kind = "postgres"
url = "postgres://postgres@127.0.0.1:5432/{db}"
  [[subscriber.apply]]
  doc_type = "tax.registration"
  table = "tax_registration"

[[route]]
name = "all"
doc_types = ["tax.registration"]
to = ["mirror", "ledger"]
"#
    );
    // Two hub processes share one archive: PostgreSQL's.
    let mut ex = Exchange::on(CLUSTER, "cluster", ArchiveKind::Postgres, "", &graph);
    ex.start_hub().await;
    let sink_log = std::fs::File::create(ex.dir.join("sink.log")).unwrap();
    run.sink = Some(
        Command::new(crate::exhub_bin())
            .args(["sink", "ledger"])
            .env("EXHUB_CONFIG", &ex.config)
            .env("EXHUB_LOG", "info")
            .current_dir(&ex.dir)
            .stdout(std::process::Stdio::null())
            .stderr(sink_log)
            .spawn()
            .unwrap(),
    );
    let archive = ex.archive().await;
    let docs = documents(3_000_000);
    for (i, chunk) in docs.chunks(CHUNK).enumerate() {
        match i * CHUNK {
            // A second hub joins.
            5_000 => ex.start_hub().await,
            // The node everyone reached first stops; documents keep coming.
            10_000 => tokio::task::spawn_blocking(|| cluster(&["stop-node", "1"]))
                .await
                .unwrap(),
            // With node 1 still down, everything published so far is archived: publishers and
            // hubs went on through the other nodes. Then it comes back.
            12_500 => {
                let deadline = Instant::now() + Duration::from_secs(120);
                loop {
                    let archived = archive.count(&Query::default()).await.unwrap();
                    if archived >= 12_500 {
                        break;
                    }
                    assert!(
                        Instant::now() < deadline,
                        "with node 1 down only {archived} of 12,500 archived; hub logs: {}{}",
                        ex.hub_log(0),
                        ex.hub_log(1)
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                tokio::task::spawn_blocking(|| cluster(&["start-node", "1"]))
                    .await
                    .unwrap();
            }
            // The first hub dies mid-stream.
            15_000 => ex.kill_hub(0),
            _ => {}
        }
        ex.publish(chunk.iter().map(|(id, d)| (d.clone(), ex.props(id))).collect())
            .await;
    }
    assert_nothing_lost(&ex, &docs).await;
    // Applied: one row per document (every document has its own key), each receipted.
    let deadline = Instant::now() + Duration::from_secs(180);
    let count = || psql(&db, "SELECT COUNT(*) FROM tax_registration");
    while count() != DOCS.to_string() {
        assert!(
            Instant::now() < deadline,
            "{} rows applied of {DOCS}; sink log: {}",
            count(),
            std::fs::read_to_string(ex.dir.join("sink.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let applied = psql(&db, "SELECT COUNT(*) FROM exhub_applied");
    assert_eq!(applied, DOCS.to_string(), "one exhub_applied row per document");
    // And the archive knows: the sink's receipts say `applied` for every one.
    let ids: Vec<String> = docs.iter().map(|(id, _)| id.clone()).collect();
    loop {
        let status = archive.deliveries(&ids).await.unwrap();
        let receipted = status
            .values()
            .filter(|subs| subs.iter().any(|(s, st)| s == "ledger" && st == "applied"))
            .count();
        if receipted == ids.len() {
            break;
        }
        assert!(Instant::now() < deadline, "{receipted} of {DOCS} receipted as applied");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    archive.close().await;
}
