//! The segmenter's errors.

use cairn_runtime::error::{Classify, ErrorKind};

#[derive(Debug, thiserror::Error)]
pub enum SegmentError {
    /// The segment cannot be saved as it is; the message says why.
    #[error("segment {name}: {reason}")]
    Invalid { name: String, reason: String },
    #[error("segment {0} is included by {1}; change that segment first")]
    Included(String, String),
    #[error("there is no segment {0}")]
    Missing(String),
    #[error("there is no campaign {0}")]
    MissingCampaign(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    Store(#[from] cairn_store::StoreError),
    #[error("{0}")]
    Auth(#[from] cairn_runtime::auth::AuthError),
    #[error("{0}")]
    Config(#[from] cairn_runtime::ConfigError),
    #[error("{0}")]
    Bus(#[from] cairn_bus::BusError),
    #[error("stored segments are damaged: {0}")]
    Corrupt(String),
    /// Others kept changing the segments; try again.
    #[error("busy: {0}")]
    Busy(String),
}

impl Classify for SegmentError {
    fn kind(&self) -> ErrorKind {
        match self {
            SegmentError::Invalid { .. } | SegmentError::InvalidArgument(_) => {
                ErrorKind::InvalidArgument
            }
            SegmentError::Included(..) => ErrorKind::FailedPrecondition,
            SegmentError::Missing(_) | SegmentError::MissingCampaign(_) => ErrorKind::NotFound,
            SegmentError::Store(err) => err.kind(),
            SegmentError::Auth(err) => err.kind(),
            SegmentError::Bus(err) => err.kind(),
            SegmentError::Busy(_) => ErrorKind::Unavailable,
            SegmentError::Config(_) | SegmentError::Corrupt(_) => ErrorKind::Internal,
        }
    }
}

impl From<SegmentError> for tonic::Status {
    fn from(err: SegmentError) -> Self {
        cairn_runtime::error::to_status(&err)
    }
}

/// What becomes of a message a handler dealt with: its output published, tried again
/// in place when something it needs is down, or dead-lettered with the reason.
pub(crate) fn handled(
    result: Result<Vec<cairn_bus::Outgoing>, SegmentError>,
) -> cairn_bus::worker::Handled {
    use cairn_bus::worker::Handled;
    match result {
        Ok(outgoing) => Handled::Publish(outgoing),
        Err(err) if err.kind() == ErrorKind::Unavailable => Handled::Retry {
            reason: err.to_string(),
            delay: std::time::Duration::from_millis(500),
        },
        Err(err) => Handled::DeadLetter {
            reason: err.to_string(),
        },
    }
}
