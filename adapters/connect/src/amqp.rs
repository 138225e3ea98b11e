//! Connections to RabbitMQ: one place that opens them (over TLS for `amqps://`, see
//! [`Target`]), names them, and classifies their failures into *passing* (broker restarting,
//! network) and *fatal* (refused credentials, forbidden vhost, a declaration that contradicts the
//! existing one, a TLS setting or handshake that cannot succeed), plus the backoff used between
//! reconnection attempts.

use std::path::PathBuf;
use std::time::Duration;

use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};
use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::uri::{AMQPScheme, AMQPUri, SASLMechanism};
use lapin::{Channel, Connect as _, Connection, ConnectionProperties, ErrorKind};
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
    /// A node took the connection but did not complete the AMQP handshake in time (a node
    /// shutting down or still booting keeps its port open).
    #[error("RabbitMQ at {0} did not complete the connection handshake within {CONNECT_TIMEOUT:?}")]
    Unanswered(String),
    /// The URL does not parse (the text is not repeated: it may hold a password).
    #[error("invalid AMQP URL: {0}")]
    Url(String),
    /// TLS was asked for and cannot be had as asked: a setting exhub does not support, a
    /// certificate file that cannot be read, or a handshake that failed (the broker's
    /// certificate is not trusted, or the port does not speak TLS). Never retried, and never
    /// answered by falling back to clear text.
    #[error("AMQP TLS: {0}")]
    Tls(String),
}

impl AmqpError {
    /// Whether retrying after a reconnect can succeed.
    pub fn is_passing(&self) -> bool {
        !matches!(
            self,
            AmqpError::Refused(_) | AmqpError::Cancelled | AmqpError::Url(_) | AmqpError::Tls(_)
        )
    }
}

/// Whether the broker refused because another connection holds the resource (an exclusive
/// queue: RESOURCE_LOCKED).
pub fn is_resource_locked(e: &lapin::Error) -> bool {
    matches!(e.kind(), ErrorKind::ProtocolError(err)
        if matches!(err.kind(), AMQPErrorKind::Soft(AMQPSoftError::RESOURCELOCKED)))
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

/// How long a node may take to complete the AMQP handshake before the next is tried. Normally
/// milliseconds; a node that is shutting down or booting may accept the TCP connection and then
/// say nothing, which without a limit would hold a participant there instead of failing over.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest AMQP frame asked for unless the URL says otherwise (`?frame_max=`). lapin keeps
/// 32 frames of buffer each way per connection, so RabbitMQ's default of 128 KiB costs 8 MiB a
/// connection; at 32 KiB it is 2 MiB, and a bigger message simply takes several frames.
pub const FRAME_MAX: u32 = 32 * 1024;

/// Where and how to reach the broker, read from an AMQP URL.
///
/// `amqps://` is TLS (rustls), and nothing else is: the broker's certificate is always verified
/// against the system's trusted roots plus `cacertfile`, and its name or IP address must match
/// the URL's host. TLS settings are RabbitMQ's own URI query parameters, which exhub takes out
/// of the URL before lapin reads the rest (`frame_max`, `heartbeat`, `auth_mechanism`, …):
///
/// - `cacertfile=/path/ca.pem` — a CA (PEM) to trust for the broker's certificate;
/// - `certfile=…&keyfile=…` — a client certificate and its key (PEM), for brokers that ask
///   for one; with `auth_mechanism=external` the certificate is the login (no password);
/// - `verify=verify_peer` — the only verification there is, accepted for compatibility.
///
/// Anything else about TLS (`verify=verify_none`, `server_name_indication`, `depth`, a key
/// `password`) is refused, and so are TLS settings on an `amqp://` URL: a setting exhub cannot
/// honour is an error, never a quiet connection in clear text.
///
/// A RabbitMQ cluster is one URL with the other nodes' addresses in exhub's own parameter
/// `failover=host:port,host:port` (taken out before lapin reads the URL): [`connect`] tries the
/// URL's own host first, then each of these in order, with the same login, vhost and TLS
/// settings; the broker's certificate must then name each host it is reached by. One string
/// rather than a list of URLs, so that the login is written once and every place an AMQP URL is
/// read (routes.toml, `--amqp`, the provisioning of per-department logins, which rewrites the
/// login) carries the cluster's addresses without knowing of them.
pub struct Target {
    uri: AMQPUri,
    tls: TlsFiles,
    /// The other nodes of a cluster (`failover=`), tried in order after the URL's own host.
    failover: Vec<(String, u16)>,
}

/// Without the password.
impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let a = &self.uri.authority;
        f.debug_struct("Target")
            .field("scheme", &self.uri.scheme)
            .field("user", &a.userinfo.username)
            .field("host", &a.host)
            .field("port", &a.port)
            .field("vhost", &self.uri.vhost)
            .field("tls", &self.tls)
            .field("failover", &self.failover)
            .finish()
    }
}

