//! The hub pipeline: competing workers on the ingress queue. Each worker takes a batch of
//! messages, and for every document in them (a batch message holds many) runs the [`Gate`],
//! drops in-batch repeats, archives the batch in one transaction (deduplicating on document id
//! against everything archived before), routes each document, publishes every copy and every
//! refusal with confirms, records the confirmed deliveries — and only then acknowledges the
//! ingress messages. A crash anywhere before the ack means the broker redelivers, and the
//! archive's dedupe makes the second pass route only what was not confirmed the first time.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use exhub_connect::amqp::{AmqpError, Backoff};
use exhub_connect::consumer::{BatchLimits, Subscription};
use exhub_connect::publisher::Declare;
use exhub_connect::wire::{self, Reason, header};
use exhub_connect::{Outgoing, Publisher, Topology};
use exhub_schemas::{Encoding, Registry, canonical, json, xml};
use lapin::message::Delivery;
use lapin::options::BasicAckOptions;
use lapin::{BasicProperties, Channel};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use crate::archive::{Archive, ArchiveError, BatchId, Entry, Stored, StoredBatch};
use exhub_connect::sign::{self, KeyError, Keyring, SigningKey};

use crate::alerts::{Readings, Rules};
use crate::archive::{AuditEntry, Proof, ReceiptRow};
use crate::config::Config;
use crate::gate::{Admitted, Gate, Rejection};
use crate::metrics::{
    DeadLetterLabels, DocLabels, Metrics, ReceiptLabels, RefusedLabels, RouteLabels, SubscriberLabels,
};
use crate::parts::Parts;
use crate::router::{Router, RouterError, Target};
use crate::secret::SecretUrl;

/// Bytes of unacknowledged messages one worker aims to hold: the prefetch count follows the
/// observed message size so that memory stays bounded whether messages are single documents
/// (~1 KB: up to 1000 ahead) or batches (~100 KB: a few dozen ahead). RabbitMQ applies a
/// prefetch change only to consumers started after it, so a worker whose traffic changed shape
/// starts a new session: once as soon as it has seen a few batches (it starts small, at
/// [`PREFETCH_START`], not knowing the size yet), then at most once per [`RESIZE_EVERY`].
const IN_FLIGHT_BYTES: usize = 2 << 20;
/// Prefetch bounds.
const PREFETCH_MIN: u16 = 8;
const PREFETCH_START: u16 = 64;
const PREFETCH_MAX: u16 = 1000;
/// Least time between two prefetch resizes.
const RESIZE_EVERY: Duration = Duration::from_secs(30);
/// Most messages, and about the most bytes, one batch takes.
const BATCH: usize = 250;
const BATCH_BYTES: usize = 512 << 10;
/// How long a batch waits for more messages once it has one: not at all. It takes what the
/// prefetch already holds — a full batch under load, one message when idle — so an idle
/// exchange adds no wait (a 5 ms linger here was most of the latency at low rates).
const LINGER: Duration = Duration::ZERO;
/// Most documents one receipt may name (a sink's batch is at most 32 messages of at most
/// `max_batch_items` documents).
const MAX_RECEIPT_ENTRIES: usize = 50_000;
/// How long in-flight work may take to finish after shutdown was asked for.
const GRACE: Duration = Duration::from_secs(30);

