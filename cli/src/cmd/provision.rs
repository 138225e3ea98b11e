//! `exhub provision [--dry-run] [--adopt]`: makes the broker's users and permissions what
//! routes.toml says (see [`exhub_hub::provision`]), printing every change.

use std::path::Path;

use anyhow::{Context as _, Result};
use exhub_hub::provision::{self, Management};
use exhub_hub::secret::{PasswordFrom, Secret, write_private_file};

use super::load_checked;

/// Provisions the exchange of `path`.
pub async fn provision(path: &Path, dry_run: bool, adopt: bool) -> Result<()> {
    let mut loaded = load_checked(path)?;
    let mut notes = Vec::new();
    // The hub's own password file, made like the orgs' when it does not exist yet.
    if let Some(PasswordFrom::File(file)) = loaded.config.hub.amqp.password_from() {
        let file = loaded.base.join(file);
        if !file.exists() {
            if dry_run {
                notes.push(format!("would write a new password for the hub to {}", file.display()));
            } else {
                let password = provision::new_password()?;
                write_private_file(&file, &password).with_context(|| format!("writing {}", file.display()))?;
                notes.push(format!("wrote a new password for the hub to {}", file.display()));
            }
        }
    }
    if !dry_run {
        loaded.config.resolve_secrets(&loaded.base)?;
    } else if loaded.config.resolve_secrets(&loaded.base).is_err() {
        // A dry run before the first provisioning: the hub's password is not there yet.
        loaded.config.hub.amqp = loaded
            .config
            .hub
            .amqp
            .with_login(&loaded.config.hub.user(), &Secret::new("-"))?;
    }
    let wanted = provision::wanted(&loaded.config, &loaded.base, dry_run, &mut notes)?;
    let url = provision::management_url(&loaded.config);
    let (user, password) = match std::env::var("EXHUB_RABBITMQ_ADMIN") {
        Ok(login) => match login.split_once(':') {
            Some((u, p)) => (u.to_owned(), Secret::new(p)),
            None => anyhow::bail!("EXHUB_RABBITMQ_ADMIN must be USER:PASSWORD"),
        },
        Err(_) => ("guest".to_owned(), Secret::new("guest")),
    };
    let api = Management::new(&url, &user, &password)?;
    let changes = provision::provision(&api, &wanted, adopt, dry_run)
        .await
        .with_context(|| format!("provisioning vhost {:?} through {url} as {user:?}", wanted.vhost))?;
    for note in &notes {
        println!("{note}");
    }
    if !dry_run && !changes.is_empty() {
        let archive = super::open_archive(&loaded)
            .await
            .context("opening the archive for the audit log")?;
        let list: Vec<String> = changes.iter().map(ToString::to_string).collect();
        let record = exhub_hub::archive::AuditEntry::new(
            &super::operator(),
            "provisioned",
            format!("{} change(s) on vhost {}", changes.len(), wanted.vhost),
            serde_json::json!({ "changes": list }),
        );
        archive.audit(&[record]).await?;
        archive.close().await;
    }
    let verb = if dry_run { "would" } else { "did" };
    for c in &changes {
        println!("{verb}: {c}");
    }
    for u in &wanted.users {
        println!("user {:?} ({}) on vhost {:?}", u.name, u.role, wanted.vhost);
    }
    println!(
        "{} change(s) {}; {} user(s) provisioned from {}",
        changes.len(),
        if dry_run {
            "planned (dry run: nothing changed)"
        } else {
            "made"
        },
        wanted.users.len(),
        path.display()
    );
    Ok(())
}
