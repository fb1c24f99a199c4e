//! How an email leaves: SMTP through a pool of connections, or an `.eml` file per
//! email in a folder (the local default: real emails, nothing to install). A failure
//! is temporary (a 4xx answer, a connection or disk problem: try again later) or
//! permanent (a 5xx answer: never).
//!
//! The SMTP exchange is lettre's; the connections are made and pooled here, because
//! lettre's own pool leaves Nagle's algorithm on: the end of each message (`.`) then
//! waits for the server's delayed acknowledgement of the body, about 40 ms per email
//! whatever the server's speed. Here every socket has `TCP_NODELAY`, at most
//! `CAIRN_SMTP_CONNECTIONS` are open at once, and an idle connection is reused
//! without a `NOOP` unless it has been idle for a while. With `CAIRN_SMTP_RATE`, emails
//! to the server are paced to that many per second (a provider's limit).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use lettre::transport::smtp::authentication::{Credentials, Mechanism};
#[allow(deprecated)]
use lettre::transport::smtp::client::AsyncNetworkStream;
use lettre::transport::smtp::client::{AsyncSmtpConnection, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::{AsyncFileTransport, AsyncTransport as _, Message, Tokio1Executor};
use tokio::sync::Semaphore;

use crate::config::Transport;
use crate::error::DispatchError;

/// The longest wait for a connection to open or for the server to answer.
const TIMEOUT: Duration = Duration::from_secs(60);

/// A connection idle longer than this is checked (`NOOP`) before it is used: the
/// server may have closed it.
const CHECK_IDLE_AFTER: Duration = Duration::from_secs(5);

/// How the connection to the SMTP server is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    /// Plain text (`smtp://`).
    Plain,
    /// STARTTLS when the server offers it (`smtp://…?tls=opportunistic`).
    StartTlsIfOffered,
    /// STARTTLS or no connection (`smtp://…?tls=required`).
    StartTls,
    /// TLS from the first byte (`smtps://`).
    Tls,
}

/// Where SMTP emails go, from `CAIRN_SMTP_URL`.
#[derive(Clone, PartialEq)]
pub struct SmtpServer {
    pub host: String,
    pub port: u16,
    pub security: Security,
    /// User name and password.
    pub credentials: Option<(String, String)>,
}

impl std::fmt::Debug for SmtpServer {
    /// Everything but the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpServer")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("security", &self.security)
            .field("user", &self.credentials.as_ref().map(|(user, _)| user))
            .finish()
    }
}

impl SmtpServer {
    /// `smtp://[user:password@]host[:port][?tls=required|opportunistic]` (port 25, or
    /// 587 with `tls=required`) or `smtps://[user:password@]host[:port]` (port 465).
    pub fn parse(text: &str) -> Result<Self, String> {
        let url = url::Url::parse(text.trim()).map_err(|err| format!("not a URL: {err}"))?;
        let mut security = match url.scheme() {
            "smtp" => Security::Plain,
            "smtps" => Security::Tls,
            other => return Err(format!("the scheme is {other}: use smtp:// or smtps://")),
        };
        for (name, value) in url.query_pairs() {
            match (name.as_ref(), value.as_ref(), security) {
                ("tls", "required", Security::Plain) => security = Security::StartTls,
                ("tls", "opportunistic", Security::Plain) => security = Security::StartTlsIfOffered,
                ("tls", "none", Security::Plain) => {}
                ("tls", other, Security::Plain) => {
                    return Err(format!("tls={other}: use required, opportunistic or none"));
                }
                ("tls", _, _) => return Err("smtps:// is TLS already: drop ?tls=".to_string()),
                (other, _, _) => return Err(format!("unknown parameter {other}: only tls")),
            }
        }
        let host = url
            .host_str()
            .filter(|host| !host.is_empty())
            .ok_or("no host")?
            .trim_matches(|c| c == '[' || c == ']')
            .to_string();
        let decode = |text: &str| {
            percent_encoding::percent_decode_str(text)
                .decode_utf8()
                .map(|text| text.into_owned())
                .map_err(|_| "the user or password is not UTF-8 once decoded".to_string())
        };
        let credentials = match (url.username(), url.password()) {
            ("", None) => None,
            (user, password) => Some((decode(user)?, decode(password.unwrap_or_default())?)),
        };
        let port = url.port().unwrap_or(match security {
            Security::Tls => 465,
            Security::StartTls => 587,
            Security::Plain | Security::StartTlsIfOffered => 25,
        });
        Ok(Self {
            host,
            port,
            security,
            credentials,
        })
    }
}

