//! The hub end to end: the real binary between real RabbitMQ queues, with a real archive.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use exhub_connect::wire::{self, header};
use exhub_schemas::Encoding;

use crate::exchange::{ArchiveKind, Exchange, props, tax_doc};
use crate::stdout;

const WAIT: Duration = Duration::from_secs(30);

/// Two subscribers that take batches: `all` (JSON, everything) and `nanhai-xml` (XML, only
/// district 南海, no capital or phone).
const GRAPH: &str = r#"
[[subscriber]]
name = "all"
org = "nanhai.commerce"
kind = "amqp"
format = "json"
batch = true

[[subscriber]]
name = "nanhai-xml"
org = "nanhai.commerce"
kind = "amqp"
format = "xml"
batch = true

[[route]]
name = "everything"
doc_types = ["tax.registration", "commerce.business_license"]
to = ["all"]

[[route]]
name = "nanhai-only"
doc_types = ["tax.registration"]
where = "body.district == '南海'"
to = ["nanhai-xml"]
mask = { "nanhai-xml" = ["capital", "phone"] }
"#;

async fn routed_exchange(tag: &str, archive: ArchiveKind) -> Exchange {
    let mut ex = Exchange::new(tag, archive, "", GRAPH);
    ex.start_hub().await;
    ex
}

