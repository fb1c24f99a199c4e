//! The profile store's errors.

use cairn_runtime::error::{Classify, ErrorKind};

#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("{0}")]
    Store(#[from] cairn_store::StoreError),
    #[error("{0}")]
    Bus(#[from] cairn_bus::BusError),
    #[error("{0}")]
    Config(#[from] cairn_runtime::ConfigError),
    #[error("{0}")]
    Auth(#[from] cairn_runtime::auth::AuthError),
    /// The message is not something the profile store can read.
    #[error("unreadable message: {0}")]
    Unreadable(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    InvalidArgument(String),
    /// Other writers kept changing the profile; try again later.
    #[error("busy: {0}")]
    Busy(String),
    #[error("stored profile data is damaged: {0}")]
    Corrupt(String),
    /// Something must be stopped first (a rebuild while replicas run).
    #[error("{0}")]
    NotStopped(String),
    /// A merge or split that no longer fits the profiles (one was merged elsewhere).
    #[error("no longer applies: {0}")]
    Stale(String),
}

impl ProfileError {
    /// Whether retrying can help; otherwise the message goes to the dead letters.
    pub fn is_transient(&self) -> bool {
        match self {
            ProfileError::Store(err) => err.kind() == ErrorKind::Unavailable,
            ProfileError::Bus(err) => matches!(
                err.kind(),
                ErrorKind::Unavailable | ErrorKind::ResourceExhausted
            ),
            ProfileError::Busy(_) => true,
            _ => false,
        }
    }
}

impl Classify for ProfileError {
    fn kind(&self) -> ErrorKind {
        match self {
            ProfileError::Store(err) => err.kind(),
            ProfileError::Bus(err) => err.kind(),
            ProfileError::Auth(err) => err.kind(),
            ProfileError::NotFound(_) => ErrorKind::NotFound,
            ProfileError::InvalidArgument(_) | ProfileError::Unreadable(_) => {
                ErrorKind::InvalidArgument
            }
            ProfileError::Busy(_) => ErrorKind::Unavailable,
            ProfileError::Stale(_) | ProfileError::NotStopped(_) => ErrorKind::FailedPrecondition,
            ProfileError::Config(_) | ProfileError::Corrupt(_) => ErrorKind::Internal,
        }
    }
}

impl From<ProfileError> for tonic::Status {
    fn from(err: ProfileError) -> Self {
        cairn_runtime::error::to_status(&err)
    }
}
