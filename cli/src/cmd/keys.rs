//! `exhub keys generate`: a new signing key for an org (or the hub), written to its key file
//! (0600, never replacing one) and its public line printed for routes.toml.

use std::path::Path;

use anyhow::{Context as _, Result, bail};
use exhub_connect::sign::{Alg, SigningKey};
use exhub_hub::secret::{Secret, write_private_file};

use super::load_checked;

/// Generates a key of `alg` for `org` (or the hub when `None`), named `name`.
pub fn generate(path: &Path, org: Option<&str>, alg: &str, name: Option<&str>) -> Result<()> {
    let loaded = load_checked(path)?;
    let config = &loaded.config;
    let Some(alg) = Alg::parse(alg) else {
        bail!("--alg {alg:?}: ed25519 or sm2");
    };
    let (owner, file, public_file) = match org {
        Some(org) => {
            let Some(o) = config.org(org) else {
                bail!("org {org:?} is not in {}", path.display());
            };
            let public = o.public_keys_file.as_ref().map(|f| loaded.base.join(f));
            (org.to_owned(), config.org_signing_key_file(o, &loaded.base), public)
        }
        None => {
            let public = config.hub.public_keys_file.as_ref().map(|f| loaded.base.join(f));
            ("hub".to_owned(), config.hub_signing_key_file(&loaded.base), public)
        }
    };
    let year: String = exhub_schemas::Timestamp::now().to_string().chars().take(4).collect();
    let name = name.map_or(year, str::to_owned);
    let key = SigningKey::generate(alg, &format!("{owner}#{name}"))?;
    if file.exists() {
        bail!(
            "{} exists: a key is never replaced in place (rotate: add the new public key line, move the old file away, generate again)",
            file.display()
        );
    }
    write_private_file(&file, &Secret::new(key.secret_line()))
        .with_context(|| format!("writing {}", file.display()))?;
    eprintln!(
        "wrote the private key {} to {} (mode 0600)",
        key.key_id(),
        file.display()
    );
    let section = match org {
        Some(org) => format!("the [[org]] {org:?}"),
        None => "[hub]".to_owned(),
    };
    match public_file {
        Some(public) => {
            use std::io::Write as _;
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&public)
                .with_context(|| format!("writing {}", public.display()))?;
            writeln!(f, "{}", key.public_line()).with_context(|| format!("writing {}", public.display()))?;
            eprintln!(
                "added its public key line to {} (public_keys_file of {section})",
                public.display()
            );
        }
        None => eprintln!("add this line to public_keys of {section} in routes.toml:"),
    }
    println!("{}", key.public_line());
    Ok(())
}
