//! `exhub publish --as ORG FILE...`: hands documents to the hub with publisher confirms and
//! prints each one's id and outcome. The hub is the judge of content: a document that does not
//! decode here is still sent (and the hub dead-letters it with its reason), so that this command
//! shows exactly what a publisher's adapter would cause. Messages are signed with the org's
//! signing key when it has one.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use exhub_connect::publisher::Declare;
use exhub_connect::{Outgoing, Publisher, wire};
use exhub_hub::pipeline::amqp_user;
use exhub_hub::secret::SecretUrl;
use exhub_schemas::{Encoding, decode};
use lapin::BasicProperties;

use super::{load, shutdown_on_signal};

/// One file to send.
struct File {
    path: PathBuf,
    bytes: Vec<u8>,
    id: Option<String>,
    encoding: Encoding,
    properties: BasicProperties,
}

/// Publishes `files` as `org`, `batch` documents per message (1 = single messages).
pub async fn publish(path: &Path, org: &str, batch: usize, files: &[PathBuf]) -> Result<()> {
    let loaded = load(path)?;
    let config = &loaded.config;
    let Some(org_config) = config.org(org) else {
        bail!("org {org:?} is not in {}", path.display());
    };
    let url = match std::env::var("EXHUB_AMQP_URL") {
        Ok(url) => SecretUrl::new(url),
        Err(_) => config
            .org_login(org, None, &loaded.base)
            .with_context(|| format!("the AMQP login of org {org} (or set EXHUB_AMQP_URL)"))?,
    };
    let user = amqp_user(&url);
    if user != org_config.amqp_user() {
        bail!(
            "org {org} publishes as AMQP user {:?}, but EXHUB_AMQP_URL ({url}) logs in as {user:?}",
            org_config.amqp_user(),
        );
    }
    let signer = config
        .org_signer(org, &loaded.base)
        .with_context(|| format!("the signing key of org {org}"))?;
    let limits = config.hub.limits();
    let mut docs = Vec::new();
    for p in files {
        let bytes = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
        let encoding = Encoding::detect(&bytes).unwrap_or(Encoding::Json);
        let (id, properties) = match decode(&bytes, &loaded.registry, &limits) {
            Ok(doc) => (
                Some(doc.header.id.to_string()),
                wire::document_properties(&doc, encoding, &user),
            ),
            Err(e) => {
                eprintln!(
                    "{}: does not decode ({e}); sending it anyway: the hub will dead-letter it",
                    p.display()
                );
                let props = BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_user_id(user.as_str().into())
                    .with_content_type(encoding.content_type().into());
                (None, props)
            }
        };
        docs.push(File {
            path: p.clone(),
            bytes,
            id,
            encoding,
            properties,
        });
    }
    let topology = config.hub.topology();
    let exchange = topology.ingress_exchange();
    let mut messages = Vec::new();
    for chunk in docs
        .chunk_by(|a, b| a.encoding == b.encoding)
        .flat_map(|run| run.chunks(batch.max(1)))
    {
        let (payload, properties) = match chunk {
            [one] => (
                one.bytes.clone(),
                wire::signed(one.properties.clone(), signer.as_ref(), &[&one.bytes]),
            ),
            many => {
                let bodies: Vec<&[u8]> = many.iter().map(|f| f.bytes.as_slice()).collect();
                let encoding = many[0].encoding;
                let properties = wire::batch_properties(encoding, many.len(), &user);
                (
                    wire::encode_batch(encoding, &bodies),
                    wire::signed(properties, signer.as_ref(), &bodies),
                )
            }
        };
        messages.push(Outgoing {
            exchange: exchange.clone(),
            routing_key: String::new(),
            payload,
            properties,
        });
    }
    let cancel = shutdown_on_signal();
    let mut publisher = Publisher::new(url.expose(), format!("exhub-publish-{org}"), Declare::Ingress(topology));
    publisher
        .publish(&messages, &cancel)
        .await
        .with_context(|| format!("publishing to {url}"))?;
    for f in &docs {
        println!("{}\t{}\tconfirmed", f.path.display(), f.id.as_deref().unwrap_or("-"));
    }
    Ok(())
}
