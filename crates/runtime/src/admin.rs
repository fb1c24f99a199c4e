//! The admin endpoints every process serves on its admin port: `/healthz` (the process is
//! alive), `/readyz` (it should receive traffic) and `/metrics` (Prometheus text).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use axum::Router;
use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::get;
use http::StatusCode;

use crate::telemetry::Metrics;

type Check = Box<dyn Fn() -> Result<(), String> + Send + Sync>;

/// Whether the process should receive traffic: false while draining, or while any
/// registered check (e.g. "connected to NATS") fails.
#[derive(Clone, Default)]
pub struct Readiness {
    inner: Arc<ReadinessInner>,
}

#[derive(Default)]
struct ReadinessInner {
    started: AtomicBool,
    draining: AtomicBool,
    checks: RwLock<Vec<(String, Check)>>,
}

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Readiness")
            .field("state", &self.check())
            .finish()
    }
}

impl Readiness {
    /// Adds a named condition that must hold for the process to be ready.
    pub fn add_check(
        &self,
        name: impl Into<String>,
        check: impl Fn() -> Result<(), String> + Send + Sync + 'static,
    ) {
        if let Ok(mut checks) = self.inner.checks.write() {
            checks.push((name.into(), Box::new(check)));
        }
    }

    /// Marks start-up done: every module is serving.
    pub fn set_started(&self) {
        self.inner.started.store(true, Ordering::SeqCst);
    }

    /// Marks the process as draining: not ready from now on.
    pub fn set_draining(&self) {
        self.inner.draining.store(true, Ordering::SeqCst);
    }

    /// Ok when ready, else the reasons it is not.
    pub fn check(&self) -> Result<(), Vec<String>> {
        let mut reasons = Vec::new();
        if !self.inner.started.load(Ordering::SeqCst) {
            reasons.push("starting".to_string());
        }
        if self.inner.draining.load(Ordering::SeqCst) {
            reasons.push("draining: shutting down".to_string());
        }
        if let Ok(checks) = self.inner.checks.read() {
            for (name, check) in checks.iter() {
                if let Err(reason) = check() {
                    reasons.push(format!("{name}: {reason}"));
                }
            }
        }
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(reasons)
        }
    }
}

#[derive(Clone)]
struct AdminState {
    readiness: Readiness,
    metrics: Metrics,
}

/// The admin router: `/healthz`, `/readyz`, `/metrics`.
pub fn router(readiness: Readiness, metrics: Metrics) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(AdminState { readiness, metrics })
}

async fn readyz(State(state): State<AdminState>) -> impl IntoResponse {
    match state.readiness.check() {
        Ok(()) => (StatusCode::OK, "ready\n".to_string()),
        Err(reasons) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", reasons.join("; ")),
        ),
    }
}

async fn metrics_text(State(state): State<AdminState>) -> impl IntoResponse {
    match state.metrics.render() {
        Ok(text) => (
            StatusCode::OK,
            [(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            text,
        ),
        Err(err) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(http::header::CONTENT_TYPE, "text/plain")],
            format!("cannot encode metrics: {err}\n"),
        ),
    }
}