/// A failure that stops the hub (passing failures are retried inside).
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// RabbitMQ refused in a way retrying cannot fix.
    #[error(transparent)]
    Amqp(#[from] AmqpError),
    /// The archive failed to open.
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    /// The routes do not compile.
    #[error(transparent)]
    Router(#[from] RouterError),
    /// A public key does not parse.
    #[error(transparent)]
    Key(#[from] KeyError),
}

/// An org's public keys and whether it must sign.
struct OrgKeys {
    keys: Keyring,
    required: bool,
}

/// Everything a hub worker shares with the others: read-only, built once from the config.
pub struct Hub {
    gate: Gate,
    router: Router,
    archive: Archive,
    topology: Topology,
    amqp: SecretUrl,
    user: String,
    /// AMQP user → org, for participants' dead letters.
    orgs_by_user: HashMap<String, String>,
    /// AMQP user → what its org's signatures must be.
    signatures: HashMap<String, OrgKeys>,
    /// The hub's own key: every copy is signed with it when there is one.
    signer: Option<Arc<SigningKey>>,
    /// Subscriber → its org.
    subscriber_orgs: HashMap<String, String>,
    /// A subscriber's DLQ name → the subscriber.
    subscriber_dlqs: HashMap<String, String>,
    /// The subscribers that send receipts (database sinks).
    database_subscribers: Vec<String>,
    /// The archive's URL, for the reader of copies not yet applied.
    archive_url: SecretUrl,
    /// Most documents and bytes of one batch message.
    batch_items: usize,
    batch_bytes: usize,
    /// Where the workers' time goes, reported every [`STAGES_EVERY`].
    stages: Stages,
    /// What the workers did, for `GET /metrics`.
    metrics: Arc<Metrics>,
    /// What the early warning weighs ([`crate::alerts`]).
    readings: Arc<Readings>,
    /// The parts' heartbeats ([`crate::parts`]).
    parts: Arc<Parts>,
    /// The early warning's thresholds.
    rules: Rules,
    /// Fired once a worker has declared the topology: what reads the broker's queues and
    /// exchanges waits for it (a passive declare of a queue not there yet closes its channel).
    declared: CancellationToken,
}

/// The most `exhub_archived_after_seconds` counts one document as (seconds).
const ARCHIVED_AFTER_MAX: f64 = 3600.0;

/// How often the hub reports its stages' times (when it did work).
const STAGES_EVERY: Duration = Duration::from_secs(10);

/// Time the workers spent per stage (summed over workers, nanoseconds) and what they did, since
/// the last report: the measurement the archive's and the gate's design choices rest on.
#[derive(Default)]
struct Stages {
    /// Unpacking messages, verifying signatures, the gate and the router.
    gate: AtomicU64,
    /// The archive's one durable transaction (documents, keys, deliveries, receipts, audit).
    archive: AtomicU64,
    /// Encoding the copies and packing them into messages.
    copies: AtomicU64,
    /// Publishing copies and refusals until the broker confirmed them.
    publish: AtomicU64,
    /// Recording the deliveries and acknowledging.
    record: AtomicU64,
    batches: AtomicU64,
    messages: AtomicU64,
    documents: AtomicU64,
}

impl Stages {
    fn add(counter: &AtomicU64, since: Instant) {
        let nanos = u64::try_from(since.elapsed().as_nanos()).unwrap_or(u64::MAX);
        counter.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Logs the times since the last report (per document, and each stage's share), and
    /// starts over; nothing when there was no work.
    fn report(&self) {
        let batches = self.batches.swap(0, Ordering::Relaxed);
        if batches == 0 {
            return;
        }
        let messages = self.messages.swap(0, Ordering::Relaxed);
        let documents = self.documents.swap(0, Ordering::Relaxed).max(1);
        let take = |c: &AtomicU64| c.swap(0, Ordering::Relaxed);
        let (gate, archive, copies, publish, record) = (
            take(&self.gate),
            take(&self.archive),
            take(&self.copies),
            take(&self.publish),
            take(&self.record),
        );
        let per_doc = |nanos: u64| nanos as f64 / documents as f64 / 1000.0;
        tracing::info!(
            batches,
            messages,
            documents,
            gate_us_per_doc = format!("{:.1}", per_doc(gate)),
            archive_us_per_doc = format!("{:.1}", per_doc(archive)),
            copies_us_per_doc = format!("{:.1}", per_doc(copies)),
            publish_us_per_doc = format!("{:.1}", per_doc(publish)),
            record_us_per_doc = format!("{:.1}", per_doc(record)),
            "hub stages"
        );
    }
}

impl Hub {
    /// Builds the hub for `config`: compiles routes, reads the orgs' public keys, opens the
    /// archive. With `signer`, every copy the hub sends and every audit record it writes is
    /// signed.
    pub async fn new(config: &Config, registry: Arc<Registry>, signer: Option<SigningKey>) -> Result<Hub, HubError> {
        let signer = signer.map(Arc::new);
        let router = Router::new(config)?;
        let mut signatures = HashMap::new();
        for o in &config.orgs {
            let keys = OrgKeys {
                keys: Keyring::from_lines(&o.public_keys)?,
                required: o.require_signature,
            };
            signatures.insert(o.amqp_user().to_owned(), keys);
        }
        let metrics = Arc::new(Metrics::new());
        let readings = Arc::new(Readings::default());
        let archive = Archive::open(config.hub.archive.expose())
            .await?
            .signing_audit(signer.clone());
        Ok(Hub {
            gate: Gate::new(config, registry),
            router,
            archive,
            topology: config.hub.topology(),
            amqp: config.hub.amqp.clone(),
            user: config.hub.user(),
            orgs_by_user: config.orgs_by_user(),
            subscriber_orgs: config
                .subscribers
                .iter()
                .map(|s| (s.name().to_owned(), s.org().to_owned()))
                .collect(),
            database_subscribers: config
                .subscribers
                .iter()
                .filter(|s| s.is_database())
                .map(|s| s.name().to_owned())
                .collect(),
            archive_url: config.hub.archive.clone(),
            subscriber_dlqs: config
                .subscribers
                .iter()
                .map(|s| (config.hub.topology().subscriber_dlq(s.name()), s.name().to_owned()))
                .collect(),
            signatures,
            signer,
            stages: Stages::default(),
            parts: Arc::new(Parts::new(config, Arc::clone(&metrics), Arc::clone(&readings))),
            rules: Rules::new(&config.alerts, config.hub.heartbeat()),
            declared: CancellationToken::new(),
            metrics,
            readings,
            batch_items: config.hub.batch_limits().0,
            batch_bytes: config.hub.batch_limits().1,
        })
    }

    /// The archive.
    pub fn archive(&self) -> &Archive {
        &self.archive
    }

    /// What the workers count, for the admin server to serve.
    pub fn metrics(&self) -> Arc<Metrics> {
        Arc::clone(&self.metrics)
    }

    /// What the early warning weighs.
    pub fn readings(&self) -> Arc<Readings> {
        Arc::clone(&self.readings)
    }

    /// `task`, run once a worker has declared the topology (unless `shutdown` comes first).
    fn once_declared(
        &self,
        shutdown: &CancellationToken,
        task: impl Future<Output = ()> + Send + 'static,
    ) -> impl Future<Output = ()> + Send + 'static {
        let (declared, shutdown) = (self.declared.clone(), shutdown.clone());
        async move {
            tokio::select! {
                () = declared.cancelled() => task.await,
                () = shutdown.cancelled() => {}
            }
        }
    }

    /// The parts of the exchange as their heartbeats tell it.
    pub fn parts(&self) -> Arc<Parts> {
        Arc::clone(&self.parts)
    }

    /// Runs `workers` workers until `shutdown` fires, then lets each finish (publish, confirm,
    /// acknowledge) the batch it holds, and returns.
    pub async fn run(self: Arc<Self>, workers: usize, shutdown: CancellationToken) -> Result<(), HubError> {
        // In-flight work gets a grace period; after it, even confirms stop being awaited.
        let hard_stop = CancellationToken::new();
        let hard = hard_stop.clone();
        let watchdog_shutdown = shutdown.clone();
        let watchdog = tokio::spawn(async move {
            watchdog_shutdown.cancelled().await;
            tokio::time::sleep(GRACE).await;
            hard.cancel();
        });
        let hub = Arc::clone(&self);
        let reporter = tokio::spawn(async move {
            let mut every = tokio::time::interval(STAGES_EVERY);
            every.tick().await;
            loop {
                every.tick().await;
                hub.stages.report();
            }
        });
        let deliveries = tokio::spawn(crate::deliveries::sample(
            self.archive_url.expose().to_owned(),
            self.database_subscribers.clone(),
            self.metrics(),
            Arc::clone(&self.readings),
            shutdown.clone(),
        ));
        let queues = tokio::spawn(self.once_declared(
            &shutdown,
            crate::queues::sample(
                self.amqp.expose().to_owned(),
                crate::queues::queues(&self.topology, &self.router.subscribers()),
                self.metrics(),
                Arc::clone(&self.readings),
                shutdown.clone(),
            ),
        ));
        let heartbeats = tokio::spawn(self.once_declared(
            &shutdown,
            crate::parts::listen(
                self.amqp.expose().to_owned(),
                self.topology.clone(),
                self.parts(),
                shutdown.clone(),
            ),
        ));
        let watcher = tokio::spawn(self.once_declared(
            &shutdown,
            crate::supervise::watch(
                crate::supervise::Watcher {
                    url: self.amqp.expose().to_owned(),
                    topology: self.topology.clone(),
                    user: self.user.clone(),
                    rules: self.rules.clone(),
                    readings: Arc::clone(&self.readings),
                    metrics: self.metrics(),
                    archive_url: self.archive_url.expose().to_owned(),
                },
                shutdown.clone(),
            ),
        ));
        let tracker = TaskTracker::new();
        let mut handles = Vec::new();
        for n in 0..workers.max(1) {
            let hub = Arc::clone(&self);
            let (shutdown, hard_stop) = (shutdown.clone(), hard_stop.clone());
            let span = tracing::info_span!("worker", worker = n);
            handles.push(tracker.spawn(async move { hub.worker(n, &shutdown, &hard_stop).await }.instrument(span)));
        }
        tracker.close();
        let mut result = Ok(());
        for h in handles {
            match h.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    // A fatal error in one worker stops them all.
                    shutdown.cancel();
                    result = Err(e);
                }
                Err(join) => tracing::error!(error = %join, "hub worker panicked"),
            }
        }
        tracker.wait().await;
        watchdog.abort();
        reporter.abort();
        queues.abort();
        deliveries.abort();
        heartbeats.abort();
        watcher.abort();
        self.stages.report();
        self.archive.close().await;
        result
    }

    /// One worker: (re)connects until shutdown, running sessions.
    async fn worker(
        &self,
        n: usize,
        shutdown: &CancellationToken,
        hard_stop: &CancellationToken,
    ) -> Result<(), HubError> {
        let name = format!("exhub-hub-{}-{n}", std::process::id());
        let mut publisher = Publisher::new(
            self.amqp.expose(),
            format!("{name}-publish"),
            Declare::All(self.topology.clone(), self.router.subscribers()),
        );
        let mut backoff = Backoff::default();
        let mut size = Size::default();
        loop {
            match self
                .session(&name, &mut publisher, &mut size, shutdown, hard_stop)
                .await
            {
                Ok(Ended::Shutdown) => return Ok(()),
                Ok(Ended::Resize) => continue,
                Err(Failure::Amqp(AmqpError::Cancelled)) => return Ok(()),
                Err(Failure::Amqp(e)) if !e.is_passing() => return Err(e.into()),
                Err(Failure::Amqp(e)) => {
                    tracing::warn!(error = %e, "RabbitMQ connection lost; unacknowledged messages will be redelivered");
                    size.probe = true;
                }
                Err(Failure::Archive(e)) => {
                    tracing::warn!(error = %e, "archive failed; unacknowledged messages will be redelivered");
                    size.probe = true;
                }
            }
            if backoff.wait(shutdown).await.is_err() {
                return Ok(());
            }
        }
    }

    /// Consumes until shutdown (`Ok`) or a failure (`Err`; the caller reconnects).
    async fn session(
        &self,
        name: &str,
        publisher: &mut Publisher,
        size: &mut Size,
        shutdown: &CancellationToken,
        hard_stop: &CancellationToken,
    ) -> Result<Ended, Failure> {
        let prefetch = size.prefetch();
        let declare = Declare::All(self.topology.clone(), self.router.subscribers());
        let queue = self.topology.ingress_queue();
        let mut sub = Subscription::open(self.amqp.expose(), name, &declare, &queue, prefetch, shutdown).await?;
        self.declared.cancel();
        // Batch n is acknowledged on the channel while batch n + 1 is taken from the consumer.
        let channel = sub.channel().clone();
        tracing::info!(queue = %self.topology.ingress_queue(), prefetch, "consuming");
        let mut batches = 0u32;
        // Two batches in flight: while one waits for the broker's confirms and is acknowledged
        // (`finish`), the next is taken, gated and archived (`prepare`). Finishing stays in
        // order, so `ack multiple` never covers a message whose copies are not confirmed.
        let mut pending: Option<Prepared> = None;
        loop {
            let limits = BatchLimits {
                messages: BATCH,
                bytes: BATCH_BYTES,
                linger: LINGER,
            };
            let (next, finished) = tokio::join!(
                async {
                    let Some(deliveries) = sub.next(limits, shutdown).await? else {
                        return Ok::<_, Failure>(None);
                    };
                    let bytes: usize = deliveries.iter().map(|d| d.data.len()).sum();
                    size.observe(bytes, deliveries.len());
                    let span = tracing::debug_span!("batch", messages = deliveries.len());
                    Ok(Some(self.prepare(&deliveries).instrument(span).await?))
                },
                async {
                    match pending.take() {
                        Some(p) => self.finish(&channel, publisher, p, hard_stop).await,
                        None => Ok(()),
                    }
                }
            );
            finished?;
            let Some(prepared) = next? else {
                // Stop taking new messages; prefetched ones go back to the queue on close.
                sub.close("shutdown").await;
                return Ok(Ended::Shutdown);
            };
            pending = Some(prepared);
            if size.probe {
                // The first message after a failure went through: back to the normal prefetch.
                if let Some(p) = pending.take() {
                    self.finish(&channel, publisher, p, hard_stop).await?;
                }
                size.probe = false;
                tracing::info!("a message went through after the failure; resubscribing with the normal prefetch");
                sub.close("resize").await;
                return Ok(Ended::Resize);
            }
            let wanted = size.prefetch();
            batches += 1;
            let changed = wanted > prefetch.saturating_mul(4) || wanted < prefetch / 4;
            // Messages grown large shrink the prefetch at once (memory first); growing it again
            // waits, so that mixed traffic does not resubscribe all the time.
            let shrink = wanted < prefetch / 4;
            let may = batches >= 3 && (shrink || size.resized.is_none_or(|at| at.elapsed() >= RESIZE_EVERY));
            if changed && may {
                size.resized = Some(Instant::now());
                if let Some(p) = pending.take() {
                    self.finish(&channel, publisher, p, hard_stop).await?;
                }
                // Everything taken so far is acknowledged; prefetched messages go back on close.
                tracing::info!(
                    from = prefetch,
                    to = wanted,
                    "message size changed; resubscribing with a new prefetch"
                );
                sub.close("resize").await;
                return Ok(Ended::Resize);
            }
        }
    }

    /// Gates, archives and routes one batch of ingress messages: what remains is to publish
    /// the copies and refusals, record the deliveries, and acknowledge.
    ///
    /// The stages: [`Hub::unpack`] (what each message is), [`Hub::admit`] (the gate and the
    /// router, per document), the archive (one transaction), the copies ([`copy_for`], then
    /// [`pack`] into messages).
    async fn prepare(&self, deliveries: &[Delivery]) -> Result<Prepared, Failure> {
        let started = Instant::now();
        let mut out: Vec<Outgoing> = Vec::new();
        let (items, receipts) = self.unpack(deliveries, &mut out);
        let admitted = self.admit(&items, deliveries, &mut out);
        Stages::add(&self.stages.gate, started);
        let started = Instant::now();
        let entries: Vec<Entry<'_>> = admitted
            .iter()
            .map(|(item, a, targets)| entry(item, a, targets))
            .collect();
        // Refusals so far are audited with the archive's writes, in one transaction.
        let audit = refusals_audit(&out);
        let stored = if entries.is_empty() && audit.is_empty() && receipts.is_empty() {
            StoredBatch {
                batch: None,
                entries: Vec::new(),
                receipts: Vec::new(),
            }
        } else {
            let write = Instant::now();
            let stored = self.archive.store(&entries, &receipts, &audit).await?;
            self.metrics.archive_write.observe(write.elapsed().as_secs_f64());
            stored
        };
        self.count_stored(&admitted, &stored);
        let before_conflicts = out.len();
        Stages::add(&self.stages.archive, started);
        let started = Instant::now();
        let mut copies: Vec<Copy<'_>> = Vec::new();
        let mut confirmed: Vec<(uuid::Uuid, String)> = Vec::new();
        for ((item, a, targets), stored) in admitted.iter().zip(stored.entries) {
            let skip = match stored {
                Stored::New => HashSet::new(),
                Stored::Duplicate {
                    same_content: true,
                    published,
                } => published,
                Stored::Duplicate {
                    same_content: false, ..
                } => {
                    let r = Rejection::new(
                        Reason::Conflict,
                        format!(
                            "document {} was archived before with different content",
                            a.doc.header.id
                        ),
                    );
                    let props = &deliveries[item.delivery].properties;
                    out.push(self.dead_letter(item.raw, props, item.user.as_deref(), &r));
                    continue;
                }
            };
            for t in targets.iter().filter(|t| !skip.contains(&t.subscriber)) {
                copies.push(Copy {
                    delivery: item.delivery,
                    target: t,
                    bytes: copy_for(a, item.raw, t, self.gate.registry()),
                    properties: wire::document_properties(&a.doc, t.format, &self.user),
                });
                confirmed.push((a.doc.header.id, t.subscriber.clone()));
            }
        }
        // Conflicts are known only once stored: audited on their own.
        let conflicts = refusals_audit(&out[before_conflicts..]);
        if !conflicts.is_empty() {
            self.archive.audit(&conflicts).await?;
        }
        out.extend(pack(copies, &self.topology, &self.user, self.signer.as_deref()));
        Stages::add(&self.stages.copies, started);
        self.stages.batches.fetch_add(1, Ordering::Relaxed);
        self.stages
            .messages
            .fetch_add(deliveries.len() as u64, Ordering::Relaxed);
        self.stages.documents.fetch_add(items.len() as u64, Ordering::Relaxed);
        tracing::debug!(
            documents = items.len(),
            archived = admitted.len(),
            copies = confirmed.len(),
            "batch archived"
        );
        Ok(Prepared {
            out,
            batch: stored.batch,
            confirmed,
            last_tag: deliveries.last().map(|d| d.delivery_tag),
        })
    }

    /// Counts a stored batch's documents (new or seen before; how long after their source
    /// read them) and the receipts it recorded. A document seen before with other content is a
    /// conflict, counted with the refusals when its dead letter is sent.
    fn count_stored(&self, admitted: &[(&Item<'_>, Admitted, Vec<Target>)], stored: &StoredBatch) {
        let now = exhub_schemas::time::unix_micros_now();
        // Summed per label set first: one counter update per set and batch, not one lookup
        // (and two label strings) per document.
        let mut new: HashMap<(&str, &str), u64> = HashMap::new();
        let mut seen: HashMap<(&str, &str), u64> = HashMap::new();
        let mut routed: HashMap<(&str, &str), u64> = HashMap::new();
        for ((_, a, targets), s) in admitted.iter().zip(&stored.entries) {
            let h = &a.doc.header;
            let labels = (h.sender.org.as_str(), h.doc_type.as_str());
            match s {
                Stored::New => {
                    *new.entry(labels).or_default() += 1;
                    for t in targets {
                        for r in &t.routes {
                            *routed.entry((r, t.subscriber.as_str())).or_default() += 1;
                        }
                    }
                    // The sender sets created_at: a document from a wrong clock, or one that
                    // waited in a DLQ, counts as at most an hour, so that it cannot swamp the sum.
                    let after = (now - h.created_at.unix_micros()) as f64 / 1e6;
                    self.metrics
                        .archived_after
                        .observe(after.clamp(0.0, ARCHIVED_AFTER_MAX));
                }
                Stored::Duplicate { same_content: true, .. } => *seen.entry(labels).or_default() += 1,
                Stored::Duplicate {
                    same_content: false, ..
                } => {}
            }
        }
        let labels = |(org, doc_type): (&str, &str)| DocLabels {
            org: org.to_owned(),
            doc_type: doc_type.to_owned(),
        };
        for (key, n) in new {
            self.metrics.received.get_or_create(&labels(key)).inc_by(n);
        }
        for (key, n) in seen {
            self.metrics.duplicates.get_or_create(&labels(key)).inc_by(n);
        }
        for ((route, subscriber), n) in routed {
            let labels = RouteLabels {
                route: route.to_owned(),
                subscriber: subscriber.to_owned(),
            };
            self.metrics.routed.get_or_create(&labels).inc_by(n);
        }
        let mut receipts: HashMap<(&str, &str), u64> = HashMap::new();
        for (subscriber, outcome) in &stored.receipts {
            *receipts.entry((subscriber.as_str(), outcome)).or_default() += 1;
        }
        for ((subscriber, outcome), n) in receipts {
            let labels = ReceiptLabels {
                subscriber: subscriber.to_owned(),
                outcome: outcome.to_owned(),
            };
            self.metrics.receipts.get_or_create(&labels).inc_by(n);
        }
    }

    /// Stage 1: what each ingress message is. Participants' dead letters are filed and
    /// receipts read; a document or batch is split and its signature verified; what is
    /// refused goes to `out`. The documents to gate, and the receipts' rows.
    fn unpack<'d>(&self, deliveries: &'d [Delivery], out: &mut Vec<Outgoing>) -> (Vec<Item<'d>>, Vec<ReceiptRow>) {
        let mut items: Vec<Item<'_>> = Vec::new();
        let mut receipts: Vec<ReceiptRow> = Vec::new();
        for (i, d) in deliveries.iter().enumerate() {
            let user = self.effective_user(&d.properties);
            if wire::is_dead_letter(&d.properties) {
                out.push(self.file_dead_letter(d));
                continue;
            }
            if wire::is_receipt(&d.properties) {
                match self.receipt(d) {
                    Ok(rows) => receipts.extend(rows),
                    Err(r) => out.push(self.dead_letter(&d.data, &d.properties, user.as_deref(), &r)),
                }
                continue;
            }
            let parts = if wire::is_batch(&d.properties) {
                self.split(d)
            } else {
                Ok(vec![&d.data[..]])
            };
            match parts.and_then(|parts| Ok((self.verify(d, &parts)?, parts))) {
                Ok((proof, parts)) => {
                    let proof = proof.map(Arc::new);
                    items.extend(parts.into_iter().map(|raw| Item::new(i, raw, &user, proof.clone())));
                }
                Err(r) => out.push(self.dead_letter(&d.data, &d.properties, user.as_deref(), &r)),
            }
        }
        (items, receipts)
    }

    /// Stage 2: every document through the gate; the admitted ones routed; repeats inside
    /// this batch dropped. Refusals go to `out`.
    fn admit<'i, 'd>(
        &self,
        items: &'i [Item<'d>],
        deliveries: &[Delivery],
        out: &mut Vec<Outgoing>,
    ) -> Vec<(&'i Item<'d>, Admitted, Vec<Target>)> {
        let mut seen = HashSet::new();
        let mut admitted = Vec::new();
        for item in items {
            match self.gate.admit(item.raw, item.user.as_deref()) {
                Ok(a) => {
                    if seen.insert(a.doc.header.id) {
                        let targets = self.router.route(&a.doc);
                        admitted.push((item, a, targets));
                    }
                }
                Err(r) => {
                    let props = &deliveries[item.delivery].properties;
                    out.push(self.dead_letter(item.raw, props, item.user.as_deref(), &r));
                }
            }
        }
        admitted
    }

    /// Publishes a prepared batch with confirms, records its deliveries, acknowledges it.
    async fn finish(
        &self,
        channel: &Channel,
        publisher: &mut Publisher,
        batch: Prepared,
        hard_stop: &CancellationToken,
    ) -> Result<(), Failure> {
        let started = Instant::now();
        publisher.publish(&batch.out, hard_stop).await?;
        Stages::add(&self.stages.publish, started);
        self.count_refusals(&batch.out);

        let started = Instant::now();
        if let Some(id) = batch.batch {
            let confirmed: Vec<(uuid::Uuid, &str)> = batch.confirmed.iter().map(|(id, s)| (*id, s.as_str())).collect();
            self.archive.confirm(id, &confirmed, &self.user).await?;
        }
        // Counted once the archive has them as published.
        let mut per_subscriber: HashMap<&str, u64> = HashMap::new();
        for (_, s) in &batch.confirmed {
            *per_subscriber.entry(s.as_str()).or_default() += 1;
        }
        for (subscriber, n) in per_subscriber {
            let labels = SubscriberLabels {
                subscriber: subscriber.to_owned(),
            };
            self.metrics.published.get_or_create(&labels).inc_by(n);
        }
        if let Some(tag) = batch.last_tag {
            channel
                .basic_ack(tag, BasicAckOptions { multiple: true })
                .await
                .map_err(AmqpError::from)?;
        }
        Stages::add(&self.stages.record, started);
        Ok(())
    }

    /// Counts the dead letters among `out`, once confirmed (so that a batch retried after a
    /// failure does not count them again): in the hub's DLQ, the hub's refusals and
    /// participants' dead letters that name no subscriber; in a subscriber's DLQ, what that
    /// subscriber could not take.
    fn count_refusals(&self, out: &[Outgoing]) {
        let dlq = self.topology.hub_dlq();
        for o in out {
            let Some(reason) = wire::header_str(&o.properties, header::REASON) else {
                continue;
            };
            // A known code, or `other`: a label never takes a value from outside.
            let reason = Reason::from_code(&reason).map_or("other", |r| r.code()).to_owned();
            if o.routing_key == dlq {
                let org = wire::header_str(&o.properties, header::USER)
                    .and_then(|u| self.orgs_by_user.get(&u).cloned())
                    .unwrap_or_default();
                self.metrics.refused.get_or_create(&RefusedLabels { org, reason }).inc();
            } else if let Some(subscriber) = self.subscriber_dlqs.get(&o.routing_key) {
                let labels = DeadLetterLabels {
                    subscriber: subscriber.clone(),
                    reason,
                };
                self.metrics.dead_letters.get_or_create(&labels).inc();
            }
        }
    }

    /// The AMQP user a message was published by. `user_id` is verified by RabbitMQ; when the hub
    /// itself republished the message (DLQ retry), the original publisher is in a header only
    /// the hub's own user is trusted to set.
    fn effective_user(&self, props: &BasicProperties) -> Option<String> {
        let user = props.user_id().as_ref().map(|u| u.as_str().to_owned());
        if user.as_deref() == Some(self.user.as_str())
            && let Some(original) = wire::header_str(props, header::USER)
        {
            return Some(original);
        }
        user
    }

    /// The documents of a batch message, unless the batch as a whole is refused: over the byte
    /// or item limit, malformed, or holding another number of documents than `x-exhub-count`
    /// says. A refused batch is dead-lettered whole, as one message.
    fn split<'d>(&self, d: &'d Delivery) -> Result<Vec<&'d [u8]>, Rejection> {
        if d.data.len() > self.batch_bytes {
            return Err(Rejection::new(
                Reason::TooLarge,
                format!(
                    "batch message of {} bytes, over the limit of {} (max_batch_bytes)",
                    d.data.len(),
                    self.batch_bytes
                ),
            ));
        }
        let parts = wire::split_batch(&d.data).map_err(|e| Rejection::new(Reason::Malformed, e.to_string()))?;
        if parts.len() > self.batch_items {
            return Err(Rejection::new(
                Reason::TooLarge,
                format!(
                    "batch of {} documents, over the limit of {} (max_batch_items)",
                    parts.len(),
                    self.batch_items
                ),
            ));
        }
        let count = wire::header_str(&d.properties, header::COUNT);
        if count.as_deref() != Some(parts.len().to_string().as_str()) {
            return Err(Rejection::new(
                Reason::Malformed,
                format!(
                    "{} says {} but the batch holds {} documents",
                    header::COUNT,
                    wire::excerpt(count.as_deref().unwrap_or("nothing"), 32),
                    parts.len()
                ),
            ));
        }
        Ok(parts)
    }

    /// A subscriber's receipt, checked: sent by the subscriber's own org (its verified login),
    /// signed by one of the org's keys when it signs or must, and well formed.
    fn receipt(&self, d: &Delivery) -> Result<Vec<ReceiptRow>, Rejection> {
        let user = d.properties.user_id().as_ref().map(|u| u.as_str().to_owned());
        let Some(org) = user.as_deref().and_then(|u| self.orgs_by_user.get(u)) else {
            let shown = wire::excerpt(user.as_deref().unwrap_or(""), 64).into_owned();
            return Err(Rejection::new(
                Reason::Unauthenticated,
                format!("a receipt from AMQP user {shown:?}, which is no org's"),
            ));
        };
        let proof = self.verify(d, &[&d.data[..]])?;
        let receipt: wire::Receipt = serde_json::from_slice(&d.data)
            .map_err(|e| Rejection::new(Reason::Malformed, format!("not a receipt: {e}")))?;
        if self.subscriber_orgs.get(&receipt.subscriber) != Some(org) {
            let shown = wire::excerpt(&receipt.subscriber, 64).into_owned();
            return Err(Rejection::new(
                Reason::Unauthorized,
                format!("org {org:?} sent a receipt for subscriber {shown:?}, which is not its own"),
            ));
        }
        let entries = receipt.applied.len() + receipt.refused.len();
        if entries > MAX_RECEIPT_ENTRIES {
            return Err(Rejection::new(
                Reason::TooLarge,
                format!("a receipt of {entries} documents, over the limit of {MAX_RECEIPT_ENTRIES}"),
            ));
        }
        let key_id = proof.map(|p| p.key_id);
        let row = |id: &str, outcome, reason: Option<String>| -> Result<ReceiptRow, Rejection> {
            let id = uuid::Uuid::parse_str(id).map_err(|_| {
                Rejection::new(
                    Reason::Malformed,
                    format!("receipt names {:?}, not a document id", wire::excerpt(id, 64)),
                )
            })?;
            Ok(ReceiptRow {
                document_id: id.to_string(),
                subscriber: receipt.subscriber.clone(),
                outcome,
                reason,
                amqp_user: user.clone().unwrap_or_default(),
                key_id: key_id.clone(),
                received_at: 0,
            })
        };
        let mut rows = Vec::with_capacity(receipt.applied.len() + receipt.refused.len());
        for id in &receipt.applied {
            rows.push(row(id, crate::archive::APPLIED, None)?);
        }
        for r in &receipt.refused {
            let Some(code) = Reason::from_code(&r.reason).filter(|c| c.from_participants()) else {
                return Err(Rejection::new(
                    Reason::Malformed,
                    format!(
                        "receipt gives reason {:?}, which is not a participant's",
                        wire::excerpt(&r.reason, 64)
                    ),
                ));
            };
            rows.push(row(&r.id, crate::archive::REFUSED, Some(code.code().to_owned()))?);
        }
        // One outcome per document (a sink may have seen a document twice in one batch); a
        // refusal wins over an application.
        rows.sort_by(|a, b| a.document_id.cmp(&b.document_id).then(b.outcome.cmp(a.outcome)));
        rows.dedup_by(|a, b| a.document_id == b.document_id);
        Ok(rows)
    }

    /// The sender's signature over a message's documents, checked against its org's keys: the
    /// proof to archive with them, `None` for an unsigned message of an org that need not sign,
    /// or the refusal (`signature`) of the whole message. A message the hub itself republished
    /// (a DLQ retry) is held to the rules of its original sender (`x-exhub-user`, which the hub
    /// believes only on its own messages): the hub keeps a single document's signature through
    /// its DLQ, and a document of an org that must sign comes back in only with it.
    fn verify(&self, d: &Delivery, parts: &[&[u8]]) -> Result<Option<Proof>, Rejection> {
        let props = &d.properties;
        let signer = self.effective_user(props);
        let Some(org) = signer.as_deref().and_then(|u| self.signatures.get(u)) else {
            // Not an org's login: the gate refuses its documents as unauthenticated.
            return Ok(None);
        };
        let Some(header) = wire::header_str(props, sign::HEADER) else {
            if org.required {
                return Err(Rejection::new(
                    Reason::Signature,
                    "unsigned, and the sender's org requires signatures (require_signature)",
                ));
            }
            return Ok(None);
        };
        // The manifest once: verified, then kept as the proof.
        let manifest = sign::manifest(parts);
        match org.keys.verify_manifest(&header, &manifest) {
            Ok(key_id) => Ok(Some(Proof {
                id: sign::digest(&manifest),
                key_id,
                signature: header,
                manifest: String::from_utf8_lossy(&manifest).into_owned(),
            })),
            Err(e) => Err(Rejection::new(Reason::Signature, e.to_string())),
        }
    }

    /// A participant's dead letter (a source's unmappable row, a sink's refused document), filed
    /// in the DLQ it names — if its sender is an org of this exchange, its reason one a
    /// participant may give, and the subscriber it names that org's. Otherwise it goes to the
    /// hub DLQ, refused with the reason why.
    fn file_dead_letter(&self, d: &Delivery) -> Outgoing {
        let props = &d.properties;
        // Only RabbitMQ's verified user_id: a participant's dead letter is never the hub's.
        let user = props.user_id().as_ref().map(|u| u.as_str());
        let org = user.and_then(|u| self.orgs_by_user.get(u));
        let given = wire::header_str(props, header::REASON).unwrap_or_default();
        let detail = wire::excerpt(
            &wire::header_str(props, header::DETAIL).unwrap_or_default(),
            wire::HEADER_MAX,
        )
        .into_owned();
        let subscriber = wire::header_str(props, header::SUBSCRIBER);
        let refuse = |reason, detail: String| self.dead_letter(&d.data, props, user, &Rejection::new(reason, detail));
        let Some(org) = org else {
            let shown = wire::excerpt(user.unwrap_or(""), 64);
            return refuse(
                Reason::Unauthenticated,
                format!("a dead letter from AMQP user {shown:?}, which is no org's"),
            );
        };
        let Some(reason) = Reason::from_code(&given).filter(|r| r.from_participants()) else {
            let shown = wire::excerpt(&given, 64);
            return refuse(
                Reason::Malformed,
                format!("a dead letter from org {org:?} with reason {shown:?}, which is not a participant's"),
            );
        };
        let queue = match &subscriber {
            None => self.topology.hub_dlq(),
            Some(s) if self.subscriber_orgs.get(s) == Some(org) => self.topology.subscriber_dlq(s),
            Some(s) => {
                let shown = wire::excerpt(s, 64);
                return refuse(
                    Reason::Unauthorized,
                    format!("org {org:?} filed a dead letter for subscriber {shown:?}, which is not its own"),
                );
            }
        };
        tracing::warn!(
            reason = reason.code(),
            org = %org,
            subscriber = subscriber.as_deref().unwrap_or(""),
            %detail,
            "a participant dead-lettered a document"
        );
        let letter = wire::DeadLetter {
            reason,
            detail: &detail,
            subscriber: subscriber.as_deref(),
        };
        let mut properties = wire::dead_letter_properties(props, &d.data, &self.user, &letter);
        properties = wire::with_header(properties, header::USER, user.unwrap_or(""));
        Outgoing {
            exchange: self.topology.dead_letter_exchange(),
            routing_key: queue,
            payload: d.data.to_vec(),
            properties,
        }
    }

    /// A refused document on its way to the hub DLQ, with the reason in its headers.
    fn dead_letter(&self, raw: &[u8], props: &BasicProperties, user: Option<&str>, r: &Rejection) -> Outgoing {
        tracing::warn!(
            reason = r.reason.code(),
            detail = %r.detail,
            message_id = props.message_id().as_ref().map(|m| m.as_str()).unwrap_or(""),
            user = user.unwrap_or(""),
            "document refused; sent to the DLQ"
        );
        let letter = wire::DeadLetter {
            reason: r.reason,
            detail: &r.detail,
            subscriber: None,
        };
        let mut properties = wire::dead_letter_properties(props, raw, &self.user, &letter);
        if let Some(u) = user {
            properties = wire::with_header(properties, header::USER, u);
        }
        // A single document keeps its sender's signature, so that a DLQ retry can show it again
        // (a document taken out of a signed batch cannot: its signature covers the batch).
        if !wire::is_batch(props)
            && let Some(signature) = wire::header_str(props, sign::HEADER)
        {
            properties = wire::with_header(properties, sign::HEADER, &signature);
        }
        Outgoing {
            exchange: self.topology.dead_letter_exchange(),
            routing_key: self.topology.hub_dlq(),
            payload: raw.to_vec(),
            properties,
        }
    }
}

