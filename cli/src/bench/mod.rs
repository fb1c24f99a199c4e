//! `cairn bench ...`: the benchmarks, each printing its figures and a JSON line last.

mod enrich;
mod identity;
mod ingest;
mod profiles;
mod segments;
mod store;

use cairn_bus::config::NATS_URL;
use cairn_bus::server::{NATS_SERVER, NatsServer, find_binary, free_local_addr};
use cairn_runtime::Settings;

#[derive(clap::Subcommand)]
pub enum BenchCommand {
    /// Collector HTTP ingest vs raw JetStream publishing (uses CAIRN_NATS_URL when set,
    /// else starts a nats-server in a temporary directory).
    Ingest(IngestArgs),
    /// Embedded store: read-modify-write of a 2 KB profile plus a timeline append per
    /// event, in a temporary directory.
    Store(StoreArgs),
    /// Identity: events/s from events.raw to events.identified, for known visitors and
    /// for a merge-heavy workload (NATS as for `ingest`; the embedded store).
    Identity(IdentityArgs),
    /// Profile store: events/s from events.identified to profiles.changed, and the
    /// latency at a steady rate (NATS as for `ingest`; the embedded store).
    Profiles(ProfilesArgs),
    /// Enrichers: geo and device lookups/s on one core (geo on a MaxMind test database;
    /// device with the cache on a realistic mix, and uncached), then events/s through
    /// each enricher service (NATS as for `ingest`; the embedded store).
    Enrich(EnrichArgs),
    /// Segments: FilterQL evaluations/s on one core, 100 segments over realistic profiles.
    Segments(SegmentsArgs),
}

#[derive(clap::Args)]
pub struct SegmentsArgs {
    /// Profiles to evaluate.
    #[arg(long, default_value_t = 1_000)]
    pub(crate) profiles: usize,
    /// Times every profile is evaluated against every segment.
    #[arg(long, default_value_t = 20)]
    pub(crate) rounds: usize,
}

#[derive(clap::Args)]
pub struct EnrichArgs {
    /// The geo database (default: the MaxMind test database under testdata/).
    #[arg(long, default_value = "testdata/geo/GeoIP2-City-Test.mmdb")]
    pub(crate) db: std::path::PathBuf,
    /// Geo lookups.
    #[arg(long, default_value_t = 2_000_000)]
    pub(crate) lookups: usize,
    /// Device lookups through the cache.
    #[arg(long, default_value_t = 1_000_000)]
    pub(crate) agents: usize,
    /// Identified events each enricher service works through.
    #[arg(long, default_value_t = 100_000)]
    pub(crate) events: usize,
}

#[derive(clap::Args)]
pub struct ProfilesArgs {
    /// Events for the throughput run.
    #[arg(long, default_value_t = 200_000)]
    pub(crate) events: usize,
    /// People the events fall on.
    #[arg(long, default_value_t = 20_000)]
    pub(crate) profiles: usize,
    /// Events per second for the latency run.
    #[arg(long, default_value_t = 5_000)]
    pub(crate) rate: usize,
    /// Seconds of the latency run.
    #[arg(long, default_value_t = 10)]
    pub(crate) seconds: usize,
}

#[derive(clap::Args)]
pub struct IdentityArgs {
    /// Events per workload.
    #[arg(long, default_value_t = 200_000)]
    pub(crate) events: usize,
    /// Known visitors (the first workload's people).
    #[arg(long, default_value_t = 20_000)]
    pub(crate) visitors: usize,
}

#[derive(clap::Args)]
pub struct StoreArgs {
    /// Events to apply.
    #[arg(long, default_value_t = 400_000)]
    pub(crate) events: u64,
    /// Distinct profiles the events fall on.
    #[arg(long, default_value_t = 50_000)]
    pub(crate) profiles: u64,
    /// Concurrent writers (each owns its share of the profiles, as partitions do).
    #[arg(long, default_value_t = 4)]
    pub(crate) writers: u64,
    /// fsync every write (CAIRN_STORE_FSYNC=always) instead of handing it to the OS.
    #[arg(long)]
    pub(crate) fsync_always: bool,
}

#[derive(clap::Args)]
pub struct IngestArgs {
    /// Events to send through each path.
    #[arg(long, default_value_t = 300_000)]
    pub(crate) events: usize,
    /// Events per HTTP batch request.
    #[arg(long, default_value_t = 100)]
    pub(crate) batch: usize,
    /// Concurrent HTTP requests.
    #[arg(long, default_value_t = 16)]
    pub(crate) concurrency: usize,
}

pub async fn run(command: BenchCommand) -> anyhow::Result<()> {
    match command {
        BenchCommand::Ingest(args) => ingest::run(args).await,
        BenchCommand::Store(args) => store::run(args).await,
        BenchCommand::Identity(args) => identity::run(args).await,
        BenchCommand::Profiles(args) => profiles::run(args).await,
        BenchCommand::Enrich(args) => enrich::run(args).await,
        BenchCommand::Segments(args) => segments::run(args),
    }
}

/// NATS for a benchmark: CAIRN_NATS_URL when set, else a nats-server it starts in `dir`.
async fn nats(
    settings: &Settings,
    dir: &std::path::Path,
) -> anyhow::Result<(String, Option<NatsServer>)> {
    if settings.is_set(&NATS_URL) {
        return Ok((settings.string(&NATS_URL), None));
    }
    let binary = find_binary(
        settings
            .optional(&NATS_SERVER)
            .map(std::path::PathBuf::from)
            .as_deref(),
    )?;
    let server = NatsServer::start(&binary, free_local_addr()?, dir, None).await?;
    Ok((server.url(), Some(server)))
}

/// A module context for a benchmark against NATS at `url`, with `pairs` set.
fn context(url: &str, pairs: &[(&str, &str)]) -> anyhow::Result<cairn_runtime::ModuleContext> {
    let mut all = vec![("CAIRN_NATS_URL", url)];
    all.extend_from_slice(pairs);
    let settings = Settings::from_pairs(&crate::modules::all_vars(), all);
    Ok(cairn_runtime::ModuleContext {
        credentials: std::sync::Arc::new(cairn_runtime::Credentials::from_settings(&settings)?),
        settings: std::sync::Arc::new(settings),
        readiness: cairn_runtime::Readiness::default(),
        metrics: cairn_runtime::Metrics::prometheus_only("cairn-bench")?,
        shutdown: cairn_runtime::Shutdown::new(),
    })
}

/// The served module: its HTTP address (when it serves HTTP) and the host's task.
struct Served {
    http: Option<std::net::SocketAddr>,
    host: tokio::task::JoinHandle<Result<(), cairn_runtime::host::HostError>>,
}

/// Serves `module` in-process on free ports.
async fn serve(
    module: cairn_runtime::Module,
    context: &cairn_runtime::ModuleContext,
) -> anyhow::Result<Served> {
    let listeners = cairn_runtime::Listeners::ephemeral(module.http.is_some()).await?;
    let http = listeners.http_addr();
    let serving = context.clone();
    let host =
        tokio::spawn(
            async move { cairn_runtime::host::serve(vec![module], listeners, &serving).await },
        );
    Ok(Served { http, host })
}

/// The embedded store a benchmark works on, in `dir`.
fn embedded_store(dir: &std::path::Path) -> anyhow::Result<cairn_store::EmbeddedStore> {
    Ok(cairn_store::EmbeddedStore::open(
        dir,
        cairn_store::Fsync::Buffer,
        64 << 20,
        cairn_store::Clock::system(),
    )?)
}
