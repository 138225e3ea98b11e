//! The sink's consumer: batches from the subscriber's queue, only copies the hub published
//! (`user_id` = the hub's user) and, when the hub has keys, signed by it; decoded (batch
//! messages split), applied in one transaction, refused documents to the subscriber's DLQ with
//! the reason (through the hub: a subscriber's login may write only to the ingress exchange) and
//! a receipt of what was applied and refused to the hub, then one `ack multiple`; the next batch
//! is applied while one is acknowledged. A lost connection (RabbitMQ or the database) ends the
//! session without acknowledging; the broker redelivers and the bookkeeping makes the second
//! pass harmless.

use std::sync::Arc;
use std::time::Duration;

use exhub_connect::amqp::{AmqpError, Backoff};
use exhub_connect::consumer::{BatchLimits, Subscription};
use exhub_connect::publisher::Declare;
use exhub_connect::status::{Live, Role, State};
use exhub_connect::wire::{self, Reason};
use exhub_connect::{Outgoing, Publisher, Topology};
use exhub_schemas::{Document, Limits, Registry};
use lapin::message::Delivery;
use lapin::options::BasicAckOptions;
use lapin::{BasicProperties, Channel};
use tokio_util::sync::CancellationToken;

pub use crate::apply::TableTarget;
use crate::apply::{Applier, ApplyError, Outcome, Target};

/// A batch applied and committed, not yet acknowledged.
struct Applied {
    /// Dead letters and the receipt, for the hub.
    to_hub: Vec<Outgoing>,
    /// The batch's last delivery tag (acknowledged with `multiple`).
    last_tag: Option<u64>,
}

/// Messages a batch takes at most (each may be a batch of documents).
const BATCH: usize = 32;
const BATCH_BYTES: usize = 1 << 20;
/// A batch takes what the prefetch already holds, without waiting for more (see the hub's).
const LINGER: Duration = Duration::ZERO;
const PREFETCH: u16 = 64;

/// What a database sink needs (built by the `exhub` binary from routes.toml).
#[derive(Debug, Clone)]
pub struct SinkSettings {
    /// The subscriber's name (its queue is `<prefix>.sub.<name>`).
    pub name: String,
    /// Doc type → table.
    pub tables: Vec<TableTarget>,
    /// RabbitMQ URL.
    pub amqp: exhub_connect::secret::SecretUrl,
    /// The exchange's AMQP names.
    pub topology: Topology,
    /// The AMQP user in that URL (the subscriber's org's).
    pub amqp_user: String,
    /// The hub's AMQP user: the only publisher whose copies the sink applies (RabbitMQ verifies
    /// `user_id`, so it cannot be forged).
    pub hub_user: String,
    /// The hub's public keys: when there are any, only copies signed by one of them are applied.
    pub hub_keys: exhub_connect::sign::Keyring,
    /// The subscriber's org's signing key: its receipts are signed with it when there is one.
    pub signer: Option<Arc<exhub_connect::sign::SigningKey>>,
    /// The target database's kind (`postgres`, `mysql`, `mssql`), for its heartbeat.
    pub kind: String,
    /// How often it reports its status to the hub ([`exhub_connect::status`]).
    pub heartbeat: Duration,
}

/// Why a sink stopped.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The target database cannot be used as configured.
    #[error("sink {sink}: {message}")]
    Setup {
        /// The subscriber.
        sink: String,
        /// What is wrong.
        message: String,
    },
    /// RabbitMQ refused for good.
    #[error(transparent)]
    Amqp(#[from] AmqpError),
}

/// A database subscriber.
pub struct DbSink {
    settings: SinkSettings,
    registry: Arc<Registry>,
    applier: Applier,
}

enum Failure {
    Amqp(AmqpError),
    Db(ApplyError),
}

impl From<AmqpError> for Failure {
    fn from(e: AmqpError) -> Self {
        Failure::Amqp(e)
    }
}

impl DbSink {
    /// Connects to the target database, creates the bookkeeping table if missing, and checks
    /// every target table exists.
    pub fn new(settings: SinkSettings, target: Box<dyn Target>, registry: Arc<Registry>) -> DbSink {
        let applier = Applier::new(target, settings.tables.clone());
        DbSink {
            settings,
            registry,
            applier,
        }
    }

    /// Consumes until `cancel`; retries passing failures. Its heartbeat reports beside it until
    /// it stops.
    pub async fn run(&self, cancel: &CancellationToken) -> Result<(), SinkError> {
        let s = &self.settings;
        let live = Live::new(&s.name, Role::Sink, &s.kind, s.heartbeat);
        let stopped = CancellationToken::new();
        let work = async {
            let result = self.run_loop(&live, cancel).await;
            stopped.cancel();
            result
        };
        let beat =
            exhub_connect::status::heartbeat(s.amqp.expose(), &s.topology, &s.amqp_user, s.heartbeat, &live, &stopped);
        tokio::join!(work, beat).0
    }