#[derive(Clone)]
pub enum Mailer {
    Smtp(Arc<SmtpPool>),
    File(AsyncFileTransport<Tokio1Executor>),
}

/// Why an email did not leave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    Temporary(String),
    /// `bounced`: the server says the mailbox does not exist (550, 551 or 553 with an
    /// enhanced status 5.1.x).
    Permanent {
        reason: String,
        bounced: bool,
    },
}

impl Mailer {
    pub fn new(transport: &Transport) -> Result<Self, DispatchError> {
        match transport {
            Transport::File(dir) => {
                std::fs::create_dir_all(dir).map_err(|err| {
                    DispatchError::InvalidArgument(format!(
                        "cannot create the outbox {}: {err}",
                        dir.display()
                    ))
                })?;
                Ok(Mailer::File(AsyncFileTransport::new(dir)))
            }
            Transport::Smtp {
                server,
                connections,
                per_second,
            } => Ok(Mailer::Smtp(Arc::new(SmtpPool::new(
                server.clone(),
                *connections,
                *per_second,
            )?))),
        }
    }

    /// Waits for a way out: an SMTP connection, open and free for the next email
    /// (a failure here is always temporary: no email was looked at).
    pub async fn ready(&self) -> Result<Ready<'_>, Failure> {
        match self {
            Mailer::Smtp(pool) => {
                if let Some(pace) = &pool.pace {
                    tokio::time::sleep_until(pace.take(tokio::time::Instant::now())).await;
                }
                let permit = pool
                    .permits
                    .acquire()
                    .await
                    .map_err(|_| Failure::Temporary("the SMTP pool is closed".to_string()))?;
                let connection = match pool.reuse().await {
                    Some(connection) => connection,
                    None => tokio::time::timeout(TIMEOUT, pool.connect())
                        .await
                        .map_err(|_| pool.no_answer())??,
                };
                Ok(Ready::Smtp {
                    pool,
                    connection: Box::new(connection),
                    _permit: permit,
                })
            }
            Mailer::File(file) => Ok(Ready::File(file)),
        }
    }
}

/// A way out for one email.
pub enum Ready<'a> {
    Smtp {
        pool: &'a SmtpPool,
        connection: Box<AsyncSmtpConnection>,
        _permit: tokio::sync::SemaphorePermit<'a>,
    },
    File(&'a AsyncFileTransport<Tokio1Executor>),
}

impl Ready<'_> {
    /// Sends `message`; what the server said when it did not take it.
    pub async fn send(self, message: Message) -> Result<(), Failure> {
        match self {
            Ready::Smtp {
                pool,
                mut connection,
                _permit,
            } => {
                let email = message.formatted();
                let exchange = connection.send(message.envelope(), &email);
                match tokio::time::timeout(TIMEOUT, exchange).await {
                    // The connection is dropped: where the exchange stopped is unknown.
                    Err(_) => Err(pool.no_answer()),
                    Ok(result) => {
                        if !connection.has_broken() {
                            pool.park(*connection);
                        }
                        result.map(|_| ()).map_err(|err| classify(&err))
                    }
                }
            }
            Ready::File(file) => file
                .send(message)
                .await
                .map(|_| ())
                .map_err(|err| Failure::Temporary(err.to_string())),
        }
    }
}

/// Up to `connections` open SMTP connections to one server.
pub struct SmtpPool {
    server: SmtpServer,
    tls: Option<TlsParameters>,
    hello: ClientId,
    /// One per connection that may be open.
    permits: Semaphore,
    pace: Option<Pace>,
    idle: std::sync::Mutex<Vec<(AsyncSmtpConnection, Instant)>>,
}

