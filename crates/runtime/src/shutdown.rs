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

    /// A shutdown of its own that also begins when this one does (to stop one part,
    /// such as one partition's worker, alone).
    pub fn child(&self) -> Shutdown {
        Shutdown {
            token: self.token.child_token(),
        }
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

/// Requests shutdown on `shutdown` at the first SIGTERM or SIGINT. Fails when the
/// handlers cannot be installed, so a process never runs deaf to SIGTERM.
pub fn on_signals(shutdown: &Shutdown) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let shutdown = shutdown.clone();
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = terminate.recv() => "SIGTERM",
            _ = interrupt.recv() => "SIGINT",
        };
        tracing::info!(signal = name, "shutdown requested");
        shutdown.trigger();
    });
    Ok(())
}
