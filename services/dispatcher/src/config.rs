//! Dispatcher settings.

use std::path::PathBuf;
use std::time::Duration;

use cairn_runtime::config::{ConfigError, Settings, Var};

pub const EMAIL_TRANSPORT: Var = Var {
    name: "CAIRN_EMAIL_TRANSPORT",
    default: "file",
    doc: "How emails leave: `file` (each one an .eml file under CAIRN_DATA_DIR/outbox, nothing to install) or `smtp` (CAIRN_SMTP_URL).",
};
pub const SMTP_URL: Var = Var {
    name: "CAIRN_SMTP_URL",
    default: "",
    doc: "The SMTP server for CAIRN_EMAIL_TRANSPORT=smtp: smtp://[user:password@]host[:port] (STARTTLS with ?tls=required, or ?tls=opportunistic when offered), smtps:// for TLS from the start.",
};
pub const SMTP_CONNECTIONS: Var = Var {
    name: "CAIRN_SMTP_CONNECTIONS",
    default: "8",
    doc: "SMTP connections kept open per dispatcher replica.",
};
pub const SMTP_RATE: Var = Var {
    name: "CAIRN_SMTP_RATE",
    default: "0",
    doc: "Most emails per second each dispatcher replica sends to one SMTP server (a provider's limit; 0: no limit). Emails over it wait their turn.",
};
pub const EMAIL_B2B_SMTP_URL: Var = Var {
    name: "CAIRN_EMAIL_B2B_SMTP_URL",
    default: "",
    doc: "The SMTP server (as CAIRN_SMTP_URL) for emails to business addresses (the activity enricher's customer_type b2b); unset: the usual transport.",
};
pub const EMAIL_B2B_FROM: Var = Var {
    name: "CAIRN_EMAIL_B2B_FROM",
    default: "",
    doc: "The From address of emails to business addresses; unset: CAIRN_EMAIL_FROM.",
};
pub const EMAIL_B2C_SMTP_URL: Var = Var {
    name: "CAIRN_EMAIL_B2C_SMTP_URL",
    default: "",
    doc: "The SMTP server (as CAIRN_SMTP_URL) for emails to private addresses (customer_type b2c); unset: the usual transport.",
};
pub const EMAIL_B2C_FROM: Var = Var {
    name: "CAIRN_EMAIL_B2C_FROM",
    default: "",
    doc: "The From address of emails to private addresses; unset: CAIRN_EMAIL_FROM.",
};
pub const EMAIL_FROM: Var = Var {
    name: "CAIRN_EMAIL_FROM",
    default: "Cairn <cairn@localhost>",
    doc: "The From address of campaign emails.",
};
pub const PUBLIC_URL: Var = Var {
    name: "CAIRN_PUBLIC_URL",
    default: "",
    doc: "The collector's address as mail clients reach it, for the unsubscribe links in emails (https://t.example.com); by default http://CAIRN_HTTP_ADDR.",
};
pub const EMAIL_DAILY_CAP: Var = Var {
    name: "CAIRN_EMAIL_DAILY_CAP",
    default: "5",
    doc: "Most campaign emails one profile gets in any 24 hours, across campaigns (0: no cap); each campaign can cap its own actions too.",
};
pub const EMAIL_QUIET_HOURS: Var = Var {
    name: "CAIRN_EMAIL_QUIET_HOURS",
    default: "21:00-08:00",
    doc: "Local time in which no campaign email leaves, HH:MM-HH:MM in the profile's time zone (UTC when unknown); an email due then is held until the window ends. `off` to send at any hour.",
};
pub const EMAIL_ATTEMPTS: Var = Var {
    name: "CAIRN_EMAIL_ATTEMPTS",
    default: "8",
    doc: "Attempts at an email the server defers (4xx, connection failures) before it is given up and dead-lettered.",
};
pub const EMAIL_BACKOFF: Var = Var {
    name: "CAIRN_EMAIL_BACKOFF",
    default: "2s",
    doc: "Wait before the second attempt at a deferred email; it doubles with each attempt (with jitter), up to five minutes.",
};

/// Every variable the dispatcher reads.
pub const VARS: &[Var] = &[
    EMAIL_TRANSPORT,
    SMTP_URL,
    SMTP_CONNECTIONS,
    SMTP_RATE,
    EMAIL_FROM,
    EMAIL_B2B_SMTP_URL,
    EMAIL_B2B_FROM,
    EMAIL_B2C_SMTP_URL,
    EMAIL_B2C_FROM,
    PUBLIC_URL,
    EMAIL_DAILY_CAP,
    EMAIL_QUIET_HOURS,
    EMAIL_ATTEMPTS,
    EMAIL_BACKOFF,
];

/// Where emails go.
#[derive(Debug, Clone, PartialEq)]
pub enum Transport {
    /// `.eml` files in this folder.
    File(PathBuf),
    Smtp {
        server: crate::transport::SmtpServer,
        connections: u32,
        /// Most emails per second to the server; none, no limit.
        per_second: Option<f64>,
    },
}

/// Where some emails go, and who they are from.
#[derive(Debug, Clone, PartialEq)]
pub struct Sender {
    pub transport: Transport,
    pub from: lettre::message::Mailbox,
}

