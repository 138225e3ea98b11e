//! # exhub-connect — joining the exchange
//!
//! What every participant (hub, source adapters, sinks, command-line tools) needs to talk to the
//! exchange over AMQP:
//!
//! - [`adapter`]: what a database kind offers the `exhub` binary (options, check, build);
//! - [`amqp`]: connecting with backoff, and telling passing failures from configuration errors;
//! - [`topology`]: the exchanges and queues of the exchange, declared idempotently;
//! - [`wire`]: how documents travel — AMQP properties that mirror the header, and the batch form
//!   that carries many documents in one message;
//! - [`publisher`]: a publisher that returns only once the broker confirmed every message,
//!   reconnecting and republishing whatever was not confirmed;
//! - [`consumer`]: taking messages in batches;
//! - [`mapping`]: legacy rows → typed exchange documents, for every source adapter;
//! - [`outbox`]: a source's documents on their way to the hub, published with confirms;
//! - [`source`]: the contract a source adapter implements ([`source::Source`]), with its
//!   delivery rules;
//! - [`secret`]: URLs whose password comes from a file or the environment, never logged;
//!   the one decoder of a URL's credentials;
//! - [`status`]: heartbeats, what every source and sink says about itself to the hub;
//! - [`runner`]: the one loop that drives every source: retries, snapshots, checkpoints;
//! - [`checkpoint`]: a source's position, saved atomically.
//!
//! Delivery contract (every hop): at-least-once. A message counts as handed over only when the
//! broker confirmed it; whoever consumes acknowledges only after its own effect is durable.

pub mod adapter;
pub mod amqp;
pub mod checkpoint;
pub mod consumer;
pub mod mapping;
pub mod outbox;
pub mod publisher;
pub mod runner;
pub mod secret;
pub mod sign;
pub mod source;
pub mod status;
pub mod topology;
pub mod wire;

pub use amqp::{AmqpError, Backoff};
pub use checkpoint::{CheckpointError, CheckpointStore};
pub use mapping::{Cell, Mapper, MappingError, TableMapping};
pub use publisher::{Outgoing, Publisher};
pub use topology::{Permissions, Topology};