/// Audit records of the dead letters among `out`: per (publisher, DLQ), the message ids and
/// reasons.
fn refusals_audit(out: &[Outgoing]) -> Vec<AuditEntry> {
    let mut groups: BTreeMap<(String, &str), Vec<(String, String)>> = BTreeMap::new();
    for o in out.iter().filter(|o| o.properties.headers().is_some()) {
        let Some(reason) = wire::header_str(&o.properties, header::REASON) else {
            continue;
        };
        let user = wire::header_str(&o.properties, header::USER).unwrap_or_default();
        let id = o
            .properties
            .message_id()
            .as_ref()
            .map(|m| m.to_string())
            .unwrap_or_default();
        groups
            .entry((user, o.routing_key.as_str()))
            .or_default()
            .push((id, reason));
    }
    groups
        .into_iter()
        .map(|((user, dlq), refused)| {
            AuditEntry::new(
                &user,
                "refused",
                format!("{} to {dlq}", refused.len()),
                serde_json::json!({ "dlq": dlq, "refused": refused }),
            )
        })
        .collect()
}

/// A batch gated and archived, not yet published.
struct Prepared {
    /// Copies and refusals to publish.
    out: Vec<Outgoing>,
    /// The archive's number for the batch, whose copies are `published` once `out` is confirmed.
    batch: Option<BatchId>,
    /// (document, subscriber) pairs of the copies in `out`, for the audit log.
    confirmed: Vec<(uuid::Uuid, String)>,
    /// The batch's last delivery tag (acknowledged with `multiple`).
    last_tag: Option<u64>,
}