impl SmtpPool {
    fn new(
        server: SmtpServer,
        connections: u32,
        per_second: Option<f64>,
    ) -> Result<Self, DispatchError> {
        let tls = match server.security {
            Security::Plain => None,
            Security::StartTlsIfOffered | Security::StartTls | Security::Tls => {
                Some(TlsParameters::new(server.host.clone()).map_err(|err| {
                    DispatchError::InvalidArgument(format!("CAIRN_SMTP_URL: TLS: {err}"))
                })?)
            }
        };
        Ok(Self {
            server,
            tls,
            hello: ClientId::default(),
            permits: Semaphore::new(connections.max(1) as usize),
            pace: per_second.map(|rate| Pace::new(Duration::from_secs_f64(1.0 / rate))),
            idle: std::sync::Mutex::new(Vec::new()),
        })
    }

    fn no_answer(&self) -> Failure {
        Failure::Temporary(format!(
            "{}:{} did not answer within {} s",
            self.server.host,
            self.server.port,
            TIMEOUT.as_secs()
        ))
    }

    /// An idle connection that still works, if there is one.
    async fn reuse(&self) -> Option<AsyncSmtpConnection> {
        loop {
            let (mut connection, since) = self.idle.lock().ok()?.pop()?;
            if since.elapsed() < CHECK_IDLE_AFTER || connection.test_connected().await {
                return Some(connection);
            }
            connection.abort().await;
        }
    }

    fn park(&self, connection: AsyncSmtpConnection) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.push((connection, Instant::now()));
        }
    }

    /// A new connection, greeted, secured and logged in as `CAIRN_SMTP_URL` says. Any
    /// failure is temporary (bad credentials too): the emails are not at fault.
    async fn connect(&self) -> Result<AsyncSmtpConnection, Failure> {
        let server = &self.server;
        let cannot = |what: &str, err: &dyn std::fmt::Display| {
            Failure::Temporary(format!("{}:{}: {what}: {err}", server.host, server.port))
        };
        let socket = tokio::net::TcpStream::connect((server.host.as_str(), server.port))
            .await
            .map_err(|err| cannot("cannot connect", &err))?;
        socket
            .set_nodelay(true)
            .map_err(|err| cannot("cannot connect", &err))?;
        let mut connection = match (&self.tls, server.security) {
            (Some(tls), Security::Tls) => {
                #[allow(deprecated)]
                let mut stream = AsyncNetworkStream::use_existing_tokio1(Box::new(socket));
                stream
                    .upgrade_tls(tls.clone())
                    .await
                    .map_err(|err| cannot("TLS", &err))?;
                AsyncSmtpConnection::connect_with_transport(
                    Box::new(ImplicitTls(stream)),
                    &self.hello,
                )
                .await
            }
            _ => AsyncSmtpConnection::connect_with_transport(Box::new(socket), &self.hello).await,
        }
        .map_err(|err| cannot("no greeting", &err))?;
        match (&self.tls, server.security) {
            (Some(tls), Security::StartTls) => connection
                .starttls(tls.clone(), &self.hello)
                .await
                .map_err(|err| cannot("STARTTLS", &err))?,
            (Some(tls), Security::StartTlsIfOffered) if connection.can_starttls() => connection
                .starttls(tls.clone(), &self.hello)
                .await
                .map_err(|err| cannot("STARTTLS", &err))?,
            _ => {}
        }
        if let Some((user, password)) = &server.credentials {
            connection
                .auth(
                    &[Mechanism::Plain, Mechanism::Login],
                    &Credentials::new(user.clone(), password.clone()),
                )
                .await
                .map_err(|err| cannot("cannot log in", &err))?;
        }
        Ok(connection)
    }
}

/// Emails to one server, one every `interval` at most.
struct Pace {
    interval: Duration,
    next: std::sync::Mutex<tokio::time::Instant>,
}

