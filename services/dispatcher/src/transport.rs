//! How an email leaves: SMTP through a pool of connections (lettre, rustls), or an
//! `.eml` file per email in a folder (the local default: real emails, nothing to
//! install). A failure is temporary (a 4xx answer, a connection or disk problem: try
//! again later) or permanent (a 5xx answer: never).

use lettre::transport::smtp::PoolConfig;
use lettre::{
    AsyncFileTransport, AsyncSmtpTransport, AsyncTransport as _, Message, Tokio1Executor,
};

use crate::config::Transport;
use crate::error::DispatchError;

#[derive(Clone)]
pub enum Mailer {
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
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
            Transport::Smtp { url, connections } => {
                let builder =
                    AsyncSmtpTransport::<Tokio1Executor>::from_url(url).map_err(|err| {
                        DispatchError::InvalidArgument(format!("CAIRN_SMTP_URL: {err}"))
                    })?;
                Ok(Mailer::Smtp(
                    builder
                        .pool_config(PoolConfig::new().max_size(*connections))
                        .build(),
                ))
            }
        }
    }

    /// Sends `message`; what the server said when it did not take it.
    pub async fn send(&self, message: Message) -> Result<(), Failure> {
        match self {
            Mailer::Smtp(smtp) => smtp.send(message).await.map(|_| ()).map_err(|err| {
                if err.is_permanent() {
                    let code = err
                        .status()
                        .map(|code| code.to_string())
                        .unwrap_or_default();
                    let reason = err.to_string();
                    // A bad mailbox says so with an enhanced status 5.1.x (RFC 3463);
                    // the same codes also refuse relaying or the sender.
                    let bounced =
                        ["550", "551", "553"].contains(&code.as_str()) && reason.contains("5.1.");
                    Failure::Permanent { reason, bounced }
                } else {
                    Failure::Temporary(err.to_string())
                }
            }),
            Mailer::File(file) => file
                .send(message)
                .await
                .map(|_| ())
                .map_err(|err| Failure::Temporary(err.to_string())),
        }
    }
}