/// One document's copy for one subscriber, before it is packed into messages.
struct Copy<'a> {
    /// The ingress message it came in.
    delivery: usize,
    target: &'a Target,
    bytes: Vec<u8>,
    /// Its properties when it travels alone.
    properties: BasicProperties,
}

/// The copies of one batch as messages to `<p>.out`, in order: per (ingress message,
/// subscriber), one batch message — a batch in gives a batch out — for a subscriber that takes
/// batches, else one message per document; a lone document is always a single message. Each
/// message is signed with `signer` when there is one.
fn pack(copies: Vec<Copy<'_>>, topology: &Topology, user: &str, signer: Option<&SigningKey>) -> Vec<Outgoing> {
    let mut packs: BTreeMap<(usize, &str, usize), Vec<Copy<'_>>> = BTreeMap::new();
    for (n, copy) in copies.into_iter().enumerate() {
        let single = if copy.target.batch { 0 } else { n + 1 };
        packs
            .entry((copy.delivery, copy.target.subscriber.as_str(), single))
            .or_default()
            .push(copy);
    }
    let exchange = topology.out_exchange();
    packs
        .into_iter()
        .filter_map(|((_, subscriber, _), mut pack)| {
            let (payload, properties) = if pack.len() == 1 {
                let Copy { bytes, properties, .. } = pack.pop()?;
                let properties = wire::signed(properties, signer, &[&bytes]);
                (bytes, properties)
            } else {
                let format = pack.first()?.target.format;
                let docs: Vec<Vec<u8>> = pack.into_iter().map(|c| c.bytes).collect();
                let properties = wire::signed(wire::batch_properties(format, docs.len(), user), signer, &docs);
                (wire::encode_batch(format, &docs), properties)
            };
            Some(Outgoing {
                exchange: exchange.clone(),
                routing_key: subscriber.to_owned(),
                payload,
                properties,
            })
        })
        .collect()
}

