//! Shutdown: one token that every part of a process watches, set by SIGTERM or SIGINT
//! (Kubernetes sends SIGTERM) or by a module that failed.

use tokio_util::sync::CancellationToken;

/// A cloneable handle: `requested()` resolves once shutdown has begun.
#[derive(Clone, Debug, Default)]
pub struct Shutdown {
    token: CancellationToken,
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// Begins shutdown everywhere this handle was cloned to.
    pub fn trigger(&self) {
        self.token.cancel();
    }

    pub fn is_requested(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Resolves once shutdown has begun.
    pub async fn requested(&self) {
        self.token.cancelled().await;
    }

    /// An owned future for APIs that take a `'static` shutdown signal.
    pub fn requested_owned(&self) -> impl Future<Output = ()> + Send + 'static {
        self.token.clone().cancelled_owned()
    }
}

/// Waits for SIGTERM or SIGINT and returns the signal's name.
pub async fn wait_for_signal() -> std::io::Result<&'static str> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut terminate = signal(SignalKind::terminate())?;
        let mut interrupt = signal(SignalKind::interrupt())?;
        tokio::select! {
            _ = terminate.recv() => Ok("SIGTERM"),
            _ = interrupt.recv() => Ok("SIGINT"),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await?;
        Ok("Ctrl-C")
    }
}