/// The files an `amqps://` URL names.
#[derive(Debug, Default)]
struct TlsFiles {
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
}

impl Target {
    /// Reads `url`. Errors say what is wrong without repeating the URL (it may hold a password).
    pub fn parse(url: &str) -> Result<Target, AmqpError> {
        let mut parsed = url::Url::parse(url).map_err(|e| AmqpError::Url(e.to_string()))?;
        let tls_scheme = match parsed.scheme() {
            "amqps" => true,
            "amqp" => false,
            other => return Err(AmqpError::Url(format!("scheme {other:?} is not amqp or amqps"))),
        };
        let tls_error = |m: String| Err(AmqpError::Tls(m));
        let mut tls = TlsFiles::default();
        let mut rest: Vec<(String, String)> = Vec::new();
        let mut failover = Vec::new();
        for (key, value) in parsed.query_pairs() {
            match &*key {
                "failover" => failover = failover_addresses(&value)?,
                "cacertfile" => tls.ca = Some(value.as_ref().into()),
                "certfile" => tls.cert = Some(value.as_ref().into()),
                "keyfile" => tls.key = Some(value.as_ref().into()),
                "verify" if value == "verify_peer" => {}
                "verify" => {
                    return tls_error(format!(
                        "verify={value} is not supported: exhub always verifies the broker's certificate (verify_peer)"
                    ));
                }
                "server_name_indication" | "depth" | "password" | "fail_if_no_peer_cert" => {
                    return tls_error(format!("URL parameter {key} is not supported by exhub's TLS client"));
                }
                _ => rest.push((key.into_owned(), value.into_owned())),
            }
        }
        let names_tls = tls.ca.is_some() || tls.cert.is_some() || tls.key.is_some();
        if names_tls && !tls_scheme {
            return tls_error(
                "the URL names TLS files (cacertfile/certfile/keyfile) but is amqp://, which is clear text: \
                 use amqps:// (RabbitMQ's TLS port is 5671)"
                    .into(),
            );
        }
        if tls.cert.is_some() != tls.key.is_some() {
            return tls_error("certfile and keyfile go together (a client certificate and its key)".into());
        }
        if rest.is_empty() {
            parsed.set_query(None);
        } else {
            parsed.query_pairs_mut().clear().extend_pairs(&rest);
        }
        let mut uri: AMQPUri = parsed.as_str().parse().map_err(AmqpError::Url)?;
        // lapin takes the host from `Url::domain`, which is empty for an IPv6 address (it then
        // connects to "localhost"): use the address written, which TLS verifies too.
        match parsed.host() {
            Some(url::Host::Ipv4(ip)) => uri.authority.host = ip.to_string(),
            Some(url::Host::Ipv6(ip)) => uri.authority.host = ip.to_string(),
            _ => {}
        }
        if uri.query.auth_mechanism == Some(SASLMechanism::External) && tls.cert.is_none() {
            return tls_error(
                "auth_mechanism=external logs in with a client certificate: give amqps:// with certfile and keyfile"
                    .into(),
            );
        }
        if uri.query.frame_max.is_none() {
            uri.query.frame_max = Some(FRAME_MAX);
        }
        Ok(Target { uri, tls, failover })
    }

    /// The broker's addresses, in the order [`connect`] tries them: the URL's host, then
    /// `failover=`.
    pub fn addresses(&self) -> Vec<(String, u16)> {
        let own = (self.uri.authority.host.clone(), self.uri.authority.port);
        std::iter::once(own).chain(self.failover.iter().cloned()).collect()
    }

    /// Whether the connection is TLS (`amqps://`).
    pub fn is_tls(&self) -> bool {
        self.uri.scheme == AMQPScheme::AMQPS
    }

    /// The TLS material, read from its files now (so that renewed certificates are taken at the
    /// next connection). `exhub check` calls it to find unreadable files before anything runs.
    pub fn tls_config(&self) -> Result<OwnedTLSConfig, AmqpError> {
        let read = |path: &PathBuf, what: &str| {
            std::fs::read(path).map_err(|e| AmqpError::Tls(format!("cannot read {what} {}: {e}", path.display())))
        };
        let mut config = OwnedTLSConfig::default();
        if let Some(ca) = &self.tls.ca {
            let pem = String::from_utf8(read(ca, "cacertfile")?)
                .ok()
                .filter(|pem| pem.contains("-----BEGIN CERTIFICATE-----"))
                .ok_or_else(|| AmqpError::Tls(format!("cacertfile {} holds no PEM certificate", ca.display())))?;
            config.cert_chain = Some(pem);
        }
        if let (Some(cert), Some(key)) = (&self.tls.cert, &self.tls.key) {
            config.identity = Some(OwnedIdentity::PKCS8 {
                pem: read(cert, "certfile")?,
                key: read(key, "keyfile")?,
            });
        }
        Ok(config)
    }
}