/// One document of a batch being processed.
struct Item<'a> {
    /// Index of the ingress message it came in.
    delivery: usize,
    /// Its bytes.
    raw: &'a [u8],
    /// Who published it.
    user: Option<String>,
    /// The sender's signature over its message, when it was signed.
    proof: Option<Arc<Proof>>,
}

impl<'a> Item<'a> {
    fn new(delivery: usize, raw: &'a [u8], user: &Option<String>, proof: Option<Arc<Proof>>) -> Self {
        Item {
            delivery,
            raw,
            user: user.clone(),
            proof,
        }
    }
}

/// Why a session ended.
#[derive(Debug)]
enum Failure {
    Amqp(AmqpError),
    Archive(ArchiveError),
}

impl From<AmqpError> for Failure {
    fn from(e: AmqpError) -> Self {
        Failure::Amqp(e)
    }
}

impl From<ArchiveError> for Failure {
    fn from(e: ArchiveError) -> Self {
        Failure::Archive(e)
    }
}

/// How a session ended without failing.
enum Ended {
    /// Shutdown was asked for.
    Shutdown,
    /// The prefetch should change: start a new session.
    Resize,
}

/// A moving average of ingress message sizes, which sets the prefetch count.
#[derive(Default)]
struct Size {
    average: Option<f64>,
    /// When the prefetch was last resized.
    resized: Option<Instant>,
    /// After a failed session: take one message at a time until one is done. Every message a
    /// failed session held returns to the queue with its delivery count raised; were the
    /// failure caused by one message (a frame lapin cannot read, an archive error it
    /// provokes), the next sessions would fail with it again and the broker would dead-letter
    /// everything they held with it, good messages too. One at a time, only that message
    /// reaches the delivery limit.
    probe: bool,
}

