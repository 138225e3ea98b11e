//! The archive's delivery status, on SQLite and on PostgreSQL: a document routed in a batch is
//! `pending` until the batch is confirmed and `published` after; a copy sent again in a later
//! batch follows that batch, whichever of several re-sends is confirmed; a receipt's outcome
//! wins; a replay adds a subscriber; a receipt for a document never routed to its sender is
//! dropped; the audit chain holds throughout. And an archive from before batches keeps its
//! statuses.

use std::collections::{HashMap, HashSet};

use exhub_connect::sign::Keyring;
use exhub_hub::archive::{APPLIED, Archive, Entry, ReceiptRow, Stored};
use uuid::Uuid;

use crate::exchange::{ArchiveKind, psql};
use crate::scratch;

/// A fresh archive of `kind`, and the PostgreSQL database to drop after.
async fn open(kind: ArchiveKind) -> (Archive, Option<String>) {
    match kind {
        ArchiveKind::Sqlite => {
            let dir = scratch("archive-status");
            let url = format!("sqlite://{}", dir.join("archive.db").display());
            (Archive::open(&url).await.unwrap(), None)
        }
        ArchiveKind::Postgres => {
            let db = format!("exhub_archive_{}", Uuid::now_v7().simple());
            psql(&format!("CREATE DATABASE {db}"));
            let url = format!("postgres://postgres@127.0.0.1:5432/{db}");
            (Archive::open(&url).await.unwrap(), Some(db))
        }
    }
}