/// `failover=host:port,host:port`: each address with its port (5672 when left out).
fn failover_addresses(value: &str) -> Result<Vec<(String, u16)>, AmqpError> {
    let bad = |a: &str| AmqpError::Url(format!("failover address {a:?} is not host:port"));
    value
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(|a| {
            let port = |p: &str| p.parse::<u16>().map_err(|_| bad(a));
            // `[::1]:5672` for IPv6, as in a URL.
            let (host, port) = match a.strip_prefix('[') {
                Some(v6) => match v6.split_once(']') {
                    Some((h, "")) => (h, 5672),
                    Some((h, p)) => (h, port(p.strip_prefix(':').ok_or_else(|| bad(a))?)?),
                    None => return Err(bad(a)),
                },
                None => match a.split_once(':') {
                    Some((h, p)) => (h, port(p)?),
                    None => (a, 5672),
                },
            };
            if host.is_empty() || host.contains(['/', '@', '?', '#', ' ', '[', ']']) {
                return Err(bad(a));
            }
            Ok((host.to_owned(), port))
        })
        .collect()
}

/// Opens a connection named `name` (shown in RabbitMQ's connection list); over TLS for
/// `amqps://` (see [`Target`]). With `failover=` addresses, a node that cannot be reached, or
/// that refuses (one node's certificate or vhost may be wrong while the others are right), is
/// passed over for the next. When none connects, the error is the first fatal one if any (so
/// that a wrong password is not retried forever as "unreachable"), else the last node's.
pub async fn connect(url: &str, name: &str) -> Result<Connection, AmqpError> {
    let target = Target::parse(url)?;
    let (mut fatal, mut passing) = (None, None);
    for (host, port) in target.addresses() {
        match connect_to(&target, &host, port, name).await {
            Ok(conn) => return Ok(conn),
            Err(e) => {
                if !target.failover.is_empty() {
                    tracing::debug!(connection = name, node = %format!("{host}:{port}"), error = %e, "cannot connect to this RabbitMQ node; trying the next");
                }
                match e.is_passing() {
                    true => passing = Some(e),
                    false => fatal = fatal.or(Some(e)),
                }
            }
        }
    }
    Err(fatal
        .or(passing)
        .unwrap_or(AmqpError::Url("no address to connect to".into())))
}