    async fn run_loop(&self, live: &Live, cancel: &CancellationToken) -> Result<(), SinkError> {
        let name = format!("exhub-sink-{}-{}", self.settings.name, std::process::id());
        let mut publisher = Publisher::new(
            self.settings.amqp.expose().to_owned(),
            format!("{name}-dlq"),
            Declare::Nothing,
        );
        let mut backoff = Backoff::default();
        loop {
            match self.session(&name, live, &mut publisher, cancel).await {
                Ok(()) => break,
                Err(Failure::Amqp(AmqpError::Cancelled)) => break,
                Err(Failure::Amqp(e)) if !e.is_passing() => return Err(e.into()),
                Err(Failure::Amqp(e)) => {
                    tracing::warn!(sink = %self.settings.name, error = %e, "RabbitMQ connection lost; unacknowledged messages will be redelivered");
                    live.state(State::Retrying, Some(e.to_string()));
                }
                Err(Failure::Db(e)) => {
                    tracing::warn!(sink = %self.settings.name, error = %e, "target database failed; the batch will be redelivered");
                    live.state(State::Retrying, Some(e.to_string()));
                }
            }
            if backoff.wait(cancel).await.is_err() {
                break;
            }
        }
        self.applier.close().await;
        Ok(())
    }

    async fn session(
        &self,
        name: &str,
        live: &Live,
        publisher: &mut Publisher,
        cancel: &CancellationToken,
    ) -> Result<(), Failure> {
        let queue = self.settings.topology.subscriber_queue(&self.settings.name);
        // The hub declares the topology (a subscriber's login may not); until it has, consuming
        // fails as NOT_FOUND, a passing failure retried with backoff.
        let mut sub = Subscription::open(
            self.settings.amqp.expose(),
            name,
            &Declare::Nothing,
            &queue,
            PREFETCH,
            cancel,
        )
        .await?;
        tracing::info!(sink = %self.settings.name, queue = %queue, "consuming");
        live.state(State::Running, None);
        let limits = BatchLimits {
            messages: BATCH,
            bytes: BATCH_BYTES,
            linger: LINGER,
        };
        // Batch n is acknowledged on the channel while batch n + 1 is taken from the consumer.
        let channel = sub.channel().clone();
        // Two batches in flight: while one's receipt waits for the broker's confirms and is
        // acknowledged (`finish`), the next is taken and applied (`apply`). The cycle is then
        // the longer of the two rather than their sum, which is what a stream of small messages
        // (one row each) needs. Finishing stays in order, so `ack multiple` never covers a
        // batch whose receipt is unconfirmed; a batch applied but not acknowledged when a
        // session fails is redelivered and applied again without effect.
        let mut pending: Option<Applied> = None;
        loop {
            let (next, finished) = tokio::join!(
                async {
                    let Some(deliveries) = sub.next(limits, cancel).await? else {
                        return Ok::<_, Failure>(None);
                    };
                    Ok(Some(self.apply(&deliveries, live).await?))
                },
                async {
                    match pending.take() {
                        Some(p) => self.finish(&channel, publisher, p, cancel).await,
                        None => Ok(()),
                    }
                }
            );
            finished?;
            let Some(applied) = next? else {
                sub.close("shutdown").await;
                return Ok(());
            };
            pending = Some(applied);
        }
    }

    /// Publishes a batch's dead letters and receipt with confirms, then acknowledges it.
    async fn finish(
        &self,
        channel: &Channel,
        publisher: &mut Publisher,
        batch: Applied,
        cancel: &CancellationToken,
    ) -> Result<(), Failure> {
        let started = std::time::Instant::now();
        if !batch.to_hub.is_empty() {
            publisher.publish(&batch.to_hub, cancel).await?;
        }
        tracing::debug!(
            sink = %self.settings.name,
            messages = batch.to_hub.len(),
            confirm_ms = started.elapsed().as_secs_f64() * 1000.0,
            "receipt confirmed"
        );
        if let Some(tag) = batch.last_tag {
            channel
                .basic_ack(tag, BasicAckOptions { multiple: true })
                .await
                .map_err(AmqpError::from)?;
        }
        Ok(())
    }

