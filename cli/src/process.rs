//! Running modules as a process: settings, telemetry, signals, listeners, drain.

use std::sync::Arc;

use anyhow::Context as _;
use cairn_runtime::host::{self, Listeners};
use cairn_runtime::{
    ConfigError, Credentials, ModuleContext, Readiness, Settings, Shutdown, Var, telemetry,
};

use crate::modules::{self, MODULES, ModuleSpec, Resources};

/// Variables only the command-line tools read.
pub const CLI_VARS: [Var; 3] = [
    crate::admin::TOKEN,
    cairn_runtime::tls::TLS_CA,
    cairn_bus::server::NATS_SERVER,
];

/// A mistake in how the program was called or configured: exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// The error and its causes on one line, each cause only when it adds something (many
/// errors already include their cause's text).
pub fn describe(err: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in err.chain() {
        let part = cause.to_string();
        if text.contains(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}

/// 2 for usage and configuration errors anywhere in the chain, 1 for everything else.
pub fn exit_code(err: &anyhow::Error) -> u8 {
    let usage = err.chain().any(|cause| {
        cause.downcast_ref::<ConfigError>().is_some()
            || cause.downcast_ref::<UsageError>().is_some()
    });
    if usage { 2 } else { 1 }
}

/// `cairn serve <service>...`: the services in one process, in the module table's order
/// (the order `cairn up` starts them in), each once.
pub async fn serve(names: &[String]) -> anyhow::Result<()> {
    if let Some(unknown) = names.iter().find(|name| modules::find(name).is_none()) {
        return Err(UsageError(format!(
            "unknown service {unknown:?}; the services are: {}",
            modules::names().join(", ")
        ))
        .into());
    }
    let specs: Vec<&ModuleSpec> = MODULES
        .iter()
        .filter(|spec| names.iter().any(|name| name == spec.name))
        .collect();
    let settings = Settings::from_env(&modules::all_vars())?;
    let service_name = match specs.as_slice() {
        [only] => format!("cairn-{}", only.name),
        _ => "cairn".to_string(),
    };
    run(&specs, settings, &service_name).await
}

/// Starts `specs` in order and serves them until SIGTERM/SIGINT, then drains.
pub async fn run(
    specs: &[&ModuleSpec],
    settings: Settings,
    service_name: &str,
) -> anyhow::Result<()> {
    let telemetry = telemetry::init(service_name, &settings)?;
    let credentials = Credentials::from_settings(&settings)?;
    let context = ModuleContext {
        settings: Arc::new(settings),
        credentials: Arc::new(credentials),
        readiness: Readiness::default(),
        metrics: telemetry.metrics.clone(),
        shutdown: Shutdown::new(),
    };
    cairn_runtime::shutdown::on_signals(&context.shutdown)
        .context("cannot install the SIGTERM/SIGINT handlers")?;
    // Listeners first: a bad or busy address fails before anything connects anywhere.
    let with_http = specs.iter().any(|spec| spec.http);
    let listeners = Listeners::bind(&context.settings, with_http).await?;

    let resources = Resources::default();
    let mut started = Vec::with_capacity(specs.len());
    for spec in specs {
        let module = (spec.start)(&context, &resources)
            .await
            .map_err(|err| anyhow::anyhow!(err))
            .with_context(|| format!("cannot start {}", spec.name))?;
        started.push(module);
    }
    let result = host::serve(started, listeners, &context).await;
    telemetry.shutdown();
    Ok(result?)
}

/// `cairn config`: every variable as a Markdown table.
pub fn print_config() -> anyhow::Result<()> {
    println!("| variable | default | meaning |");
    println!("|---|---|---|");
    for var in modules::all_vars() {
        let default = if var.default.is_empty() {
            String::new()
        } else {
            format!("`{}`", var.default)
        };
        println!("| `{}` | {} | {} |", var.name, default, var.doc);
    }
    Ok(())
}
