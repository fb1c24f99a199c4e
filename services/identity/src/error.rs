//! The identity service's errors.

use cairn_runtime::error::{Classify, ErrorKind};

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{0}")]
    Store(#[from] cairn_store::StoreError),
    #[error("{0}")]
    Bus(#[from] cairn_bus::BusError),
    #[error("{0}")]
    Rules(#[from] crate::rules::RulesError),
    #[error("{0}")]
    Config(#[from] cairn_runtime::ConfigError),
    /// The event carries no identifier the rules accept: it cannot belong to anyone.
    #[error(
        "no usable identifier: the event has no userId, anonymousId or other identifier that is not blocked"
    )]
    NoIdentifiers,
    /// The message is not an event identity can read.
    #[error("unreadable event: {0}")]
    Unreadable(String),
    /// Other workers held the profiles involved for too long; try again later.
    #[error("busy: {0}")]
    Busy(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    Auth(#[from] cairn_runtime::auth::AuthError),
    #[error("stored identity data is damaged: {0}")]
    Corrupt(String),
    /// Something must be stopped or finished first (a rebuild while identity runs).
    #[error("{0}")]
    NotStopped(String),
    /// The event names an identifier (of this type) whose profile was deleted after the
    /// event was received: it is dropped, not given to anyone.
    #[error(
        "an identifier ({kind}) of this event belongs to a profile deleted after the event was received"
    )]
    Forgotten { kind: String },
}

impl IdentityError {
    /// Whether retrying can help; otherwise the message goes to the dead letters.
    pub fn is_transient(&self) -> bool {
        match self {
            IdentityError::Store(err) => err.kind() == ErrorKind::Unavailable,
            IdentityError::Bus(err) => matches!(
                err.kind(),
                ErrorKind::Unavailable | ErrorKind::ResourceExhausted
            ),
            IdentityError::Busy(_) => true,
            _ => false,
        }
    }
}

impl Classify for IdentityError {
    fn kind(&self) -> ErrorKind {
        match self {
            IdentityError::Store(err) => err.kind(),
            IdentityError::Bus(err) => err.kind(),
            IdentityError::Auth(err) => err.kind(),
            IdentityError::NotFound(_) => ErrorKind::NotFound,
            IdentityError::InvalidArgument(_)
            | IdentityError::NoIdentifiers
            | IdentityError::Unreadable(_) => ErrorKind::InvalidArgument,
            IdentityError::Busy(_) => ErrorKind::Unavailable,
            IdentityError::Forgotten { .. } | IdentityError::NotStopped(_) => {
                ErrorKind::FailedPrecondition
            }
            IdentityError::Rules(_) | IdentityError::Config(_) | IdentityError::Corrupt(_) => {
                ErrorKind::Internal
            }
        }
    }
}

impl From<IdentityError> for tonic::Status {
    fn from(err: IdentityError) -> Self {
        cairn_runtime::error::to_status(&err)
    }
}