    /// Checks, decodes and applies one batch in one transaction: what remains is to send its
    /// dead letters and receipt to the hub, and acknowledge it.
    async fn apply(&self, deliveries: &[Delivery], live: &Live) -> Result<Applied, Failure> {
        let started = std::time::Instant::now();
        let limits = Limits::default();
        let mut docs: Vec<(Document, &[u8], &BasicProperties)> = Vec::new();
        // Dead letters and the receipt: all go to the hub, with confirms, before the ack.
        let mut to_hub: Vec<Outgoing> = Vec::new();
        let mut refused: Vec<wire::Refused> = Vec::new();
        for d in deliveries {
            let publisher = d.properties.user_id().as_ref().map(|u| u.as_str());
            if publisher != Some(self.settings.hub_user.as_str()) {
                let detail = format!(
                    "published by AMQP user {:?}, not by the hub ({:?}): not applied",
                    wire::excerpt(publisher.unwrap_or(""), 64),
                    self.settings.hub_user
                );
                tracing::warn!(sink = %self.settings.name, %detail, "refused a message not published by the hub");
                to_hub.push(self.dead_letter(&d.data, &d.properties, Reason::Unauthenticated, &detail));
                continue;
            }
            let parts = match wire::documents_of(&d.properties, &d.data) {
                Ok(parts) => parts,
                Err(e) => {
                    to_hub.push(self.dead_letter(&d.data, &d.properties, Reason::Malformed, &e.to_string()));
                    continue;
                }
            };
            if let Err(detail) = self.signed_by_hub(&d.properties, &parts) {
                tracing::warn!(sink = %self.settings.name, %detail, "refused a copy without the hub's signature");
                to_hub.push(self.dead_letter(&d.data, &d.properties, Reason::Signature, &detail));
                continue;
            }
            for raw in parts {
                match exhub_schemas::decode(raw, &self.registry, &limits) {
                    Ok(doc) => docs.push((doc, raw, &d.properties)),
                    Err(e) => to_hub.push(self.dead_letter(raw, &d.properties, Reason::Malformed, &e.to_string())),
                }
            }
        }
        let all: Vec<&Document> = docs.iter().map(|(d, _, _)| d).collect();
        let outcome = match self.applier.apply(&all).await {
            Ok(o) => o,
            Err(e) if e.is_data_error() => {
                // Find the documents the database refuses: each alone.
                let mut total = Outcome::default();
                for (doc, raw, props) in &docs {
                    match self.applier.apply(&[doc]).await {
                        Ok(o) => {
                            total.upserted += o.upserted;
                            total.deleted += o.deleted;
                            total.stale += o.stale;
                            total.ignored += o.ignored;
                        }
                        Err(e) if e.is_data_error() => {
                            tracing::warn!(
                                sink = %self.settings.name,
                                document = %doc.header.id,
                                error = %e,
                                "the target refused a document; sent to the subscriber's DLQ"
                            );
                            to_hub.push(self.dead_letter(raw, props, Reason::Apply, &e.to_string()));
                            refused.push(wire::Refused {
                                id: doc.header.id.to_string(),
                                reason: Reason::Apply.code().to_owned(),
                            });
                        }
                        Err(e) => return Err(Failure::Db(e)),
                    }
                }
                total
            }
            Err(e) => return Err(Failure::Db(e)),
        };
        tracing::debug!(
            sink = %self.settings.name,
            upserted = outcome.upserted,
            deleted = outcome.deleted,
            stale = outcome.stale,
            ignored = outcome.ignored,
            apply_ms = started.elapsed().as_secs_f64() * 1000.0,
            "batch applied"
        );
        // The receipt: what was committed (or found newer already) and what was refused.
        let applied: Vec<String> = docs
            .iter()
            .map(|(d, _, _)| d.header.id.to_string())
            .filter(|id| !refused.iter().any(|r| &r.id == id))
            .collect();
        if !docs.is_empty() {
            let now = exhub_schemas::time::unix_micros_now();
            let newest = docs.iter().map(|(d, _, _)| d.header.created_at.unix_micros()).max();
            live.sink(|f| {
                f.applied += applied.len() as u64;
                f.refused += refused.len() as u64;
                f.last_applied_micros = Some(now);
                f.applied_after_ms = newest.map(|t| u64::try_from((now - t).max(0) / 1000).unwrap_or(0));
            });
        }
        if !applied.is_empty() || !refused.is_empty() {
            let receipt = wire::Receipt {
                subscriber: self.settings.name.clone(),
                applied,
                refused,
            };
            let s = &self.settings;
            to_hub.push(receipt.message(&s.topology, &s.amqp_user, s.signer.as_deref()));
        }
        Ok(Applied {
            to_hub,
            last_tag: deliveries.last().map(|d| d.delivery_tag),
        })
    }

    /// Whether a message carries the hub's signature over its documents (always true when no
    /// hub key is configured).
    fn signed_by_hub(&self, props: &BasicProperties, parts: &[&[u8]]) -> Result<(), String> {
        let keys = &self.settings.hub_keys;
        if keys.is_empty() {
            return Ok(());
        }
        let Some(header) = wire::header_str(props, exhub_connect::sign::HEADER) else {
            return Err("the copy is not signed by the hub".into());
        };
        keys.verify(&header, parts).map(|_| ()).map_err(|e| e.to_string())
    }

    /// A refused document on its way, through the hub, to the subscriber's DLQ.
    fn dead_letter(&self, raw: &[u8], props: &BasicProperties, reason: Reason, detail: &str) -> Outgoing {
        let letter = wire::DeadLetter {
            reason,
            detail,
            subscriber: Some(&self.settings.name),
        };
        wire::participant_dead_letter(&self.settings.topology, props, raw, &self.settings.amqp_user, &letter)
    }
}