fn entry<'a>(id: Uuid, hash: &'a str, subscribers: &[&'a str]) -> Entry<'a> {
    Entry {
        id,
        doc_type: "tax.registration",
        schema_version: 1,
        op: "upsert",
        sender_org: "nanhai.tax",
        sender_system: None,
        amqp_user: "tax",
        key: vec![("taxpayer_id", id.simple().to_string())],
        created_at: 0,
        content_type: "application/json",
        content_hash: hash,
        raw: b"{}",
        subscribers: subscribers.to_vec(),
        proof: None,
    }
}

fn receipt(id: Uuid, subscriber: &str) -> ReceiptRow {
    ReceiptRow {
        document_id: id.to_string(),
        subscriber: subscriber.into(),
        outcome: APPLIED,
        reason: None,
        amqp_user: subscriber.into(),
        key_id: None,
        received_at: 0,
    }
}

/// `subscriber:status` of each document, sorted.
async fn status(archive: &Archive, ids: &[Uuid]) -> HashMap<Uuid, String> {
    let strings: Vec<String> = ids.iter().map(Uuid::to_string).collect();
    let found = archive.deliveries(&strings).await.unwrap();
    ids.iter()
        .map(|id| {
            let list = found.get(&id.to_string()).cloned().unwrap_or_default();
            let text: Vec<String> = list.into_iter().map(|(s, st)| format!("{s}:{st}")).collect();
            (*id, text.join(" "))
        })
        .collect()
}

fn published(stored: &Stored) -> HashSet<String> {
    match stored {
        Stored::Duplicate {
            same_content: true,
            published,
        } => published.clone(),
        other => panic!("expected a duplicate with the same content, got {other:?}"),
    }
}

async fn delivery_status_follows_batches(kind: ArchiveKind) {
    let (archive, db) = open(kind).await;
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    let first = archive
        .store(&[entry(a, "h-a", &["s1", "s2"]), entry(b, "h-b", &["s1"])], &[], &[])
        .await
        .unwrap();
    assert_eq!(first.entries, [Stored::New, Stored::New]);
    let b1 = first.batch.expect("a batch with documents has a number");
    let s = status(&archive, &[a, b]).await;
    assert_eq!(
        (s[&a].as_str(), s[&b].as_str()),
        ("s1:pending s2:pending", "s1:pending")
    );

    // The batch was never confirmed (the hub died): the publisher sends `a` again, and its
    // copies go out in the new batch, which is confirmed.
    let again = archive
        .store(&[entry(a, "h-a", &["s1", "s2"])], &[], &[])
        .await
        .unwrap();
    assert!(published(&again.entries[0]).is_empty(), "nothing was confirmed yet");
    let b2 = again.batch.unwrap();
    assert_ne!(b1, b2);
    // And once more while that batch is still in flight; this third batch is never confirmed,
    // and must not hide the second's confirmation.
    let third = archive
        .store(&[entry(a, "h-a", &["s1", "s2"])], &[], &[])
        .await
        .unwrap();
    assert!(published(&third.entries[0]).is_empty());
    archive.confirm(b2, &[(a, "s1"), (a, "s2")], "hub").await.unwrap();
    let s = status(&archive, &[a, b]).await;
    assert_eq!(
        (s[&a].as_str(), s[&b].as_str()),
        ("s1:published s2:published", "s1:pending")
    );
    archive
        .confirm(b1, &[(a, "s1"), (a, "s2"), (b, "s1")], "hub")
        .await
        .unwrap();
    assert_eq!(status(&archive, &[b]).await[&b], "s1:published");

    // A receipt's outcome wins; a receipt for a document never routed to its sender is dropped.
    archive
        .store(&[], &[receipt(a, "s1"), receipt(b, "s2")], &[])
        .await
        .unwrap();
    let s = status(&archive, &[a, b]).await;
    assert_eq!(
        (s[&a].as_str(), s[&b].as_str()),
        ("s1:applied s2:published", "s1:published")
    );
    assert!(archive.receipts(&b.to_string()).await.unwrap().is_empty());

    // Seen again: routed nowhere new; with other content: a conflict.
    let again = archive
        .store(&[entry(a, "h-a", &["s1", "s2"])], &[], &[])
        .await
        .unwrap();
    assert_eq!(published(&again.entries[0]), HashSet::from(["s1".into(), "s2".into()]));
    let other = archive.store(&[entry(a, "h-other", &["s1"])], &[], &[]).await.unwrap();
    assert!(matches!(
        other.entries[0],
        Stored::Duplicate {
            same_content: false,
            ..
        }
    ));

    // A replay to a subscriber the document never had.
    archive.mark_published(&[(b, "s3")], "operator").await.unwrap();
    assert_eq!(status(&archive, &[b]).await[&b], "s1:published s3:published");

    let report = archive.verify_audit(&Keyring::default()).await.unwrap();
    assert_eq!(report.broken, None, "the audit chain holds");
    archive.close().await;
    if let Some(db) = db {
        psql(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"));
    }
}

#[tokio::test]
async fn delivery_status_follows_batches_with_sqlite_archive() {
    delivery_status_follows_batches(ArchiveKind::Sqlite).await;
}

#[tokio::test]
async fn delivery_status_follows_batches_with_postgres_archive() {
    delivery_status_follows_batches(ArchiveKind::Postgres).await;
}

/// An archive written before batches existed (no `subscribers` or `batch_id` on documents, a
/// delivery row per copy) opens, gains the new columns and tables, and keeps its statuses: a
/// copy it had published is not sent again, one it had not is, and a receipt for a copy it had
/// routed is accepted.
#[tokio::test]
async fn an_archive_from_before_batches_keeps_its_statuses() {
    let (archive, db) = open(ArchiveKind::Postgres).await;
    archive.close().await;
    let db = db.unwrap();
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    // Back to the old schema, with two documents as the old hub left them.
    crate::services::psql(
        &db,
        "ALTER TABLE exhub_documents DROP COLUMN subscribers, DROP COLUMN batch_id; \
         DROP TABLE exhub_batches; DROP TABLE exhub_resends",
    );
    for (id, hash) in [(a, "h-a"), (b, "h-b")] {
        crate::services::psql(
            &db,
            &format!(
                "INSERT INTO exhub_documents (id, doc_type, schema_version, op, sender_org, amqp_user, doc_key, \
                 created_at, received_at, content_type, content_hash, raw) VALUES ('{id}', 'tax.registration', 1, \
                 'upsert', 'nanhai.tax', 'tax', 'k', 0, 0, 'application/json', '{hash}', '\\x7b7d')"
            ),
        );
    }
    crate::services::psql(
        &db,
        &format!(
            "INSERT INTO exhub_deliveries (document_id, subscriber, status, updated_at) VALUES \
             ('{a}', 's1', 'published', 0), ('{a}', 's2', 'pending', 0), ('{b}', 's1', 'applied', 0)"
        ),
    );
    let archive = Archive::open(&format!("postgres://postgres@127.0.0.1:5432/{db}"))
        .await
        .unwrap();
    let s = status(&archive, &[a, b]).await;
    assert_eq!(
        (s[&a].as_str(), s[&b].as_str()),
        ("s1:published s2:pending", "s1:applied")
    );
    // Redelivered: only s2 gets a copy; once confirmed, both have it.
    let again = archive
        .store(&[entry(a, "h-a", &["s1", "s2"])], &[], &[])
        .await
        .unwrap();
    assert_eq!(published(&again.entries[0]), HashSet::from(["s1".into()]));
    archive
        .confirm(again.batch.unwrap(), &[(a, "s2")], "hub")
        .await
        .unwrap();
    // The old row's receipt is accepted: the copy was routed there.
    archive.store(&[], &[receipt(a, "s2")], &[]).await.unwrap();
    assert_eq!(status(&archive, &[a]).await[&a], "s1:published s2:applied");
    archive.close().await;
    psql(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"));
}

/// A batch's confirmation binds its copies: changing whom an archived document was routed to
/// afterwards breaks the audit chain's verification at that record.
#[tokio::test]
async fn a_changed_routing_breaks_the_confirmation() {
    let (archive, db) = open(ArchiveKind::Postgres).await;
    let db = db.unwrap();
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    let stored = archive
        .store(&[entry(a, "h-a", &["s1", "s2"]), entry(b, "h-b", &["s1"])], &[], &[])
        .await
        .unwrap();
    let batch = stored.batch.unwrap();
    archive
        .confirm(batch, &[(a, "s1"), (a, "s2"), (b, "s1")], "hub")
        .await
        .unwrap();
    // Sent again in a later batch, to a subscriber it now has: a re-sent copy.
    let again = archive.store(&[entry(b, "h-b", &["s1"])], &[], &[]).await.unwrap();
    assert!(again.batch.is_some());
    let report = archive.verify_audit(&Keyring::default()).await.unwrap();
    assert_eq!(report.broken, None, "the untouched archive verifies");

    // Someone hides that `a` went to s2.
    crate::services::psql(
        &db,
        &format!("UPDATE exhub_documents SET subscribers = 's1' WHERE id = '{a}'"),
    );
    let report = archive.verify_audit(&Keyring::default()).await.unwrap();
    let (_, why) = report.broken.expect("the change shows");
    let batch_id = crate::services::psql(&db, &format!("SELECT batch_id FROM exhub_documents WHERE id = '{a}'"));
    assert!(why.contains(&format!("batch {batch_id} ")), "{why}");
    archive.close().await;
    psql(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"));
}
