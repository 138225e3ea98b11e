//! `exhub audit verify` and `exhub audit list`: the archive's hash-chained audit log, checked
//! link by link (and, with `[hub] public_keys`, signature by signature), and its latest records.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use exhub_connect::sign::Keyring;
use exhub_hub::archive::Archive;
use exhub_schemas::Timestamp;

use super::load;

async fn open(path: &Path) -> Result<(Archive, Keyring)> {
    let config = load(path)?.config;
    let keys = Keyring::from_lines(&config.hub.public_keys).context("[hub] public_keys")?;
    let archive = Archive::open(config.hub.archive.expose())
        .await
        .with_context(|| format!("opening the archive {}", config.hub.archive))?;
    Ok((archive, keys))
}

/// Walks the whole chain; exit code 1 and the first broken record when it does not hold.
pub async fn verify(path: &Path) -> Result<ExitCode> {
    let (archive, keys) = open(path).await?;
    let report = archive.verify_audit(&keys).await?;
    archive.close().await;
    match report.broken {
        None => {
            let signed = if keys.is_empty() {
                "not signed: [hub] public_keys is not set".to_owned()
            } else {
                format!("the last {} signed by the hub", report.signed)
            };
            println!(
                "audit log ok: {} record(s), every link and hash verified; {signed}",
                report.records
            );
            Ok(ExitCode::SUCCESS)
        }
        Some((seq, why)) => {
            println!(
                "audit log BROKEN at record {seq}: {why} ({} record(s) before it verified)",
                report.records
            );
            Ok(ExitCode::from(1))
        }
    }
}

/// Prints the last `limit` records.
pub async fn list(path: &Path, limit: usize) -> Result<ExitCode> {
    let (archive, _) = open(path).await?;
    for r in archive.audit_tail(limit).await? {
        let detail = exhub_connect::wire::excerpt(&r.entry.detail, 160);
        println!(
            "{}\t{}\t{}\t{}\t{}\t{detail}",
            r.seq,
            Timestamp::from_unix_micros(r.at),
            r.entry.actor,
            r.entry.action,
            r.entry.subject
        );
    }
    archive.close().await;
    Ok(ExitCode::SUCCESS)
}