/// One attempt at one node of `target`.
async fn connect_to(target: &Target, host: &str, port: u16, name: &str) -> Result<Connection, AmqpError> {
    let tls = target.tls_config()?;
    let props = ConnectionProperties::default().with_connection_name(name.into());
    let runtime = lapin::runtime::default_runtime()?;
    let client_cert = target.tls.cert.is_some();
    let is_tls = target.is_tls();
    let mut uri = target.uri.clone();
    uri.authority.host = host.to_owned();
    uri.authority.port = port;
    let attempt = tokio::time::timeout(CONNECT_TIMEOUT, uri.connect_with_config(props, tls, runtime));
    let Ok(connected) = attempt.await else {
        return Err(AmqpError::Unanswered(format!("{host}:{port}")));
    };
    match connected {
        Ok(conn) => Ok(conn),
        // rustls reports a failed handshake as invalid data: an untrusted certificate, a name
        // that does not match, or a port that answers in clear text. Retrying cannot help.
        Err(e)
            if is_tls && matches!(e.kind(), ErrorKind::IOError(io) if io.kind() == std::io::ErrorKind::InvalidData) =>
        {
            let certfile = if client_cert {
                ", and is certfile an X.509 v3 certificate that matches keyfile"
            } else {
                ""
            };
            Err(AmqpError::Tls(format!(
                "TLS handshake with {host}:{port} failed: {e} (is it RabbitMQ's TLS port, 5671 by default, \
                 is the broker's certificate signed by a CA in cacertfile{certfile}?)"
            )))
        }
        Err(e) => Err(e.into()),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(url: &str) -> String {
        match Target::parse(url) {
            Err(AmqpError::Tls(m)) => m,
            other => panic!("{url}: {other:?}"),
        }
    }

    #[test]
    fn a_cluster_is_one_url_with_its_other_nodes_tried_in_order() {
        let t = Target::parse(
            "amqp://u:p@127.0.0.1:5701/%2f?heartbeat=7&failover=127.0.0.1:5702,%20localhost:5703,[::1]:5704,node4",
        )
        .unwrap();
        assert_eq!(
            t.addresses(),
            [
                ("127.0.0.1".to_owned(), 5701),
                ("127.0.0.1".to_owned(), 5702),
                ("localhost".to_owned(), 5703),
                ("::1".to_owned(), 5704),
                ("node4".to_owned(), 5672),
            ]
        );
        // lapin never sees the parameter; the others stay.
        assert_eq!(t.uri.query.heartbeat, Some(7));
        assert_eq!(Target::parse("amqp://u@h/%2f").unwrap().addresses().len(), 1);
        for bad in ["h:notaport", "h:70000", "u@h:1", ":5672", "h:1:2", "[::1", "[::1]5672"] {
            let url = format!("amqp://u@h/%2f?failover={bad}");
            assert!(
                matches!(Target::parse(&url), Err(AmqpError::Url(m)) if m.contains("failover")),
                "{bad}"
            );
        }
    }

    #[tokio::test]
    async fn a_node_that_cannot_be_reached_is_passed_over_for_the_next() {
        // Nothing listens on port 1; the machine's broker does on 5672.
        let url = "amqp://guest:guest@127.0.0.1:1/%2f?failover=127.0.0.1:5672";
        let conn = connect(url, "failover-test").await.unwrap();
        assert!(conn.status().connected());
        conn.close(200, "done".into()).await.unwrap();
        let none = connect(
            "amqp://guest:guest@127.0.0.1:1/%2f?failover=127.0.0.1:2",
            "failover-test",
        )
        .await;
        assert!(matches!(none, Err(e) if e.is_passing()));
    }

    #[tokio::test]
    async fn a_node_that_takes_the_connection_and_says_nothing_is_passed_over() {
        // Accepts TCP and never speaks AMQP, as a node shutting down or booting may.
        let mute = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = mute.local_addr().unwrap().port();
        let url = format!("amqp://guest:guest@127.0.0.1:{port}/%2f?failover=127.0.0.1:5672");
        let started = std::time::Instant::now();
        let conn = connect(&url, "failover-test").await.unwrap();
        assert!(conn.status().connected());
        assert!(started.elapsed() >= CONNECT_TIMEOUT, "the mute node was given its time");
        conn.close(200, "done".into()).await.unwrap();
        drop(mute);
        // Alone, such a node is a passing failure: retried, never fatal.
        assert!(AmqpError::Unanswered(format!("127.0.0.1:{port}")).is_passing());
    }

    #[test]
    fn tls_settings_leave_the_url_before_lapin_reads_it() {
        let t = Target::parse(
            "amqps://u:p@127.0.0.1:5671/ex?cacertfile=/ca.pem&heartbeat=7&certfile=/c.pem&keyfile=/k.pem&verify=verify_peer",
        )
        .unwrap();
        assert!(t.is_tls());
        // The address written, not "localhost" (lapin reads only domain names).
        assert_eq!(
            (t.uri.authority.host.as_str(), t.uri.authority.port),
            ("127.0.0.1", 5671)
        );
        assert_eq!((t.uri.vhost.as_str(), t.uri.query.heartbeat), ("ex", Some(7)));
        assert_eq!(t.uri.query.frame_max, Some(FRAME_MAX));
        assert_eq!(t.tls.ca.as_deref(), Some(std::path::Path::new("/ca.pem")));
        assert!(t.tls.cert.is_some() && t.tls.key.is_some());
        let plain = Target::parse("amqp://guest:guest@localhost/%2f").unwrap();
        assert!(!plain.is_tls());
        assert_eq!(plain.uri.authority.port, 5672);
        let ipv6 = Target::parse("amqps://u@[::1]:5671/%2f").unwrap();
        assert_eq!(ipv6.uri.authority.host, "::1");
        let t = Target::parse("amqps://u:hunter2@h/%2f").unwrap();
        assert!(!format!("{t:?}").contains("hunter2"), "{t:?}");
    }

    #[test]
    fn tls_that_cannot_be_honoured_is_refused_not_dropped() {
        assert!(refused("amqp://u@h/%2f?cacertfile=/ca.pem").contains("use amqps://"));
        assert!(refused("amqps://u@h/%2f?verify=verify_none").contains("always verifies"));
        assert!(refused("amqps://u@h/%2f?server_name_indication=x").contains("not supported"));
        assert!(refused("amqps://u@h/%2f?certfile=/c.pem").contains("go together"));
        assert!(refused("amqps://u@h/%2f?auth_mechanism=external").contains("client certificate"));
        let t = Target::parse("amqps://u@h/%2f?cacertfile=/nonexistent/ca.pem").unwrap();
        let err = t.tls_config().unwrap_err().to_string();
        assert!(err.contains("cannot read cacertfile /nonexistent/ca.pem"), "{err}");
        assert!(!AmqpError::Tls(String::new()).is_passing());
        // Errors never repeat the URL (it may hold a password).
        match Target::parse("amqps://u:hunter2@h/%2f?verify=verify_none") {
            Err(e) => assert!(!e.to_string().contains("hunter2")),
            Ok(_) => panic!("accepted"),
        }
    }
}