impl Size {
    fn observe(&mut self, bytes: usize, messages: usize) {
        let size = bytes as f64 / messages.max(1) as f64;
        self.average = Some(match self.average {
            Some(a) => 0.9 * a + 0.1 * size,
            None => size,
        });
    }

    /// The prefetch count that keeps about [`IN_FLIGHT_BYTES`] in flight (1 while probing).
    fn prefetch(&self) -> u16 {
        if self.probe {
            return 1;
        }
        let Some(size) = self.average else {
            return PREFETCH_START;
        };
        let n = IN_FLIGHT_BYTES as f64 / size.max(1.0);
        if n >= f64::from(PREFETCH_MAX) {
            PREFETCH_MAX
        } else {
            (n as u16).max(PREFETCH_MIN)
        }
    }
}

fn entry<'a>(item: &'a Item<'_>, a: &'a Admitted, targets: &'a [Target]) -> Entry<'a> {
    let h = &a.doc.header;
    Entry {
        id: h.id,
        doc_type: &h.doc_type,
        schema_version: h.schema_version,
        op: h.op.as_str(),
        sender_org: &h.sender.org,
        sender_system: h.sender.system.as_deref(),
        amqp_user: item.user.as_deref().unwrap_or(""),
        key: h
            .key
            .iter()
            .map(|(k, v)| (k.as_str(), v.scalar_text().unwrap_or_default()))
            .collect(),
        created_at: h.created_at.unix_micros(),
        content_type: a.encoding.content_type(),
        content_hash: &a.hash,
        raw: item.raw,
        subscribers: targets.iter().map(|t| t.subscriber.as_str()).collect(),
        proof: item.proof.as_deref(),
    }
}