async fn routes_filters_masks_and_encodes(archive: ArchiveKind) {
    let ex = routed_exchange("route", archive).await;
    let (nanhai, nanhai_doc) = tax_doc("nanhai.tax", 1, "南海");
    let (other, other_doc) = tax_doc("nanhai.tax", 2, "顺德");
    let licence = crate::root().join("examples/documents/commerce.business_license.xml");
    std::fs::write(ex.dir.join("a.json"), &nanhai_doc).unwrap();
    std::fs::write(ex.dir.join("b.json"), &other_doc).unwrap();
    let out = ex.exhub(&["publish", "--as", "nanhai.tax", "a.json", "b.json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let by_commerce = ex.exhub(&["publish", "--as", "nanhai.commerce", licence.to_str().unwrap()]);
    assert!(
        by_commerce.status.success(),
        "{}",
        String::from_utf8_lossy(&by_commerce.stderr)
    );
    assert!(
        stdout(&out).contains(&format!("a.json\t{nanhai}\tconfirmed")),
        "{}",
        stdout(&out)
    );

    let all = ex
        .take(&ex.topology.subscriber_queue("all"), WAIT, |t| t.docs >= 3)
        .await;
    let ids: HashSet<String> = all.order.into_iter().collect();
    assert_eq!(ids.len(), 3, "{ids:?}");
    assert!(ids.contains(&nanhai) && ids.contains(&other));
    // The JSON subscriber gets JSON: the XML licence was converted, the JSON ones passed as sent.
    for r in &all.messages {
        assert_eq!(
            r.properties.content_type().as_ref().unwrap().as_str(),
            "application/json"
        );
        assert!(r.docs[0].starts_with(b"{"));
    }
    assert!(all.messages.iter().any(|r| r.docs[0] == nanhai_doc));

    let xml = ex
        .take(&ex.topology.subscriber_queue("nanhai-xml"), WAIT, |t| t.docs >= 1)
        .await;
    assert_eq!(
        xml.order,
        std::slice::from_ref(&nanhai),
        "only the 南海 registration passes the filter"
    );
    let text = String::from_utf8(xml.messages[0].docs[0].clone()).unwrap();
    assert!(text.starts_with("<?xml"), "{text}");
    assert!(
        !text.contains("<capital>") && !text.contains("<phone"),
        "masked fields leaked: {text}"
    );
    assert!(text.contains("<district>南海</district>"));
    // The masked copy is a valid document whose hash is of what it holds.
    let path = ex.dir.join("copy.xml");
    std::fs::write(&path, &text).unwrap();
    let v = crate::exhub(&["validate", path.to_str().unwrap()]);
    assert!(v.status.success(), "{}", stdout(&v));
    let registry = exhub_schemas::Registry::builtin().unwrap();
    let doc = exhub_schemas::decode(text.as_bytes(), &registry, &Default::default()).unwrap();
    assert_eq!(
        doc.header.content_hash,
        Some(exhub_schemas::canonical::content_hash(&doc))
    );

    // The archive has all three, with their delivery status per subscriber. The hub records
    // a delivery once the broker confirmed the copy, which a subscriber may already have
    // taken: wait for the record, then check it.
    let key = format!("taxpayer_id={}", exhub_schemas::samples::taxpayer_id(1));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let search = loop {
        let search = ex.exhub(&["archive", "search", "--key", &key]);
        if !stdout(&search).contains(":pending") || std::time::Instant::now() > deadline {
            break search;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let lines = stdout(&search);
    assert!(search.status.success(), "{}", String::from_utf8_lossy(&search.stderr));
    assert_eq!(lines.lines().count(), 1, "{lines}");
    assert!(
        lines.contains(&nanhai) && lines.contains("all:published nanhai-xml:published"),
        "{lines}"
    );
    let search = ex.exhub(&[
        "archive",
        "search",
        "--doc-type",
        "tax.registration",
        "--org",
        "nanhai.tax",
    ]);
    assert_eq!(stdout(&search).lines().count(), 2, "{}", stdout(&search));
    let search = ex.exhub(&["archive", "search", "--since", "2000-01-01", "--until", "2001-01-01"]);
    assert_eq!(stdout(&search).lines().count(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn hub_routes_filters_masks_and_encodes_with_sqlite_archive() {
    routes_filters_masks_and_encodes(ArchiveKind::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn hub_routes_filters_masks_and_encodes_with_postgres_archive() {
    routes_filters_masks_and_encodes(ArchiveKind::Postgres).await;
}

/// Every refusal lands in the hub DLQ with its reason, and the good documents around the bad
/// ones flow on.
#[tokio::test(flavor = "multi_thread")]
async fn hub_dead_letters_every_reason_and_the_stream_goes_on() {
    let mut ex = Exchange::new("dlq", ArchiveKind::Sqlite, "max_document_bytes = 4000", GRAPH);
    ex.start_hub().await;
    let (good1, good1_doc) = tax_doc("nanhai.tax", 10, "南海");
    let (good2, good2_doc) = tax_doc("nanhai.tax", 11, "南海");
    let fresh = || uuid::Uuid::now_v7().to_string();
    let edit = |f: &dyn Fn(&mut serde_json::Value)| {
        let (id, doc) = tax_doc("nanhai.tax", 12, "南海");
        let mut v: serde_json::Value = serde_json::from_slice(&doc).unwrap();
        f(&mut v);
        (id, serde_json::to_vec(&v).unwrap())
    };
    let (schema_id, schema) = edit(&|v| {
        v["body"].as_object_mut().unwrap().remove("name");
    });
    let (invalid_id, invalid) = edit(&|v| v["header"]["op"] = "merge".into());
    let (unknown_id, unknown) = edit(&|v| v["header"]["doc_type"] = "tax.nonexistent".into());
    let (large_id, large) = edit(&|v| v["body"]["address"] = "长".repeat(2000).into());
    let (forged_id, forged) = edit(&|v| v["header"]["sender"]["org"] = "nanhai.other".into());
    let (forbidden_id, forbidden) = edit(&|v| v["header"]["sender"]["org"] = "nanhai.commerce".into());
    let (hash_id, hash) = edit(&|v| v["header"]["content_hash"] = format!("sha256:{}", "0".repeat(64)).into());
    let (nouser_id, nouser) = tax_doc("nanhai.tax", 13, "南海");
    let deep = format!("{}{}", "[".repeat(100), "]".repeat(100));
    let deep = format!(r#"{{"header":{{"id":"{}"}},"body":{{"x":{deep}}}}}"#, fresh());
    // Same id as good1, different content.
    let conflict = String::from_utf8(good1_doc.clone()).unwrap().replace("陈志强", "李四");
    let g = |id: &str| ex.props(id);
    ex.publish(vec![(good1_doc.clone(), g(&good1))]).await;
    ex.take(&ex.topology.subscriber_queue("all"), WAIT, |t| t.docs >= 1)
        .await;
    ex.publish(vec![
        (b"{not json".to_vec(), g("m1")),
        (schema, g(&schema_id)),
        (invalid, g(&invalid_id)),
        (unknown, g(&unknown_id)),
        (large, g(&large_id)),
        (deep.into_bytes(), g("deep")),
        (forged, g(&forged_id)),
        (hash, g(&hash_id)),
        (
            nouser,
            lapin::BasicProperties::default()
                .with_delivery_mode(2)
                .with_message_id(nouser_id.as_str().into()),
        ),
        (conflict.into_bytes(), g(&good1)),
        (
            b"[1, 2".to_vec(),
            wire::batch_properties(Encoding::Json, 2, &ex.user("tax")),
        ),
    ])
    .await;
    // The commerce bureau, as itself, sends a tax registration it may not publish.
    let commerce = props(&forbidden_id, &ex.user("commerce"));
    ex.publish_as("commerce", vec![(forbidden, commerce)]).await;
    ex.publish(vec![(good2_doc, g(&good2))]).await;
    let got = ex
        .take(&ex.topology.subscriber_queue("all"), WAIT, |t| t.docs >= 1)
        .await;
    assert_eq!(
        got.order,
        std::slice::from_ref(&good2),
        "the good document behind the bad ones arrives"
    );

    let dlq = ex.take(&ex.topology.hub_dlq(), WAIT, |t| t.messages.len() >= 12).await;
    let reasons: HashMap<String, String> = dlq
        .messages
        .iter()
        .map(|r| {
            let id = r
                .properties
                .message_id()
                .as_ref()
                .map(|m| m.to_string())
                .unwrap_or_default();
            (id, wire::header_str(&r.properties, header::REASON).unwrap())
        })
        .collect();
    let expect = [
        ("m1", "malformed"),
        (schema_id.as_str(), "schema"),
        (invalid_id.as_str(), "invalid"),
        (unknown_id.as_str(), "unknown_doc_type"),
        (large_id.as_str(), "too_large"),
        ("deep", "too_deep"),
        (forged_id.as_str(), "unauthenticated"),
        (forbidden_id.as_str(), "unauthorized"),
        (hash_id.as_str(), "integrity"),
        (good1.as_str(), "conflict"),
        (nouser_id.as_str(), "unauthenticated"),
    ];
    for (id, reason) in expect {
        assert_eq!(reasons.get(id).map(String::as_str), Some(reason), "{id}: {reasons:?}");
    }
    let reason_list: Vec<&String> = reasons.values().collect();
    assert_eq!(
        reason_list.iter().filter(|r| r.as_str() == "malformed").count(),
        2,
        "bad batch: {reasons:?}"
    );
    // Every dead letter says why in words, and who sent it.
    for r in &dlq.messages {
        assert!(!wire::header_str(&r.properties, header::DETAIL).unwrap().is_empty());
    }
    let schema_detail = dlq
        .messages
        .iter()
        .find(|r| {
            r.properties
                .message_id()
                .as_ref()
                .is_some_and(|m| m.as_str() == schema_id)
        })
        .and_then(|r| wire::header_str(&r.properties, header::DETAIL))
        .unwrap();
    assert!(schema_detail.contains("name"), "{schema_detail}");
    assert_eq!(ex.depth(&ex.topology.ingress_queue()).await, 0);
    assert!(!ex.hub_log(0).contains("panicked"));
}

/// `dlq list` shows without consuming; after the cause is fixed, `dlq retry` sends the document
/// through the hub again and it reaches its subscriber.
#[tokio::test(flavor = "multi_thread")]
async fn dlq_list_shows_and_retry_delivers_after_the_fix() {
    let mut ex = Exchange::new("retry", ArchiveKind::Sqlite, "", GRAPH);
    ex.start_hub().await;
    let (id, doc) = tax_doc("nanhai.commerce", 20, "南海");
    ex.publish_as("commerce", vec![(doc, props(&id, &ex.user("commerce")))])
        .await;
    // Wait for the refusal, without taking it.
    let deadline = std::time::Instant::now() + WAIT;
    while ex.depth(&ex.topology.hub_dlq()).await < 1 {
        assert!(std::time::Instant::now() < deadline, "{}", ex.hub_log(0));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for _ in 0..2 {
        let list = ex.exhub(&["dlq", "list"]);
        let text = stdout(&list);
        assert!(
            text.contains(&id) && text.contains("unauthorized") && text.contains("may not publish"),
            "{text}"
        );
        assert!(text.contains("1 dead-lettered document(s)"), "{text}");
    }
    assert_eq!(ex.depth(&ex.topology.hub_dlq()).await, 1, "listing must not consume");

    // The fix: commerce may now publish tax registrations.
    ex.kill_hubs();
    let config = std::fs::read_to_string(&ex.config).unwrap().replace(
        "publishes = [\"commerce.business_license\"]",
        "publishes = [\"commerce.business_license\", \"tax.registration\"]",
    );
    std::fs::write(&ex.config, config).unwrap();
    ex.start_hub().await;
    let retry = ex.exhub(&["dlq", "retry", "--id", &id]);
    assert!(stdout(&retry).contains("1 document(s) sent back"), "{}", stdout(&retry));
    let got = ex
        .take(&ex.topology.subscriber_queue("all"), WAIT, |t| t.docs >= 1)
        .await;
    assert_eq!(got.order, [id]);
    assert_eq!(ex.depth(&ex.topology.hub_dlq()).await, 0);
}

/// A document published again (a publisher retry) or twice in one batch is archived and routed
/// once; batches go in and come out as batches, per subscriber.
#[tokio::test(flavor = "multi_thread")]
async fn duplicates_route_once_and_batches_stay_batches() {
    let mut ex = Exchange::new("dedupe", ArchiveKind::Sqlite, "", GRAPH);
    ex.start_hub().await;
    let docs: Vec<(String, Vec<u8>)> = (0..10).map(|n| tax_doc("nanhai.tax", 100 + n, "南海")).collect();
    let bodies: Vec<&[u8]> = docs
        .iter()
        .map(|(_, d)| d.as_slice())
        .chain([docs[0].1.as_slice()])
        .collect();
    let batch = wire::encode_batch(Encoding::Json, &bodies);
    let batch_props = wire::batch_properties(Encoding::Json, bodies.len(), &ex.user("tax"));
    ex.publish(vec![(batch.clone(), batch_props.clone())]).await;
    let first = ex
        .take(&ex.topology.subscriber_queue("all"), WAIT, |t| t.docs >= 10)
        .await;
    assert_eq!(first.messages.len(), 1, "one batch in, one batch out");
    assert!(wire::is_batch(&first.messages[0].properties));
    let xml = ex
        .take(&ex.topology.subscriber_queue("nanhai-xml"), WAIT, |t| t.docs >= 10)
        .await;
    assert_eq!(xml.messages.len(), 1);
    assert!(xml.messages[0].docs.iter().all(|d| d.starts_with(b"<document")));

    // Republished: the batch again, and one document alone.
    ex.publish(vec![(batch, batch_props), (docs[3].1.clone(), ex.props(&docs[3].0))])
        .await;
    // A marker published after them arrives only once they were processed.
    let (marker, marker_doc) = tax_doc("nanhai.tax", 999, "南海");
    ex.publish(vec![(marker_doc, ex.props(&marker))]).await;
    let again = ex
        .take(&ex.topology.subscriber_queue("all"), WAIT, |t| t.ids.contains(&marker))
        .await;
    assert_eq!(again.order, [marker], "nothing routed twice");
    let (ids, rows) = ex.archived_ids().await;
    assert_eq!((ids.len(), rows), (11, 11));
}

/// `exhub tail` shows what is routed to a subscriber and leaves it in the subscriber's queue;
/// `exhub replay` sends archived documents again.
#[tokio::test(flavor = "multi_thread")]
async fn tail_watches_without_taking_and_replay_resends() {
    let mut ex = Exchange::new("tail", ArchiveKind::Sqlite, "", GRAPH);
    ex.start_hub().await;
    let mut tail = std::process::Command::new(crate::exhub_bin())
        .args(["tail", "nanhai-xml", "--count", "2"])
        .env("EXHUB_CONFIG", &ex.config)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the tail's queue is bound: its banner goes to stderr after binding.
    let mut stderr = std::io::BufReader::new(tail.stderr.take().unwrap());
    let mut banner = String::new();
    std::io::BufRead::read_line(&mut stderr, &mut banner).unwrap();
    assert!(banner.starts_with("tailing nanhai-xml"), "{banner}");
    let docs: Vec<(String, Vec<u8>)> = (0..3).map(|n| tax_doc("nanhai.tax", 200 + n, "南海")).collect();
    ex.publish(docs.iter().map(|(id, d)| (d.clone(), ex.props(id))).collect())
        .await;
    let out = tail.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(
        text.contains(&docs[0].0) && text.contains("tax.registration\tupsert") && text.contains("xml"),
        "{text}"
    );
    let got = ex
        .take(&ex.topology.subscriber_queue("nanhai-xml"), WAIT, |t| t.docs >= 3)
        .await;
    assert_eq!(got.docs, 3, "the tail took nothing from the subscriber");

    let replay = ex.exhub(&[
        "replay",
        "--to",
        "nanhai-xml",
        "--key",
        &format!("taxpayer_id={}", exhub_schemas::samples::taxpayer_id(201)),
    ]);
    assert!(replay.status.success(), "{}", String::from_utf8_lossy(&replay.stderr));
    assert!(
        stdout(&replay).contains("replayed 1 document(s) to nanhai-xml"),
        "{}",
        stdout(&replay)
    );
    let again = ex
        .take(&ex.topology.subscriber_queue("nanhai-xml"), WAIT, |t| t.docs >= 1)
        .await;
    assert_eq!(again.order, [docs[1].0.clone()]);
    assert_eq!(
        wire::header_str(&again.messages[0].properties, header::REPLAY).as_deref(),
        Some("true")
    );
    assert!(String::from_utf8_lossy(&again.messages[0].docs[0]).starts_with("<?xml"));
    let all = ex.exhub(&["replay", "--to", "all", "--doc-type", "tax.registration"]);
    assert!(
        stdout(&all).contains("replayed 3 document(s) to all"),
        "{}",
        stdout(&all)
    );
}

/// SIGTERM: the hub stops consuming, finishes what it holds, and exits 0; nothing is lost.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_finishes_in_flight_work_and_exits_cleanly() {
    let mut ex = Exchange::new("sigterm", ArchiveKind::Sqlite, "", GRAPH);
    ex.start_hub().await;
    let docs: Vec<(String, Vec<u8>)> = (0..2000).map(|n| tax_doc("nanhai.tax", 300 + n, "顺德")).collect();
    ex.publish(docs.iter().map(|(id, d)| (d.clone(), ex.props(id))).collect())
        .await;
    // Stop it mid-stream: as soon as the first documents are through.
    let first = ex
        .take(&ex.topology.subscriber_queue("all"), WAIT, |t| t.docs >= 1)
        .await;
    let status = ex.terminate_hub();
    assert!(status.success(), "exit {status:?}; log: {}", ex.hub_log(0));
    assert!(ex.hub_log(0).contains("hub stopped cleanly"));
    assert!(
        !ex.hub_log(0).contains("WARN"),
        "a clean stop warns of nothing: {}",
        ex.hub_log(0)
    );
    // What it did not finish is still in the ingress queue; a new hub takes it from there.
    ex.start_hub().await;
    // (A document may come twice — at least once is the contract — so count, then compare ids.)
    let rest = ex
        .take(&ex.topology.subscriber_queue("all"), WAIT, |t| {
            t.docs + first.docs >= 2000
        })
        .await;
    let ids: HashSet<String> = first.ids.iter().chain(&rest.ids).cloned().collect();
    assert_eq!(ids.len(), 2000);
}

/// Plain AMQP subscribers, as a client in any language reads them: one message, one document,
/// `message_id` = the document's id, `type` = its doc type, `content_type` its encoding —
/// even when the source sent a batch. A subscriber that asks for batches gets them.
#[tokio::test]
async fn plain_subscribers_get_one_document_per_message() {
    const FEEDS: &str = r#"
[[subscriber]]
name = "feed-json"
org = "nanhai.commerce"
kind = "amqp"

[[subscriber]]
name = "feed-xml"
org = "nanhai.commerce"
kind = "amqp"
format = "xml"

[[subscriber]]
name = "feed-batched"
org = "nanhai.commerce"
kind = "amqp"
batch = true

[[route]]
name = "feeds"
doc_types = ["tax.registration"]
to = ["feed-json", "feed-xml", "feed-batched"]
"#;
    let mut ex = Exchange::new("feeds", ArchiveKind::Sqlite, "", FEEDS);
    ex.start_hub().await;
    let mut files = Vec::new();
    let mut ids = HashSet::new();
    for n in 1..=5 {
        let (id, doc) = tax_doc("nanhai.tax", n, "南海");
        let path = ex.dir.join(format!("{n}.json"));
        std::fs::write(&path, &doc).unwrap();
        files.push(path.to_str().unwrap().to_owned());
        ids.insert(id);
    }
    // The source sends one batch of five.
    let mut args = vec!["publish", "--as", "nanhai.tax", "--batch", "5"];
    args.extend(files.iter().map(String::as_str));
    let out = ex.exhub(&args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let json = ex
        .take(&ex.topology.subscriber_queue("feed-json"), WAIT, |t| t.docs >= 5)
        .await;
    assert_eq!(json.messages.len(), 5, "one message per document");
    for m in &json.messages {
        // Parsed as any JSON client would: the whole body is one document.
        let body: serde_json::Value = serde_json::from_slice(&m.docs[0]).expect("one JSON document per message");
        let p = &m.properties;
        assert_eq!(
            p.message_id().as_ref().unwrap().as_str(),
            body["header"]["id"].as_str().unwrap()
        );
        assert_eq!(p.kind().as_ref().unwrap().as_str(), "tax.registration");
        assert_eq!(p.content_type().as_ref().unwrap().as_str(), "application/json");
    }
    assert_eq!(json.ids, ids);

    let xml = ex
        .take(&ex.topology.subscriber_queue("feed-xml"), WAIT, |t| t.docs >= 5)
        .await;
    assert_eq!(xml.messages.len(), 5, "one message per document");
    for m in &xml.messages {
        // Parsed as any XML client would: a well-formed document whose root is <document>.
        let mut reader = quick_xml::Reader::from_reader(&m.docs[0][..]);
        let mut buf = Vec::new();
        let mut root = None;
        loop {
            match reader.read_event_into(&mut buf).expect("well-formed XML") {
                quick_xml::events::Event::Start(e) if root.is_none() => {
                    root = Some(e.name().0.to_owned());
                }
                quick_xml::events::Event::Eof => break,
                _ => {}
            }
            buf.clear();
        }
        assert_eq!(root.as_deref(), Some("document"));
        assert_eq!(m.properties.kind().as_ref().unwrap().as_str(), "tax.registration");
        assert_eq!(
            m.properties.content_type().as_ref().unwrap().as_str(),
            "application/xml"
        );
        assert!(ids.contains(m.properties.message_id().as_ref().unwrap().as_str()));
    }

    let batched = ex
        .take(&ex.topology.subscriber_queue("feed-batched"), WAIT, |t| t.docs >= 5)
        .await;
    assert_eq!(
        batched.messages.len(),
        1,
        "a subscriber that asks for batches gets the batch"
    );
    assert!(wire::is_batch(&batched.messages[0].properties));
}

/// `exhub run` supervises its parts: a source that stops with an error retrying cannot fix
/// (here, a mapped table that does not exist) is logged with its cause and stops the whole
/// exchange, which exits non-zero — it does not wait for the hub to end first.
#[tokio::test]
async fn run_stops_the_exchange_when_a_source_fails() {
    const BROKEN_SOURCE: &str = r#"
[[source]]
name = "missing-table"
org = "nanhai.tax"
kind = "mysql"
url = "mysql://root@127.0.0.1:3306/mysql"
  [[source.table]]
  table = "exhub_no_such_table"
  doc_type = "tax.registration"
  key = ["nsrsbh"]
  fields = { taxpayer_id = "nsrsbh", name = "nsrmc", registered_at = "djrq", registration_type = "djzclx", taxpayer_status = "nsrzt", district = "ssqx", capital = "zczb", updated_at = "xgsj" }
"#;
    let ex = Exchange::new(
        "run-fails",
        ArchiveKind::Sqlite,
        "",
        &format!("{GRAPH}\n{BROKEN_SOURCE}"),
    );
    let mut child = std::process::Command::new(crate::exhub_bin())
        .args(["run"])
        .env("EXHUB_CONFIG", &ex.config)
        .current_dir(&ex.dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("exhub run kept running after its source failed");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut log = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut log).unwrap();
    assert!(!status.success(), "{log}");
    assert!(
        log.contains("source missing-table") && log.contains("exhub_no_such_table does not exist"),
        "the failing part and its cause are named:\n{log}"
    );
}

/// `GET /metrics` on the admin address, read as a Prometheus scraper reads it: the documented
/// names count what went through, by org, doc type, reason and subscriber.
#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_what_the_hub_did() {
    let mut ex = Exchange::new("metrics", ArchiveKind::Sqlite, "admin = \"127.0.0.1:0\"", GRAPH);
    ex.start_hub().await;
    let addr = admin_address(&ex);
    let (a, a_doc) = tax_doc("nanhai.tax", 1, "南海");
    let (b, b_doc) = tax_doc("nanhai.tax", 2, "顺德");
    ex.publish(vec![
        (a_doc.clone(), ex.props(&a)),
        (b_doc, ex.props(&b)),
        (b"{not json".to_vec(), ex.props("m1")),
    ])
    .await;
    let received = r#"exhub_documents_received_total{doc_type="tax.registration",org="nanhai.tax"}"#;
    let published_all = r#"exhub_copies_published_total{subscriber="all"}"#;
    let published_xml = r#"exhub_copies_published_total{subscriber="nanhai-xml"}"#;
    wait_for_metrics(
        &addr,
        &[
            (received, 2.0),
            (
                r#"exhub_documents_refused_total{org="nanhai.tax",reason="malformed"}"#,
                1.0,
            ),
            (published_all, 2.0),
            (published_xml, 1.0),
            ("exhub_archived_after_seconds_count", 2.0),
            (
                r#"exhub_documents_routed_total{route="everything",subscriber="all"}"#,
                2.0,
            ),
            (
                r#"exhub_documents_routed_total{route="nanhai-only",subscriber="nanhai-xml"}"#,
                1.0,
            ),
        ],
    )
    .await;
    // The broker's depths: nobody consumes the subscribers' queues here; the hub's two workers
    // consume the ingress. (A reading from before the copies arrived is waited out.)
    let all_waiting = r#"exhub_queue_messages{queue="subscriber",subscriber="all"}"#;
    let deadline = std::time::Instant::now() + WAIT;
    let samples = loop {
        let samples = wait_for_metrics(
            &addr,
            &[
                (r#"exhub_queue_consumers{queue="ingress",subscriber=""}"#, 2.0),
                (r#"exhub_queue_consumers{queue="subscriber",subscriber="all"}"#, 0.0),
                (r#"exhub_queue_messages{queue="subscriber_dlq",subscriber="all"}"#, 0.0),
            ],
        )
        .await;
        if samples.get(all_waiting).is_some_and(|v| *v > 0.0) || std::time::Instant::now() > deadline {
            break samples;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let waiting = samples[all_waiting];
    assert!((1.0..=2.0).contains(&waiting), "{waiting} messages for `all`");
    // One archive write per hub batch; the refusal is audited with one.
    let writes = samples["exhub_archive_write_seconds_count"];
    assert!((1.0..=3.0).contains(&writes), "{writes} archive writes");
    // Sent again once its copies are recorded: a duplicate, archived and copied once. Then a
    // new document for `all` only, whose copy shows that the duplicate's batch was through
    // (mostly: the two may go to different workers).
    ex.publish(vec![(a_doc.clone(), ex.props(&a))]).await;
    let (c, c_doc) = tax_doc("nanhai.tax", 3, "顺德");
    ex.publish(vec![(c_doc, ex.props(&c))]).await;
    wait_for_metrics(
        &addr,
        &[
            (
                r#"exhub_documents_duplicate_total{doc_type="tax.registration",org="nanhai.tax"}"#,
                1.0,
            ),
            (received, 3.0),
            (published_all, 3.0),
            (published_xml, 1.0),
        ],
    )
    .await;
    // The same id with other content: a conflict, refused, and not a duplicate.
    let conflict = String::from_utf8(a_doc).unwrap().replace("陈志强", "李四");
    assert!(conflict.contains("李四"), "the sample document has the name to change");
    ex.publish(vec![(conflict.into_bytes(), ex.props(&a))]).await;
    wait_for_metrics(
        &addr,
        &[
            (
                r#"exhub_documents_refused_total{org="nanhai.tax",reason="conflict"}"#,
                1.0,
            ),
            (
                r#"exhub_documents_duplicate_total{doc_type="tax.registration",org="nanhai.tax"}"#,
                1.0,
            ),
            (received, 3.0),
            (published_all, 3.0),
        ],
    )
    .await;
}

/// Scrapes `GET /metrics` at `addr` until every `(sample, value)` of `want` holds; returns the
/// last scrape's samples.
pub async fn wait_for_metrics(addr: &str, want: &[(&str, f64)]) -> HashMap<String, f64> {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let (status, content_type, body) = http_get(addr, "/metrics", None).await;
        assert_eq!(status, 200, "{body}");
        assert!(
            content_type.starts_with("application/openmetrics-text"),
            "{content_type}"
        );
        let samples = scrape(&body);
        let wrong: Vec<String> = want
            .iter()
            .filter(|(name, value)| samples.get(*name) != Some(value))
            .map(|(name, value)| format!("{name} = {value} (got {:?})", samples.get(*name)))
            .collect();
        if wrong.is_empty() {
            return samples;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not as expected: {wrong:#?}\n{body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every sample of a scrape by its name and labels as Prometheus writes them (labels sorted by
/// name), through a Prometheus text parser.
fn scrape(body: &str) -> HashMap<String, f64> {
    let lines = body.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("the text parses");
    scrape
        .samples
        .into_iter()
        .filter_map(|s| {
            let value = match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => return None,
            };
            let mut labels: Vec<(String, String)> = s.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            labels.sort();
            let name = if labels.is_empty() {
                s.metric
            } else {
                let text: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
                format!("{}{{{}}}", s.metric, text.join(","))
            };
            Some((name, value))
        })
        .collect()
}

/// With a metrics token, the hub refuses a scrape without it or with another one, and serves
/// one with it; the token never reaches the log.
#[tokio::test(flavor = "multi_thread")]
async fn metrics_with_a_token_refuse_scrapes_without_it() {
    let token = format!("tok-{}", uuid::Uuid::now_v7().simple());
    // Written before the exchange is made: `exhub provision` checks routes.toml, and with it
    // that the token is there.
    let file = std::env::temp_dir().join(format!("{token}.token"));
    std::fs::write(&file, format!("{token}\n")).unwrap();
    // Owner-only, as every secret file must be.
    std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let hub = format!("admin = \"127.0.0.1:0\"\nmetrics_token_file = \"{}\"", file.display());
    let mut ex = Exchange::new("metrics-token", ArchiveKind::Sqlite, &hub, GRAPH);
    ex.start_hub().await;
    let addr = admin_address(&ex);
    for bearer in [None, Some("tok-guessed"), Some(&token[..token.len() - 1])] {
        let (status, _, body) = http_get(&addr, "/metrics", bearer).await;
        assert_eq!(status, 401, "{bearer:?}: {body}");
        assert!(!body.contains("exhub_"), "{body}");
    }
    let (status, _, body) = http_get(&addr, "/metrics", Some(&token)).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("exhub_archive_write_seconds_count"), "{body}");
    assert!(!ex.hub_log(0).contains(&token), "the token is in the log");
    // Malformed and oversized requests are refused, and disturb nothing: no metrics in the
    // answer, and the next scrape is served as before.
    let huge = format!(
        "GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(1 << 20)
    );
    for raw in [b"\x00\x01 not http at all\r\n\r\n".to_vec(), huge.into_bytes()] {
        let answer = http_raw(&addr, &raw).await;
        assert!(!answer.contains("exhub_"), "{answer}");
        assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 4"), "{answer}");
    }
    let (status, _, body) = http_get(&addr, "/metrics", Some(&token)).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("exhub_archive_write_seconds_count"), "{body}");
    std::fs::remove_file(&file).unwrap();
}

/// Sends `raw` bytes to `addr` and returns what came back before the connection closed (the
/// server may close it before it has read everything: a write error then is its answer).
async fn http_raw(addr: &str, raw: &[u8]) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _ = stream.write_all(raw).await;
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    String::from_utf8_lossy(&answer).into_owned()
}

/// The admin server's address, from the hub's log (it binds port 0).
pub fn admin_address(ex: &Exchange) -> String {
    let log = ex.hub_log(0);
    log.lines()
        .find(|l| l.contains("admin server listening"))
        .and_then(|l| l.split("address=").nth(1))
        .and_then(|a| a.split_whitespace().next())
        .unwrap_or_else(|| panic!("no admin address in the log: {log}"))
        .to_owned()
}

/// A plain HTTP/1.1 GET, with a bearer token if given: status, content type and body.
async fn http_get(addr: &str, path: &str, bearer: Option<&str>) -> (u16, String, String) {
    let auth = bearer
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let r = http(addr, "GET", path, &auth, "").await;
    let content_type = r.header("content-type").unwrap_or_default();
    (r.status, content_type, r.body)
}

/// An HTTP response as a test reads it.
pub struct HttpResponse {
    /// The status code.
    pub status: u16,
    /// The header lines.
    pub head: String,
    /// The body.
    pub body: String,
}

impl HttpResponse {
    /// The first header `name` (lower case), trimmed.
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.eq_ignore_ascii_case(name)).then(|| v.trim().to_owned())
        })
    }
}

/// One plain HTTP/1.1 request: `extra` header lines (each ending in CRLF) and a form body.
pub async fn http(addr: &str, method: &str, path: &str, extra: &str, body: &str) -> HttpResponse {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let form = if body.is_empty() {
        String::new()
    } else {
        format!(
            "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n",
            body.len()
        )
    };
    let request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{extra}{form}Connection: close\r\n\r\n{body}");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let response = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    HttpResponse {
        status,
        head: head.to_owned(),
        body: body.to_owned(),
    }
}

/// `exhub stats` counts what the archive holds: per org, the documents and their copies as
/// the archive's own tables say, and the refusals with their reasons.
#[tokio::test(flavor = "multi_thread")]
async fn stats_count_what_the_archive_holds() {
    let mut ex = Exchange::new("stats", ArchiveKind::Postgres, "", GRAPH);
    ex.start_hub().await;
    let (a, a_doc) = tax_doc("nanhai.tax", 1, "南海");
    let (b, b_doc) = tax_doc("nanhai.tax", 2, "顺德");
    ex.publish(vec![
        (a_doc, ex.props(&a)),
        (b_doc, ex.props(&b)),
        (b"{not json".to_vec(), ex.props("m1")),
    ])
    .await;
    let licence = crate::root().join("examples/documents/commerce.business_license.xml");
    let out = ex.exhub(&["publish", "--as", "nanhai.commerce", licence.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stats = |by: &str| -> Vec<serde_json::Value> {
        let out = ex.exhub(&["stats", "--since", "2000-01-01", "--by", by, "--format", "json"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let row = |rows: &[serde_json::Value], key: &str| rows.iter().find(|r| r["key"] == key).cloned();
    let deadline = std::time::Instant::now() + WAIT;
    let rows = loop {
        let rows = stats("org");
        let done = row(&rows, "nanhai.tax").is_some_and(|r| r["documents"] == 2 && r["refused"]["malformed"] == 1)
            && row(&rows, "nanhai.commerce").is_some_and(|r| r["documents"] == 1);
        if done {
            break rows;
        }
        assert!(std::time::Instant::now() < deadline, "{rows:#?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // The same figures straight from the archive's tables.
    let db = ex.archive_url.rsplit('/').next().unwrap().to_owned();
    let counted = crate::services::psql(
        &db,
        "SELECT sender_org || ' ' || count(*) || ' ' || sum(cardinality(string_to_array(subscribers, ' '))) \
         FROM exhub_documents GROUP BY sender_org ORDER BY sender_org",
    );
    let from_stats: Vec<String> = rows
        .iter()
        .filter(|r| r["documents"].as_u64() > Some(0))
        .map(|r| format!("{} {} {}", r["key"].as_str().unwrap(), r["documents"], r["routed"]))
        .collect();
    assert_eq!(from_stats.join("\n"), counted);
    assert_eq!(
        counted, "nanhai.commerce 1 1\nnanhai.tax 2 3",
        "the routes send a to two subscribers"
    );
    // Per subscriber: `all` had every document, `nanhai-xml` the one from 南海.
    let subs = stats("subscriber");
    assert_eq!(row(&subs, "all").unwrap()["documents"], 3, "{subs:#?}");
    assert_eq!(row(&subs, "nanhai-xml").unwrap()["documents"], 1, "{subs:#?}");
    // The CSV has its header and a row per org (and one for the refusals' unknown doc type).
    let csv = ex.exhub(&["stats", "--since", "2000-01-01", "--by", "doc_type", "--format", "csv"]);
    let csv = stdout(&csv);
    assert!(csv.starts_with("key,documents,refused,routed,applied"), "{csv}");
    assert!(
        csv.contains("(refused before admission),0,malformed:1,0,0,0,,"),
        "{csv}"
    );
}