impl Pace {
    fn new(interval: Duration) -> Self {
        Self {
            interval,
            next: std::sync::Mutex::new(tokio::time::Instant::now()),
        }
    }

    /// When the next email may start, as of `now`; that turn is taken.
    fn take(&self, now: tokio::time::Instant) -> tokio::time::Instant {
        let mut next = self
            .next
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let turn = (*next).max(now);
        *next = turn + self.interval;
        turn
    }
}

/// What an SMTP error means for the email.
fn classify(err: &lettre::transport::smtp::Error) -> Failure {
    if err.is_permanent() {
        let code = err
            .status()
            .map(|code| code.to_string())
            .unwrap_or_default();
        let reason = err.to_string();
        // A bad mailbox says so with an enhanced status 5.1.x (RFC 3463); the same
        // codes also refuse relaying or the sender.
        let bounced = ["550", "551", "553"].contains(&code.as_str()) && reason.contains("5.1.");
        Failure::Permanent { reason, bounced }
    } else {
        Failure::Temporary(err.to_string())
    }
}

/// A stream lettre made TLS from the start (for `smtps://`), in the form its SMTP
/// connection takes.
#[allow(deprecated)]
#[derive(Debug)]
struct ImplicitTls(AsyncNetworkStream);

impl tokio::io::AsyncRead for ImplicitTls {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let unfilled = buf.initialize_unfilled();
        match futures::io::AsyncRead::poll_read(Pin::new(&mut self.0), cx, unfilled) {
            Poll::Ready(Ok(read)) => {
                buf.advance(read);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(err)) => Poll::Ready(Err(err)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl tokio::io::AsyncWrite for ImplicitTls {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        futures::io::AsyncWrite::poll_write(Pin::new(&mut self.0), cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        futures::io::AsyncWrite::poll_flush(Pin::new(&mut self.0), cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        futures::io::AsyncWrite::poll_close(Pin::new(&mut self.0), cx)
    }
}

impl lettre::transport::smtp::client::AsyncTokioStream for ImplicitTls {
    fn peer_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.0.peer_addr()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn paced_emails_take_turns_an_interval_apart() {
        let pace = Pace::new(Duration::from_millis(100));
        let now = tokio::time::Instant::now();
        assert_eq!(pace.take(now), now);
        assert_eq!(pace.take(now), now + Duration::from_millis(100));
        assert_eq!(pace.take(now), now + Duration::from_millis(200));
        // After a quiet spell no turns are owed: the next goes at once.
        let later = now + Duration::from_secs(5);
        assert_eq!(pace.take(later), later);
        assert_eq!(pace.take(later), later + Duration::from_millis(100));
    }

    #[test]
    fn smtp_urls_name_the_server_its_security_and_login() {
        let server =
            SmtpServer::parse("smtp://mailer:p%40ss@mail.example.com:2525?tls=required").unwrap();
        assert_eq!(server.host, "mail.example.com");
        assert_eq!(server.port, 2525);
        assert_eq!(server.security, Security::StartTls);
        assert_eq!(
            server.credentials,
            Some(("mailer".to_string(), "p@ss".to_string()))
        );
        assert!(!format!("{server:?}").contains("p@ss"));
        let default = SmtpServer::parse("smtp://localhost").unwrap();
        assert_eq!((default.port, default.security), (25, Security::Plain));
        assert_eq!(default.credentials, None);
        let tls = SmtpServer::parse("smtps://smtp.example.com").unwrap();
        assert_eq!((tls.port, tls.security), (465, Security::Tls));
        assert_eq!(
            SmtpServer::parse("smtp://h?tls=opportunistic")
                .unwrap()
                .security,
            Security::StartTlsIfOffered
        );
        for (bad, says) in [
            ("http://mail.example.com", "smtp://"),
            ("smtp://h?tls=maybe", "tls=maybe"),
            ("smtps://h?tls=required", "TLS already"),
            ("smtp://h?pool=3", "unknown parameter pool"),
            ("smtp://", "no host"),
            ("mail.example.com", "not a URL"),
        ] {
            let err = SmtpServer::parse(bad).unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }
}
