//! The dispatcher's errors.

use cairn_runtime::error::{Classify, ErrorKind};

#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    /// A template cannot be saved or rendered as it is; the message says why.
    #[error("template {name}: {reason}")]
    Template { name: String, reason: String },
    #[error("there is no template {0}")]
    MissingTemplate(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    Store(#[from] cairn_store::StoreError),
    #[error("{0}")]
    Bus(#[from] cairn_bus::BusError),
    #[error("{0}")]
    Config(#[from] cairn_runtime::ConfigError),
    #[error("stored dispatch state is damaged: {0}")]
    Corrupt(String),
    /// Others kept changing a record; try again.
    #[error("busy: {0}")]
    Busy(String),
}

impl Classify for DispatchError {
    fn kind(&self) -> ErrorKind {
        match self {
            DispatchError::Template { .. } | DispatchError::InvalidArgument(_) => {
                ErrorKind::InvalidArgument
            }
            DispatchError::MissingTemplate(_) => ErrorKind::NotFound,
            DispatchError::Store(err) => err.kind(),
            DispatchError::Bus(err) => err.kind(),
            DispatchError::Busy(_) => ErrorKind::Unavailable,
            DispatchError::Config(_) | DispatchError::Corrupt(_) => ErrorKind::Internal,
        }
    }
}

impl From<DispatchError> for tonic::Status {
    fn from(err: DispatchError) -> Self {
        cairn_runtime::error::to_status(&err)
    }
}
