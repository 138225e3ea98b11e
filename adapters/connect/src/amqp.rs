//! Connections to RabbitMQ: one place that opens them, names them, and classifies their
//! failures into *passing* (broker restarting, network) and *fatal* (refused credentials,
//! forbidden vhost, a declaration that contradicts the existing one), plus the backoff used
//! between reconnection attempts.

use std::time::Duration;

use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};
use lapin::{Channel, Connection, ConnectionProperties, ErrorKind};
use tokio_util::sync::CancellationToken;

/// A failure talking to the broker.
#[derive(Debug, thiserror::Error)]
pub enum AmqpError {
    /// The broker said no in a way that retrying cannot fix (credentials, permissions,
    /// conflicting declarations, a forged `user_id`).
    #[error("RabbitMQ refused: {0}")]
    Refused(#[source] lapin::Error),
    /// The connection or channel failed; reconnecting may help.
    #[error("RabbitMQ connection failed: {0}")]
    Broken(#[source] lapin::Error),
    /// A message was returned as unroutable: the queue it should reach does not exist.
    #[error("message to exchange {exchange:?} with routing key {routing_key:?} was unroutable")]
    Unroutable {
        /// Exchange published to.
        exchange: String,
        /// Routing key used.
        routing_key: String,
    },
    /// The broker negatively acknowledged a message (e.g. a full queue with `reject-publish`).
    #[error("RabbitMQ did not accept the message (nack)")]
    Nacked,
    /// The operation was cancelled by shutdown.
    #[error("cancelled by shutdown")]
    Cancelled,
    /// The URL does not parse (the text is not repeated: it may hold a password).
    #[error("invalid AMQP URL: {0}")]
    Url(String),
}

impl AmqpError {
    /// Whether retrying after a reconnect can succeed.
    pub fn is_passing(&self) -> bool {
        !matches!(self, AmqpError::Refused(_) | AmqpError::Cancelled | AmqpError::Url(_))
    }
}

impl From<lapin::Error> for AmqpError {
    fn from(e: lapin::Error) -> Self {
        let fatal = match e.kind() {
            ErrorKind::ProtocolError(err) => matches!(
                err.kind(),
                AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED | AMQPSoftError::PRECONDITIONFAILED)
                    | AMQPErrorKind::Hard(AMQPHardError::NOTALLOWED)
            ),
            ErrorKind::AuthProviderError(_) | ErrorKind::InvalidProtocolVersion(_) => true,
            _ => false,
        };
        if fatal {
            AmqpError::Refused(e)
        } else {
            AmqpError::Broken(e)
        }
    }
}

/// The largest AMQP frame asked for unless the URL says otherwise (`?frame_max=`). lapin keeps
/// 32 frames of buffer each way per connection, so RabbitMQ's default of 128 KiB costs 8 MiB a
/// connection; at 32 KiB it is 2 MiB, and a bigger message simply takes several frames.
pub const FRAME_MAX: u32 = 32 * 1024;

/// Opens a connection named `name` (shown in RabbitMQ's connection list).
pub async fn connect(url: &str, name: &str) -> Result<Connection, AmqpError> {
    let mut uri: lapin::uri::AMQPUri = url.parse().map_err(AmqpError::Url)?;
    if uri.query.frame_max.is_none() {
        uri.query.frame_max = Some(FRAME_MAX);
    }
    let props = ConnectionProperties::default().with_connection_name(name.into());
    Ok(Connection::connect_uri(uri, props).await?)
}

/// Opens a connection, retrying passing failures with [`Backoff`] until it succeeds, a fatal
/// error occurs, or `cancel` fires. Each failed attempt is logged once at `warn`.
pub async fn connect_with_retry(url: &str, name: &str, cancel: &CancellationToken) -> Result<Connection, AmqpError> {
    let mut backoff = Backoff::default();
    loop {
        match connect(url, name).await {
            Ok(conn) => return Ok(conn),
            Err(e) if e.is_passing() => {
                tracing::warn!(connection = name, error = %e, retry_in_ms = backoff.peek().as_millis() as u64, "cannot reach RabbitMQ; retrying");
                backoff.wait(cancel).await?;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Opens a channel with publisher confirms on.
pub async fn confirmed_channel(conn: &Connection) -> Result<Channel, AmqpError> {
    let channel = conn.create_channel().await?;
    channel
        .confirm_select(lapin::options::ConfirmSelectOptions::default())
        .await?;
    Ok(channel)
}

/// Exponential backoff between reconnection attempts: 100 ms doubling to 5 s.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            next: Duration::from_millis(100),
        }
    }
}

impl Backoff {
    /// The delay the next [`Backoff::wait`] will sleep.
    pub fn peek(&self) -> Duration {
        self.next
    }

    /// Sleeps the current delay (or until `cancel` fires: then `Err(Cancelled)`) and doubles it.
    pub async fn wait(&mut self, cancel: &CancellationToken) -> Result<(), AmqpError> {
        let delay = self.next;
        self.next = (self.next * 2).min(Duration::from_secs(5));
        tokio::select! {
            () = tokio::time::sleep(delay) => Ok(()),
            () = cancel.cancelled() => Err(AmqpError::Cancelled),
        }
    }

    /// Back to the shortest delay, after a success.
    pub fn reset(&mut self) {
        *self = Backoff::default();
    }
}
