//! Trust, tried as a hostile department would: after `exhub provision`, the broker itself
//! refuses every attempt of one org's login to read, forge or delete another's data, and the hub
//! refuses what the broker cannot judge (forged dead letters, oversized batches, refusals whose
//! detail would not fit a frame) without stopping for anyone else.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use exhub_connect::wire::{self, header};
use exhub_schemas::Encoding;
use lapin::options::{
    BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeleteOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};

use crate::exchange::{ArchiveKind, Exchange, props, tax_doc};
use crate::stdout;

const WAIT: Duration = Duration::from_secs(30);

/// Two departments, each with a feed of its own.
const GRAPH: &str = r#"
[[subscriber]]
name = "tax-feed"
org = "nanhai.tax"
kind = "amqp"

[[subscriber]]
name = "commerce-feed"
org = "nanhai.commerce"
kind = "amqp"

[[route]]
name = "registrations"
doc_types = ["tax.registration"]
to = ["tax-feed"]

[[route]]
name = "licences"
doc_types = ["commerce.business_license"]
to = ["commerce-feed"]
"#;

async fn exchange(tag: &str, hub_extra: &str) -> Exchange {
    let mut ex = Exchange::new(tag, ArchiveKind::Sqlite, hub_extra, GRAPH);
    ex.start_hub().await;
    ex
}

/// A fresh channel (with confirms) logged in as `url`.
async fn channel(url: &str) -> (Connection, Channel) {
    let conn = Connection::connect(url, ConnectionProperties::default()).await.unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    (conn, ch)
}

/// Asserts that the broker refused `what` with ACCESS_REFUSED.
fn refused<T: std::fmt::Debug>(what: &str, result: lapin::Result<T>) {
    match result {
        Err(e) => assert!(
            format!("{e:?}").contains("ACCESS_REFUSED"),
            "{what}: refused, but how? {e:?}"
        ),
        Ok(v) => panic!("{what}: the broker allowed it ({v:?})"),
    }
}

/// Publishes as the channel's login and waits for the confirm (a refused publish closes the
/// channel, which fails the confirm).
async fn publish(ch: &Channel, exchange: &str, key: &str, body: &[u8], props: BasicProperties) -> lapin::Result<()> {
    let confirm = ch
        .basic_publish(exchange.into(), key.into(), BasicPublishOptions::default(), body, props)
        .await?
        .await?;
    assert!(confirm.is_ack(), "nacked");
    Ok(())
}