/// The bytes of `a`'s copy for one subscriber: the received bytes themselves when nothing
/// changes, else the document re-encoded in the subscriber's format without its masked fields.
/// A masked copy carries the hash of what it holds, and no signature (the sender's would not
/// verify on it).
pub fn copy_for(a: &Admitted, raw: &[u8], target: &Target, registry: &Registry) -> Vec<u8> {
    if target.mask.is_empty() && target.format == a.encoding {
        return raw.to_vec();
    }
    let masked;
    let doc = if target.mask.is_empty() {
        &a.doc
    } else {
        let mut d = a.doc.clone();
        d.body.retain(|k, _| !target.mask.contains(k));
        d.header.signature = None;
        d.header.content_hash = Some(canonical::content_hash(&d));
        masked = d;
        &masked
    };
    match target.format {
        Encoding::Json => json::encode(doc),
        Encoding::Xml => xml::encode(doc, registry).into_bytes(),
    }
}

/// The user name in an AMQP URL (RabbitMQ's default `guest` when it has none).
pub fn amqp_user(url: &SecretUrl) -> String {
    Some(url.username())
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "guest".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(subscriber: &str, batch: bool) -> Target {
        Target {
            subscriber: subscriber.into(),
            format: Encoding::Json,
            mask: Default::default(),
            batch,
            routes: Vec::new(),
        }
    }

    fn copy<'a>(delivery: usize, target: &'a Target, n: u8) -> Copy<'a> {
        Copy {
            delivery,
            target,
            bytes: format!("{{\"n\":{n}}}").into_bytes(),
            properties: BasicProperties::default().with_message_id(format!("doc-{n}").as_str().into()),
        }
    }

    #[test]
    fn stage_times_are_reported_and_start_over() {
        let stages = Stages::default();
        stages.report(); // nothing done: nothing reported, nothing fails
        stages.batches.store(2, Ordering::Relaxed);
        stages.documents.store(10, Ordering::Relaxed);
        Stages::add(&stages.archive, Instant::now() - Duration::from_millis(5));
        assert!(stages.archive.load(Ordering::Relaxed) >= 5_000_000);
        stages.report();
        assert_eq!(stages.archive.load(Ordering::Relaxed), 0);
        assert_eq!(stages.batches.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn copies_are_packed_per_message_and_subscriber_as_each_takes_them() {
        let (sink, feed) = (target("sink", true), target("feed", false));
        let copies = vec![
            copy(0, &sink, 1),
            copy(0, &feed, 1),
            copy(0, &sink, 2),
            copy(0, &feed, 2),
            copy(1, &sink, 3),
        ];
        let out = pack(copies, &Topology::new("t"), "hub", None);
        let shown: Vec<(String, bool, String)> = out
            .iter()
            .map(|o| {
                let id = o
                    .properties
                    .message_id()
                    .as_ref()
                    .map(|m| m.to_string())
                    .unwrap_or_default();
                (o.routing_key.clone(), wire::is_batch(&o.properties), id)
            })
            .collect();
        // Ingress message 0: the sink gets its two documents as one batch, the feed one message
        // per document, in order; message 1's lone document goes alone.
        assert_eq!(shown.len(), 4, "{shown:?}");
        assert_eq!(
            (shown[0].0.as_str(), shown[0].1, shown[0].2.as_str()),
            ("feed", false, "doc-1")
        );
        assert_eq!(
            (shown[1].0.as_str(), shown[1].1, shown[1].2.as_str()),
            ("feed", false, "doc-2")
        );
        assert_eq!((shown[2].0.as_str(), shown[2].1), ("sink", true));
        assert_eq!(wire::split_batch(&out[2].payload).unwrap().len(), 2);
        assert_eq!(
            (shown[3].0.as_str(), shown[3].1, shown[3].2.as_str()),
            ("sink", false, "doc-3")
        );
        assert!(out.iter().all(|o| o.exchange == "t.out"));
    }
}