#[derive(Debug, Clone)]
pub struct DispatchConfig {
    pub sender: Sender,
    /// Senders for the profiles of a customer type (`b2b`, `b2c`), when configured.
    pub pools: Vec<(String, Sender)>,
    pub attempts: u32,
    pub backoff: Duration,
    /// Most emails per profile in any 24 hours; 0, no cap.
    pub daily_cap: u32,
    pub quiet_hours: Option<crate::quiet::QuietHours>,
    /// Signs unsubscribe links; none, no links.
    pub link_secret: Option<String>,
    /// Where the links point, without a trailing `/`.
    pub public_url: String,
}

/// The longest pause between attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

impl DispatchConfig {
    pub fn from_settings(settings: &Settings) -> Result<Self, ConfigError> {
        let connections = u32::try_from(settings.number(&SMTP_CONNECTIONS, 1)?).unwrap_or(u32::MAX);
        let per_second = Some(settings.number(&SMTP_RATE, 0)? as f64).filter(|rate| *rate > 0.0);
        let smtp = |var: &Var, url: &str| -> Result<Transport, ConfigError> {
            Ok(Transport::Smtp {
                server: crate::transport::SmtpServer::parse(url)
                    .map_err(|reason| settings.invalid(var, reason))?,
                connections,
                per_second,
            })
        };
        let transport = match settings.string(&EMAIL_TRANSPORT).trim() {
            "file" | "" => {
                Transport::File(settings.path(&cairn_runtime::host::DATA_DIR).join("outbox"))
            }
            "smtp" => {
                let url = settings.string(&SMTP_URL);
                if url.trim().is_empty() {
                    return Err(settings.invalid(
                        &SMTP_URL,
                        "required with CAIRN_EMAIL_TRANSPORT=smtp: smtp://host[:port] or smtps://host[:port]",
                    ));
                }
                smtp(&SMTP_URL, &url)?
            }
            _ => return Err(settings.invalid(&EMAIL_TRANSPORT, "use file or smtp")),
        };
        let from_address = |var: &Var, text: &str| {
            text.parse::<lettre::message::Mailbox>()
                .map_err(|err| settings.invalid(var, format!("not an address: {err}")))
        };
        let sender = Sender {
            transport,
            from: from_address(&EMAIL_FROM, &settings.string(&EMAIL_FROM))?,
        };
        let mut pools = Vec::new();
        for (customer_type, url_var, from_var) in [
            ("b2b", &EMAIL_B2B_SMTP_URL, &EMAIL_B2B_FROM),
            ("b2c", &EMAIL_B2C_SMTP_URL, &EMAIL_B2C_FROM),
        ] {
            let (url, from) = (settings.optional(url_var), settings.optional(from_var));
            if url.is_none() && from.is_none() {
                continue;
            }
            pools.push((
                customer_type.to_string(),
                Sender {
                    transport: match url {
                        Some(url) => smtp(url_var, &url)?,
                        None => sender.transport.clone(),
                    },
                    from: match from {
                        Some(from) => from_address(from_var, &from)?,
                        None => sender.from.clone(),
                    },
                },
            ));
        }
        let public_url = match settings.optional(&PUBLIC_URL) {
            Some(url) if url.starts_with("http://") || url.starts_with("https://") => {
                url.trim_end_matches('/').to_string()
            }
            Some(_) => {
                return Err(settings.invalid(&PUBLIC_URL, "must start with http:// or https://"));
            }
            None => format!(
                "http://{}",
                settings.string(&cairn_runtime::host::HTTP_ADDR)
            ),
        };
        Ok(Self {
            link_secret: cairn_bus::suppressions::link_secret(settings)?,
            daily_cap: u32::try_from(settings.number(&EMAIL_DAILY_CAP, 0)?).unwrap_or(u32::MAX),
            quiet_hours: crate::quiet::QuietHours::parse(&settings.string(&EMAIL_QUIET_HOURS))
                .map_err(|reason| settings.invalid(&EMAIL_QUIET_HOURS, reason))?,
            public_url,
            sender,
            pools,
            attempts: u32::try_from(settings.number(&EMAIL_ATTEMPTS, 1)?).unwrap_or(u32::MAX),
            backoff: settings.duration(&EMAIL_BACKOFF)?,
        })
    }

    /// The unsubscribe link for `email` (from `list`, or from every campaign email),
    /// when links are signed.
    pub fn unsubscribe_url(&self, email: &str, list: Option<&str>) -> Option<String> {
        let secret = self.link_secret.as_deref()?;
        Some(format!(
            "{}/v1/unsubscribe?t={}",
            self.public_url,
            cairn_bus::suppressions::unsubscribe_token(secret, email, list)
        ))
    }

    /// The pause after failed attempt `attempt` (1 for the first): doubling from
    /// `backoff`, at most five minutes, less up to a quarter at random so that many
    /// deferred emails do not come back all at once.
    pub fn wait_after(&self, attempt: u32) -> Duration {
        let doubled = self
            .backoff
            .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1)))
            .min(MAX_BACKOFF);
        let jitter = rand::random::<f64>() * 0.25;
        doubled.mul_f64(1.0 - jitter)
    }
}