/// Every attack of the issue, as the commerce bureau's own login, refused by RabbitMQ; the
/// exchange runs on as if nothing happened.
#[tokio::test(flavor = "multi_thread")]
async fn the_broker_refuses_a_hostile_department() {
    let ex = exchange("hostile", "").await;
    let t = ex.topology.clone();
    let hostile = ex.url_of("commerce");
    let (_, victim_doc) = tax_doc("nanhai.tax", 1, "南海");
    let forged = props("forged", &ex.user("commerce"));

    // Reading another department's queue, its DLQ, the hub's DLQ.
    for queue in [
        t.subscriber_queue("tax-feed"),
        t.subscriber_dlq("tax-feed"),
        t.hub_dlq(),
        t.ingress_queue(),
    ] {
        let (_c, ch) = channel(&hostile).await;
        refused(
            &format!("basic.get {queue}"),
            ch.basic_get(queue.as_str().into(), BasicGetOptions::default()).await,
        );
        let (_c, ch) = channel(&hostile).await;
        refused(
            &format!("basic.consume {queue}"),
            ch.basic_consume(
                queue.as_str().into(),
                "spy".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await,
        );
    }
    // A private queue to bind to the out or in exchange (a tap on everyone's copies).
    let (_c, ch) = channel(&hostile).await;
    let private = QueueDeclareOptions {
        exclusive: true,
        auto_delete: true,
        ..Default::default()
    };
    refused(
        "declaring a private queue",
        ch.queue_declare("".into(), private, FieldTable::default()).await,
    );
    for exchange in [t.out_exchange(), t.ingress_exchange(), t.status_exchange()] {
        let (_c, ch) = channel(&hostile).await;
        refused(
            &format!("binding its own queue to {exchange}"),
            ch.queue_bind(
                t.subscriber_queue("commerce-feed").as_str().into(),
                exchange.as_str().into(),
                "tax-feed".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await,
        );
    }
    // Publishing around the hub: to the out exchange, the default exchange, the dead letters.
    for (exchange, key) in [
        (t.out_exchange(), "tax-feed".to_owned()),
        (String::new(), t.subscriber_queue("tax-feed")),
        (t.dead_letter_exchange(), t.hub_dlq()),
        (t.dead_letter_exchange(), t.subscriber_dlq("tax-feed")),
    ] {
        let (_c, ch) = channel(&hostile).await;
        refused(
            &format!("publishing to {exchange:?} with key {key}"),
            publish(&ch, &exchange, &key, &victim_doc, forged.clone()).await,
        );
    }
    // Deleting or re-declaring the hub's resources.
    let (_c, ch) = channel(&hostile).await;
    refused(
        "deleting the ingress queue",
        ch.queue_delete(t.ingress_queue().as_str().into(), QueueDeleteOptions::default())
            .await,
    );
    let (_c, ch) = channel(&hostile).await;
    let classic = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    refused(
        "re-declaring the ingress queue as a classic queue",
        ch.queue_declare(t.ingress_queue().as_str().into(), classic, FieldTable::default())
            .await,
    );
    for exchange in [t.ingress_exchange(), t.status_exchange()] {
        let (_c, ch) = channel(&hostile).await;
        refused(
            &format!("deleting {exchange}"),
            ch.exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
                .await,
        );
    }

    // What the department may do: read its own feed, publish to the hub.
    let (_c, ch) = channel(&hostile).await;
    assert!(
        ch.basic_get(
            t.subscriber_queue("commerce-feed").as_str().into(),
            BasicGetOptions::default()
        )
        .await
        .is_ok()
    );
    // The exchange runs on: the tax bureau's registration reaches the tax feed, and nothing
    // forged came with it.
    let (id, doc) = tax_doc("nanhai.tax", 2, "南海");
    ex.publish(vec![(doc, ex.props(&id))]).await;
    let got = ex
        .take(&t.subscriber_queue("tax-feed"), Duration::from_secs(3), |t| t.docs >= 2)
        .await;
    assert_eq!(got.order, [id], "only the genuine document");
    assert!(!ex.hub_log(0).contains("PRECONDITION"), "{}", ex.hub_log(0));
}

/// `exhub check` refuses what would undo the isolation: an org logging in as the hub, two orgs
/// sharing a login, an adapter logging in as someone else, names that are paths.
#[test]
fn check_refuses_shared_logins_and_path_names() {
    let dir = crate::scratch("trust-check");
    let config = dir.join("routes.toml");
    std::fs::write(
        &config,
        r#"
[hub]
amqp = "amqp://exhub-hub:pw@127.0.0.1:5672/%2f"
archive = "sqlite://a.db"

[[org]]
id = "nanhai.tax"
name = "税务"
publishes = ["tax.registration"]
amqp_user = "exhub-hub"

[[org]]
id = "nanhai.commerce"
name = "市场监管"
publishes = ["commerce.business_license"]
amqp_user = "shared"

[[org]]
id = "nanhai.social"
name = "社保"
amqp_user = "shared"

[[source]]
name = "../../etc/x"
org = "nanhai.commerce"
kind = "postgres"
url = "postgres://u@127.0.0.1/db"
amqp = "amqp://nanhai.tax@127.0.0.1:5672/%2f"

[[source]]
name = "guest-in-disguise"
org = "nanhai.commerce"
kind = "postgres"
url = "postgres://u@127.0.0.1/db"
amqp = "amqp://:pw@127.0.0.1:5672/%2f"

[[subscriber]]
name = "Feed With Spaces"
org = "nanhai.commerce"
kind = "amqp"

[[route]]
name = "r"
doc_types = ["commerce.business_license"]
to = ["Feed With Spaces"]
"#,
    )
    .unwrap();
    let out = std::process::Command::new(crate::exhub_bin())
        .args(["check", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    for expected in [
        "org \"nanhai.tax\": AMQP user \"exhub-hub\" is the hub's own user",
        "org \"nanhai.social\": AMQP user \"shared\" is already org \"nanhai.commerce\"'s",
        "source \"../../etc/x\": name \"../../etc/x\": lower-case letters",
        "logs in as AMQP user \"nanhai.tax\", but its org \"nanhai.commerce\" is \"shared\"",
        "subscriber \"Feed With Spaces\": name \"Feed With Spaces\"",
        "source \"guest-in-disguise\" → amqp: has a password but no user",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    // And a source whose name is a path never gets as far as its checkpoint.
    let reset = std::process::Command::new(crate::exhub_bin())
        .args(["source", "../../etc/x", "--reset", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(reset.status.code(), Some(2));
}

/// A dead letter in the hub DLQ that the hub did not write (here put there by the broker's
/// administrator, standing in for any login that could once write there) is retried as its real
/// publisher, not as the org its `x-exhub-user` header names.
#[tokio::test(flavor = "multi_thread")]
async fn a_forged_dlq_message_is_retried_as_its_real_sender() {
    let ex = exchange("forged-retry", "").await;
    let (id, doc) = tax_doc("nanhai.tax", 3, "南海");
    let admin = crate::exchange::connect().await.unwrap();
    let ch = admin.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    let forged = wire::with_header(props(&id, "guest"), header::USER, &ex.user("tax"));
    let forged = wire::with_header(forged, header::REASON, "schema");
    publish(
        &ch,
        &ex.topology.dead_letter_exchange(),
        &ex.topology.hub_dlq(),
        &doc,
        forged,
    )
    .await
    .unwrap();
    let retry = ex.exhub(&["dlq", "retry", "--all"]);
    assert!(stdout(&retry).contains("1 document(s) sent back"), "{}", stdout(&retry));
    // Refused again, now as what it is: not from the tax bureau's login.
    let p = refused_and_not_routed(&ex).await;
    assert_eq!(wire::header_str(&p, header::REASON).as_deref(), Some("unauthenticated"));
    assert_eq!(wire::header_str(&p, header::USER).as_deref(), Some("guest"));
}

/// The first message of the hub DLQ (taken), once nothing reached the tax feed meanwhile.
async fn refused_and_not_routed(ex: &Exchange) -> BasicProperties {
    let dlq = ex.take(&ex.topology.hub_dlq(), WAIT, |t| !t.messages.is_empty()).await;
    let feed = ex
        .take(&ex.topology.subscriber_queue("tax-feed"), Duration::from_secs(1), |t| {
            t.docs >= 1
        })
        .await;
    assert_eq!(feed.docs, 0, "a refused document was routed");
    dlq.messages[0].properties.clone()
}

/// Refusals whose detail would be huge (a 12,000-character name, a 40,000-character sender org)
/// are dead-lettered with the detail cut, and the next valid document is routed at once — no
/// stuck worker, however many such documents come.
#[tokio::test(flavor = "multi_thread")]
async fn huge_refusals_are_cut_and_the_stream_goes_on() {
    let ex = exchange("huge", "").await;
    let edit = |n: u64, f: &dyn Fn(&mut serde_json::Value)| {
        let (id, doc) = tax_doc("nanhai.tax", n, "南海");
        let mut v: serde_json::Value = serde_json::from_slice(&doc).unwrap();
        f(&mut v);
        (id, serde_json::to_vec(&v).unwrap())
    };
    let mut bad = Vec::new();
    for n in 0..4 {
        bad.push(edit(10 + n, &|v| v["body"]["name"] = "名".repeat(12_000).into()));
        bad.push(edit(20 + n, &|v| {
            v["header"]["sender"]["org"] = "x".repeat(40_000).into()
        }));
    }
    ex.publish(bad.iter().map(|(id, d)| (d.clone(), ex.props(id))).collect())
        .await;
    let (good, good_doc) = tax_doc("nanhai.tax", 30, "南海");
    let sent = Instant::now();
    ex.publish(vec![(good_doc, ex.props(&good))]).await;
    let got = ex
        .take(&ex.topology.subscriber_queue("tax-feed"), WAIT, |t| t.docs >= 1)
        .await;
    assert_eq!(got.order, std::slice::from_ref(&good));
    assert!(sent.elapsed() < Duration::from_secs(5), "took {:?}", sent.elapsed());
    let dlq = ex.take(&ex.topology.hub_dlq(), WAIT, |t| t.messages.len() >= 8).await;
    let reasons: HashMap<String, (String, String)> = dlq
        .messages
        .iter()
        .map(|r| {
            let p = &r.properties;
            let id = p.message_id().as_ref().map(|m| m.to_string()).unwrap_or_default();
            let reason = wire::header_str(p, header::REASON).unwrap_or_default();
            (id, (reason, wire::header_str(p, header::DETAIL).unwrap_or_default()))
        })
        .collect();
    for (i, (id, _)) in bad.iter().enumerate() {
        let (reason, detail) = &reasons[id];
        assert_eq!(
            reason,
            if i % 2 == 0 { "schema" } else { "unauthenticated" },
            "{detail}"
        );
        assert!(detail.len() <= wire::HEADER_MAX, "{} bytes", detail.len());
        assert!(detail.contains('…'), "the echoed value is cut: {detail}");
    }
    let log = ex.hub_log(0);
    assert!(!log.contains("FRAME") && !log.contains("frame"), "{log}");
    assert_eq!(ex.depth(&ex.topology.ingress_queue()).await, 0);
}

/// A 200 KB batch message of 100,000 junk items is one dead letter, not 100,000, and the hub's
/// memory stays small; a batch whose `x-exhub-count` lies is refused whole.
#[tokio::test(flavor = "multi_thread")]
async fn junk_batches_are_one_dead_letter_each() {
    let ex = exchange("junk-batch", "").await;
    let tax = ex.user("tax");
    let junk = format!("[{}1]", "1,".repeat(99_999)).into_bytes();
    let (a, doc_a) = tax_doc("nanhai.tax", 40, "南海");
    let (b, doc_b) = tax_doc("nanhai.tax", 41, "南海");
    let lying = wire::encode_batch(Encoding::Json, &[doc_a.as_slice(), doc_b.as_slice()]);
    let with_id = |p: BasicProperties, id: &str| p.with_message_id(id.into());
    ex.publish(vec![
        (
            junk,
            with_id(wire::batch_properties(Encoding::Json, 100_000, &tax), "junk"),
        ),
        (lying, with_id(wire::batch_properties(Encoding::Json, 3, &tax), "lying")),
    ])
    .await;
    let (good, good_doc) = tax_doc("nanhai.tax", 42, "南海");
    ex.publish(vec![(good_doc, ex.props(&good))]).await;
    let got = ex
        .take(&ex.topology.subscriber_queue("tax-feed"), WAIT, |t| t.docs >= 1)
        .await;
    assert_eq!(got.order, [good], "neither {a} nor {b} of the lying batch was routed");
    let dlq = ex
        .take(&ex.topology.hub_dlq(), Duration::from_secs(3), |t| {
            t.messages.len() >= 3
        })
        .await;
    let mut reasons: Vec<(String, String)> = dlq
        .messages
        .iter()
        .map(|r| {
            let p = &r.properties;
            (
                p.message_id().as_ref().map(|m| m.to_string()).unwrap_or_default(),
                wire::header_str(p, header::REASON).unwrap_or_default(),
            )
        })
        .collect();
    reasons.sort();
    assert_eq!(
        reasons,
        [
            ("junk".to_owned(), "too_large".to_owned()),
            ("lying".to_owned(), "malformed".to_owned())
        ],
        "one dead letter per bad batch"
    );
    let peak_kb = ex.hub_peak_rss_kb(0);
    assert!(peak_kb < 64 * 1024, "hub peak RSS {peak_kb} kB");
}

/// A department's dead letter goes, through the hub, into its own subscriber's DLQ only.
#[tokio::test(flavor = "multi_thread")]
async fn dead_letters_are_filed_only_for_the_senders_own_subscribers() {
    let ex = exchange("participant-dlq", "").await;
    let letter = |id: &str, subscriber: &str| {
        let p = props(id, &ex.user("commerce")).with_type(wire::DEAD_LETTER_TYPE.into());
        let p = wire::with_header(p, header::REASON, "apply");
        let p = wire::with_header(p, header::DETAIL, &"d".repeat(50_000));
        (b"{}".to_vec(), wire::with_header(p, header::SUBSCRIBER, subscriber))
    };
    ex.publish_as(
        "commerce",
        vec![letter("own", "commerce-feed"), letter("other", "tax-feed")],
    )
    .await;
    let own = ex
        .take(&ex.topology.subscriber_dlq("commerce-feed"), WAIT, |t| {
            !t.messages.is_empty()
        })
        .await;
    let p = &own.messages[0].properties;
    assert_eq!(p.message_id().as_ref().map(|m| m.as_str()), Some("own"));
    assert_eq!(wire::header_str(p, header::REASON).as_deref(), Some("apply"));
    assert_eq!(wire::header_str(p, header::USER), Some(ex.user("commerce")));
    assert!(wire::header_str(p, header::DETAIL).unwrap().len() <= wire::HEADER_MAX);
    let hub = ex.take(&ex.topology.hub_dlq(), WAIT, |t| !t.messages.is_empty()).await;
    let p = &hub.messages[0].properties;
    assert_eq!(p.message_id().as_ref().map(|m| m.as_str()), Some("other"));
    assert_eq!(wire::header_str(p, header::REASON).as_deref(), Some("unauthorized"));
    assert_eq!(ex.depth(&ex.topology.subscriber_dlq("tax-feed")).await, 0);
}

/// Adds `lines` (TOML) after the line of `org`'s AMQP user (or after `[hub]` for "hub").
fn add_to(ex: &Exchange, who: &str, lines: &str) {
    let text = std::fs::read_to_string(&ex.config).unwrap();
    let anchor = match who {
        "hub" => "[hub]\n".to_owned(),
        short => format!("amqp_user = \"{}\"\n", ex.user(short)),
    };
    assert!(text.contains(&anchor), "{anchor}");
    std::fs::write(&ex.config, text.replacen(&anchor, &format!("{anchor}{lines}\n"), 1)).unwrap();
}

/// `exhub keys generate` for `who` (`--org nanhai.tax` or `--hub`): its public key line.
fn generate_key(ex: &Exchange, who: &[&str], alg: &str) -> String {
    let mut args = vec!["keys", "generate", "--alg", alg];
    args.extend_from_slice(who);
    let out = ex.exhub(&args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    stdout(&out).trim().to_owned()
}

/// Departments that sign (the tax bureau with SM2, required; the commerce bureau with
/// Ed25519): signed documents pass and their proof is archived; an unsigned, a tampered and a
/// stranger-signed message from a department that must sign are refused as `signature`.
#[tokio::test(flavor = "multi_thread")]
async fn signed_documents_pass_and_unsigned_or_tampered_ones_are_refused() {
    let mut ex = Exchange::new("signed", ArchiveKind::Sqlite, "", GRAPH);
    let tax_key = generate_key(&ex, &["--org", "nanhai.tax"], "sm2");
    let commerce_key = generate_key(&ex, &["--org", "nanhai.commerce", "--name", "k1"], "ed25519");
    assert!(tax_key.starts_with("sm2 nanhai.tax#"), "{tax_key}");
    assert!(
        commerce_key.starts_with("ed25519 nanhai.commerce#k1 "),
        "{commerce_key}"
    );
    add_to(
        &ex,
        "tax",
        &format!("public_keys = [\"{tax_key}\"]\nrequire_signature = true"),
    );
    add_to(&ex, "commerce", &format!("public_keys = [\"{commerce_key}\"]"));
    let check = ex.exhub(&["check"]);
    assert!(check.status.success(), "{}", stdout(&check));
    ex.start_hub().await;

    // Signed by `exhub publish` with each org's key: routed.
    let (signed, signed_doc) = tax_doc("nanhai.tax", 50, "南海");
    std::fs::write(ex.dir.join("signed.json"), &signed_doc).unwrap();
    let out = ex.exhub(&["publish", "--as", "nanhai.tax", "signed.json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let licence = crate::root().join("examples/documents/commerce.business_license.xml");
    let fresh = regex_free_replace_id(&std::fs::read_to_string(&licence).unwrap());
    std::fs::write(ex.dir.join("licence.xml"), &fresh).unwrap();
    let out = ex.exhub(&["publish", "--as", "nanhai.commerce", "licence.xml"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let got = ex
        .take(&ex.topology.subscriber_queue("tax-feed"), WAIT, |t| t.docs >= 1)
        .await;
    assert_eq!(got.order, std::slice::from_ref(&signed));
    ex.take(&ex.topology.subscriber_queue("commerce-feed"), WAIT, |t| t.docs >= 1)
        .await;

    // Unsigned, tampered after signing, signed by a key the org does not have: refused.
    let (unsigned, unsigned_doc) = tax_doc("nanhai.tax", 51, "南海");
    let (tampered, tampered_doc) = tax_doc("nanhai.tax", 52, "南海");
    let key_line = std::fs::read_to_string(ex.dir.join("secrets/nanhai.tax.signing-key")).unwrap();
    let key = exhub_connect::sign::SigningKey::from_line(key_line.trim()).unwrap();
    let tampered_props = wire::signed(ex.props(&tampered), Some(&key), &[&tampered_doc]);
    let changed = String::from_utf8(tampered_doc.clone())
        .unwrap()
        .replace("陈志强", "李四");
    let (stranger, stranger_doc) = tax_doc("nanhai.tax", 53, "南海");
    let other = exhub_connect::sign::SigningKey::generate(exhub_connect::sign::Alg::Sm2, "nanhai.tax#forged").unwrap();
    let stranger_props = wire::signed(ex.props(&stranger), Some(&other), &[&stranger_doc]);
    ex.publish(vec![
        (unsigned_doc, ex.props(&unsigned)),
        (changed.into_bytes(), tampered_props),
        (stranger_doc, stranger_props),
    ])
    .await;
    let dlq = ex.take(&ex.topology.hub_dlq(), WAIT, |t| t.messages.len() >= 3).await;
    let mut reasons: Vec<(String, String, String)> = dlq
        .messages
        .iter()
        .map(|r| {
            let p = &r.properties;
            (
                p.message_id().as_ref().map(|m| m.to_string()).unwrap_or_default(),
                wire::header_str(p, header::REASON).unwrap_or_default(),
                wire::header_str(p, header::DETAIL).unwrap_or_default(),
            )
        })
        .collect();
    reasons.sort();
    let mut expected = vec![
        (unsigned, "requires signatures"),
        (tampered, "does not match"),
        (stranger, "is not one of the signer's keys"),
    ];
    expected.sort();
    for ((id, reason, detail), (want_id, want_detail)) in reasons.iter().zip(&expected) {
        assert_eq!((id, reason.as_str()), (want_id, "signature"), "{reasons:?}");
        assert!(detail.contains(want_detail), "{detail}");
    }
    // The archive keeps the proof: the signed document verifies against the org's key.
    let show = ex.exhub(&["archive", "show", &signed]);
    let text = stdout(&show);
    assert!(show.status.success(), "{}", String::from_utf8_lossy(&show.stderr));
    assert!(
        text.contains("signature  key nanhai.tax#") && text.contains("verified"),
        "{text}"
    );
    assert!(text.contains("tax-feed"), "{text}");
}

/// The example licence with a fresh id (its `<id>` element replaced).
fn regex_free_replace_id(xml: &str) -> String {
    let start = xml.find("<id>").unwrap() + 4;
    let end = xml[start..].find("</id>").unwrap() + start;
    format!("{}{}{}", &xml[..start], uuid::Uuid::now_v7(), &xml[end..])
}

/// The audit log records what the hub accepted, refused and published, verifies link by link,
/// and `exhub audit verify` finds the first record edited, removed or whose documents changed.
#[tokio::test(flavor = "multi_thread")]
async fn audit_log_verifies_and_finds_an_edited_record() {
    let mut ex = Exchange::new("audit", ArchiveKind::Postgres, "", GRAPH);
    let hub_key = generate_key(&ex, &["--hub"], "ed25519");
    add_to(&ex, "hub", &format!("public_keys = [\"{hub_key}\"]"));
    ex.start_hub().await;
    let docs: Vec<(String, Vec<u8>)> = (0..3).map(|n| tax_doc("nanhai.tax", 60 + n, "南海")).collect();
    let (refused, refused_doc) = tax_doc("nanhai.commerce", 63, "南海");
    ex.publish(docs.iter().map(|(id, d)| (d.clone(), ex.props(id))).collect())
        .await;
    ex.publish(vec![(refused_doc, ex.props(&refused))]).await;
    ex.take(&ex.topology.subscriber_queue("tax-feed"), WAIT, |t| t.docs >= 3)
        .await;
    ex.take(&ex.topology.hub_dlq(), WAIT, |t| !t.messages.is_empty()).await;
    // Wait for the hub's record of the published copies, then stop it: nothing writes now.
    let deadline = Instant::now() + WAIT;
    while !stdout(&ex.exhub(&["audit", "list", "--limit", "100"])).contains("\tpublished\t") {
        assert!(Instant::now() < deadline, "no published record");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ex.kill_hubs();
    let list = stdout(&ex.exhub(&["audit", "list", "--limit", "100"]));
    let tax = ex.user("tax");
    assert!(list.contains(&format!("\t{tax}\taccepted\t")), "{list}");
    assert!(
        list.contains(&format!("\t{tax}\trefused\t1 to")) && list.contains(&refused),
        "{list}"
    );
    let verify = |ex: &Exchange| {
        let out = ex.exhub(&["audit", "verify"]);
        (out.status.code(), stdout(&out))
    };
    let (code, text) = verify(&ex);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.starts_with("audit log ok"), "{text}");
    assert!(text.contains("signed by the hub"), "{text}");

    let db = ex.archive_url.rsplit('/').next().unwrap().to_owned();
    let sql = |q: &str| crate::services::psql(&db, q);
    // An edited record.
    let actor = sql("SELECT actor FROM exhub_audit WHERE seq = 2");
    sql("UPDATE exhub_audit SET actor = 'someone-else' WHERE seq = 2");
    let (code, text) = verify(&ex);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("BROKEN at record 2: its content does not match its hash"),
        "{text}"
    );
    sql(&format!("UPDATE exhub_audit SET actor = '{actor}' WHERE seq = 2"));
    assert_eq!(verify(&ex).0, Some(0));
    // An archived document whose hash was changed.
    let hash = sql(&format!(
        "SELECT content_hash FROM exhub_documents WHERE id = '{}'",
        docs[1].0
    ));
    sql(&format!(
        "UPDATE exhub_documents SET content_hash = 'sha256:00' WHERE id = '{}'",
        docs[1].0
    ));
    let (code, text) = verify(&ex);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("were changed since"), "{text}");
    sql(&format!(
        "UPDATE exhub_documents SET content_hash = '{hash}' WHERE id = '{}'",
        docs[1].0
    ));
    assert_eq!(verify(&ex).0, Some(0));
    // Someone who can write the database but has no hub key rewrites record 2 and recomputes
    // every hash after it, and the head: the chain holds, the hub's signature does not.
    let rows = crate::services::psql_with(
        &db,
        &[
            "-F",
            "\u{1f}",
            "-c",
            "SELECT seq, at, actor, action, subject, detail FROM exhub_audit WHERE seq >= 2 ORDER BY seq",
        ],
    );
    let mut prev = sql("SELECT hash FROM exhub_audit WHERE seq = 1");
    for (i, line) in rows.lines().enumerate() {
        let f: Vec<&str> = line.split('\u{1f}').collect();
        let (seq, at): (i64, i64) = (f[0].parse().unwrap(), f[1].parse().unwrap());
        let actor = if i == 0 { "someone-else" } else { f[2] };
        let canonical = serde_json::json!([prev, seq, at, actor, f[3], f[4], f[5]]).to_string();
        let hash = exhub_connect::sign::digest(canonical.as_bytes());
        sql(&format!(
            "UPDATE exhub_audit SET actor = $q${actor}$q$, prev_hash = '{prev}', hash = '{hash}' WHERE seq = {seq}"
        ));
        prev = hash;
    }
    sql(&format!("UPDATE exhub_audit_head SET hash = '{prev}'"));
    let (code, text) = verify(&ex);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("BROKEN at record 2: the hub's signature on it does not hold"),
        "{text}"
    );
    // … or drops the signatures altogether.
    sql("UPDATE exhub_audit SET signature = NULL");
    let (code, text) = verify(&ex);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("not signed by the hub"), "{text}");
    // The last record removed.
    sql("DELETE FROM exhub_audit WHERE seq = (SELECT max(seq) FROM exhub_audit)");
    let (code, text) = verify(&ex);
    assert_eq!(code, Some(1), "{text}");
}

/// A SQLite archive is created readable by its owner only.
#[tokio::test(flavor = "multi_thread")]
async fn the_archive_file_is_private() {
    let ex = exchange("archive-mode", "").await;
    let path = ex.archive_url.trim_start_matches("sqlite://").to_owned();
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&path).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "{path}");
}

/// A document refused for its signature stays refused through `exhub dlq retry` (the retry is
/// held to the original sender's signing rule), and a signed document refused for another
/// reason keeps its signature through the DLQ and passes once the cause is fixed.
#[tokio::test(flavor = "multi_thread")]
async fn a_dlq_retry_keeps_the_senders_signing_rule() {
    let mut ex = Exchange::new("retry-signed", ArchiveKind::Sqlite, "", GRAPH);
    let tax_key = generate_key(&ex, &["--org", "nanhai.tax"], "ed25519");
    add_to(
        &ex,
        "tax",
        &format!("public_keys = [\"{tax_key}\"]\nrequire_signature = true"),
    );
    ex.start_hub().await;
    let key_line = std::fs::read_to_string(ex.dir.join("secrets/nanhai.tax.signing-key")).unwrap();
    let key = exhub_connect::sign::SigningKey::from_line(key_line.trim()).unwrap();
    // An unsigned registration, and a signed licence the tax bureau may not (yet) publish.
    let (unsigned, unsigned_doc) = tax_doc("nanhai.tax", 70, "南海");
    let licence = regex_free_replace_id(
        &std::fs::read_to_string(crate::root().join("examples/documents/commerce.business_license.xml"))
            .unwrap()
            .replace("<org>nanhai.commerce</org>", "<org>nanhai.tax</org>"),
    );
    let licence_id = crate::exchange::doc_id(licence.as_bytes()).unwrap();
    let licence_props = wire::signed(
        props(&licence_id, &ex.user("tax")).with_content_type("application/xml".into()),
        Some(&key),
        &[licence.as_bytes()],
    );
    ex.publish(vec![
        (unsigned_doc, ex.props(&unsigned)),
        (licence.clone().into_bytes(), licence_props),
    ])
    .await;
    let wait_dlq = |n: u32| {
        let ex = &ex;
        async move {
            let deadline = Instant::now() + WAIT;
            while ex.depth(&ex.topology.hub_dlq()).await < n {
                assert!(
                    Instant::now() < deadline,
                    "DLQ depth {}: {}",
                    ex.depth(&ex.topology.hub_dlq()).await,
                    ex.hub_log(0)
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    wait_dlq(2).await;
    // The fix for the licence: the tax bureau may publish licences now.
    ex.kill_hubs();
    let text = std::fs::read_to_string(&ex.config).unwrap().replacen(
        "publishes = [\"tax.registration\"]",
        "publishes = [\"tax.registration\", \"commerce.business_license\"]",
        1,
    );
    std::fs::write(&ex.config, text).unwrap();
    ex.start_hub().await;
    let retry = ex.exhub(&["dlq", "retry", "--all"]);
    assert!(stdout(&retry).contains("2 document(s) sent back"), "{}", stdout(&retry));
    let feed = ex
        .take(&ex.topology.subscriber_queue("commerce-feed"), WAIT, |t| t.docs >= 1)
        .await;
    assert_eq!(feed.order, [licence_id], "the signed licence passes after the fix");
    let p = refused_and_not_routed(&ex).await;
    assert_eq!(p.message_id().as_ref().map(|m| m.to_string()), Some(unsigned));
    assert_eq!(wire::header_str(&p, header::REASON).as_deref(), Some("signature"));
}

/// A receipt naming a document twice (as an honest sink may after a redelivery) or giving a
/// reason of its own does not make the archive fail — with a PostgreSQL archive, a repeated key
/// in one upsert would — and the stream goes on; a receipt for another org's subscriber, one
/// over the size limit, and receipts or dead letters from a login that is no org's are refused.
#[tokio::test(flavor = "multi_thread")]
async fn odd_receipts_do_not_wedge_the_hub() {
    let mut ex = Exchange::new("receipts", ArchiveKind::Postgres, "", GRAPH);
    ex.start_hub().await;
    let receipt = |body: serde_json::Value| {
        let p = props("r", &ex.user("commerce")).with_type(wire::RECEIPT_TYPE.into());
        (body.to_string().into_bytes(), p)
    };
    let id = uuid::Uuid::now_v7().to_string();
    ex.publish_as(
        "commerce",
        vec![
            receipt(serde_json::json!({"subscriber": "commerce-feed", "applied": [id, id], "refused": [{"id": id, "reason": "apply"}]})),
            receipt(serde_json::json!({"subscriber": "commerce-feed", "applied": [], "refused": [{"id": id, "reason": "x\u{0}y"}]})),
            receipt(serde_json::json!({"subscriber": "tax-feed", "applied": [id]})),
            // Over the limit of 50,000 documents a receipt may name.
            receipt(serde_json::json!({"subscriber": "commerce-feed", "applied": vec![id.clone(); 50_001]})),
        ],
    )
    .await;
    // From a login that is no org's (the broker's administrator, for any login with write
    // rights on the ingress exchange): a receipt and a dead letter, both refused.
    let admin = crate::exchange::connect().await.unwrap();
    let ch = admin.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    let body = serde_json::json!({"subscriber": "commerce-feed", "applied": [id]}).to_string();
    let stranger = props("r", "guest").with_type(wire::RECEIPT_TYPE.into());
    publish(&ch, &ex.topology.ingress_exchange(), "", body.as_bytes(), stranger)
        .await
        .unwrap();
    let letter = wire::with_header(
        props("d", "guest").with_type(wire::DEAD_LETTER_TYPE.into()),
        header::REASON,
        "apply",
    );
    let letter = wire::with_header(letter, header::SUBSCRIBER, "commerce-feed");
    publish(&ch, &ex.topology.ingress_exchange(), "", b"{}", letter)
        .await
        .unwrap();
    let (good, good_doc) = tax_doc("nanhai.tax", 80, "南海");
    ex.publish(vec![(good_doc, ex.props(&good))]).await;
    let got = ex
        .take(&ex.topology.subscriber_queue("tax-feed"), WAIT, |t| t.docs >= 1)
        .await;
    assert_eq!(got.order, [good]);
    let dlq = ex.take(&ex.topology.hub_dlq(), WAIT, |t| t.messages.len() >= 5).await;
    let mut reasons: Vec<String> = dlq
        .messages
        .iter()
        .map(|r| wire::header_str(&r.properties, header::REASON).unwrap_or_default())
        .collect();
    reasons.sort();
    assert_eq!(
        reasons,
        [
            "malformed",
            "too_large",
            "unauthenticated",
            "unauthenticated",
            "unauthorized"
        ],
        "{}",
        ex.hub_log(0)
    );
    assert_eq!(ex.depth(&ex.topology.subscriber_dlq("commerce-feed")).await, 0);
    assert!(!ex.hub_log(0).contains("archive failed"), "{}", ex.hub_log(0));
}

/// `exhub provision` takes the permissions away from a login routes.toml no longer names, and
/// will not adopt a broker administrator as an exchange login.
#[tokio::test(flavor = "multi_thread")]
async fn provision_revokes_removed_orgs_and_refuses_administrators() {
    let ex = Exchange::new("provision", ArchiveKind::Sqlite, "", GRAPH);
    let other = ex.user("other");
    let api = crate::exchange::management().unwrap();
    assert!(api.get(&format!("permissions/%2F/{other}")).await.unwrap().is_some());
    let text = std::fs::read_to_string(&ex.config).unwrap();
    let start = text.find("[[org]]\nid = \"nanhai.other\"").unwrap();
    let end = start + text[start..].find(&format!("amqp_user = \"{other}\"\n")).unwrap() + other.len() + 14;
    std::fs::write(&ex.config, format!("{}{}", &text[..start], &text[end..])).unwrap();
    let out = ex.exhub(&["provision"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        stdout(&out).contains(&format!("did: revoke the permissions of \"{other}\"")),
        "{}",
        stdout(&out)
    );
    assert!(api.get(&format!("permissions/%2F/{other}")).await.unwrap().is_none());
    // The broker's administrator as the hub's login: refused, even with --adopt.
    let admin = ex.dir.join("admin.toml");
    let text = std::fs::read_to_string(&ex.config).unwrap();
    let hub_line = text.lines().find(|l| l.starts_with("amqp = ")).unwrap();
    std::fs::write(
        &admin,
        text.replacen(hub_line, "amqp = \"amqp://guest:guest@127.0.0.1:5672/%2f\"", 1),
    )
    .unwrap();
    let out = ex.exhub(&["provision", "--adopt", "--config", admin.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("has the tag \"administrator\""), "{err}");
}

/// Masking a business-key field is said to hide it in the body only.
#[test]
fn check_warns_that_a_masked_key_still_travels_in_the_header() {
    let dir = crate::scratch("masked-key");
    let text = std::fs::read_to_string(crate::root().join("routes.toml")).unwrap();
    let masked = text.replace(
        "mask = { \"social-feed\" = [\"capital\", \"phone\"] }",
        "mask = { \"social-feed\" = [\"capital\", \"phone\", \"taxpayer_id\"] }",
    );
    assert_ne!(masked, text, "the demo's mask line moved");
    let config = dir.join("routes.toml");
    std::fs::write(&config, masked).unwrap();
    let out = std::process::Command::new(crate::exhub_bin())
        .args(["check", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    let text = stdout(&out);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("\"taxpayer_id\" is a business key: masked in the body, it still travels in the header's key"),
        "{text}"
    );
}

/// Supervision cannot be fooled by a department: its heartbeat naming another's source is
/// dropped and counted, one sent as another's user is refused by the broker, and a
/// `supervision.alert` claiming to be the hub's is refused as unauthenticated and reaches no
/// feed — while the source's own org's heartbeat shows it up.
#[tokio::test(flavor = "multi_thread")]
async fn heartbeats_and_alerts_cannot_be_forged() {
    let graph = format!(
        "{GRAPH}\n{}",
        r#"
[[source]]
name = "ctais"
org = "nanhai.tax"
kind = "mysql"
url = "mysql://root@127.0.0.1:3306/ctais"
  [[source.table]]
  table = "nsr_djxx"
  doc_type = "tax.registration"
  key = ["nsrsbh"]
  fields = { taxpayer_id = "nsrsbh", name = "nsrmc", legal_representative = "fddbr", registered_at = "djrq", registration_type = "djzclx", taxpayer_status = "nsrzt", district = "ssqx", address = "scjydz" }

[[route]]
name = "alerts"
doc_types = ["supervision.alert"]
to = ["commerce-feed"]
"#
    );
    let mut ex = Exchange::new("forged-status", ArchiveKind::Sqlite, "admin = \"127.0.0.1:0\"", &graph);
    ex.start_hub().await;
    let t = ex.topology.clone();
    let addr = crate::hub::admin_address(&ex);
    let live = exhub_connect::status::Live::new(
        "ctais",
        exhub_connect::status::Role::Source,
        "mysql",
        Duration::from_secs(5),
    );
    let mut status = None;
    live.update(|s| status = Some(s.clone()));
    let body = serde_json::to_vec(&status.unwrap()).unwrap();
    let heartbeat = |user: &str| {
        BasicProperties::default()
            .with_type(exhub_connect::status::MESSAGE_TYPE.into())
            .with_user_id(user.into())
    };

    // The commerce bureau speaks for the tax bureau's source: dropped, counted.
    let (_c, ch) = channel(&ex.url_of("commerce")).await;
    publish(&ch, &t.status_exchange(), "", &body, heartbeat(&ex.user("commerce")))
        .await
        .unwrap();
    crate::hub::wait_for_metrics(
        &addr,
        &[
            (r#"exhub_status_refused_total{reason="unauthorized"}"#, 1.0),
            (r#"exhub_part_up{part="ctais",role="source"}"#, 0.0),
        ],
    )
    .await;
    // … as the tax bureau's user: the broker refuses it.
    let (_c, ch) = channel(&ex.url_of("commerce")).await;
    let forged = publish(&ch, &t.status_exchange(), "", &body, heartbeat(&ex.user("tax"))).await;
    assert!(
        format!("{forged:?}").contains("PRECONDITION_FAILED"),
        "a user_id not its own: {forged:?}"
    );
    // An alert in the hub's name, from the commerce bureau: refused, and no feed gets it.
    let transition = exhub_hub::alerts::Transition {
        metric: exhub_hub::alerts::Metric::QueueMessages,
        scope: "subscriber:tax-feed".into(),
        from: exhub_hub::alerts::Level::Clear,
        to: exhub_hub::alerts::Level::Red,
        value: 1e6,
        threshold: 1e5,
        rule: None,
    };
    let fake = exhub_hub::supervise::alert_message(&transition, &t, &ex.user("commerce"));
    let fake_id = fake.properties.message_id().clone().unwrap().to_string();
    ex.publish_as("commerce", vec![(fake.payload, fake.properties)]).await;
    let dlq = ex.take(&t.hub_dlq(), WAIT, |t| t.docs >= 1).await;
    let reason = wire::header_str(&dlq.messages[0].properties, header::REASON);
    assert_eq!(reason.as_deref(), Some("unauthenticated"));
    assert_eq!(dlq.order, [fake_id]);
    let feed = ex
        .take(&t.subscriber_queue("commerce-feed"), Duration::from_secs(2), |t| {
            t.docs >= 1
        })
        .await;
    assert_eq!(feed.docs, 0, "a forged alert reached the feed");

    // Oversized and malformed heartbeats, even from the right org: dropped and counted.
    let (_c, ch) = channel(&ex.url_of("tax")).await;
    let huge = vec![b' '; exhub_connect::status::MAX_BYTES + 1];
    publish(&ch, &t.status_exchange(), "", &huge, heartbeat(&ex.user("tax")))
        .await
        .unwrap();
    publish(
        &ch,
        &t.status_exchange(),
        "",
        b"{\"part\": 1",
        heartbeat(&ex.user("tax")),
    )
    .await
    .unwrap();
    crate::hub::wait_for_metrics(
        &addr,
        &[
            (r#"exhub_status_refused_total{reason="too_large"}"#, 1.0),
            (r#"exhub_status_refused_total{reason="malformed"}"#, 1.0),
            (r#"exhub_part_up{part="ctais",role="source"}"#, 0.0),
        ],
    )
    .await;

    // The tax bureau's own heartbeat: the source is up.
    let (_c, ch) = channel(&ex.url_of("tax")).await;
    publish(&ch, &t.status_exchange(), "", &body, heartbeat(&ex.user("tax")))
        .await
        .unwrap();
    crate::hub::wait_for_metrics(&addr, &[(r#"exhub_part_up{part="ctais",role="source"}"#, 1.0)]).await;
}
