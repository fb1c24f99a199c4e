//! `cairn bench ...`: the benchmarks, each printing its figures and a JSON line last.

mod campaigns;
mod dispatch;
mod enrich;
mod identity;
mod ingest;
mod personalize;
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
    /// Segments: FilterQL evaluations/s on one core, 100 segments over realistic profiles;
    /// then the latency from profiles.changed to segments.changed through the segmenter
    /// at a steady rate (NATS as for `ingest`; the embedded store).
    Segments(SegmentsArgs),
    /// Campaigns: the latency from a profile change carrying its event to the campaign
    /// action it causes, through the segmenter at a steady rate, with ten campaigns
    /// running (NATS as for `ingest`; the embedded store).
    Campaigns(CampaignsArgs),
    /// Personalization: the latency of GET /v1/personalize through the collector at a
    /// steady rate, over a bucket of answers that keeps changing (NATS as for `ingest`).
    Personalize(PersonalizeArgs),
    /// Dispatcher: emails/s from queued campaign sends to a local SMTP server over 8
    /// connections (NATS as for `ingest`; the embedded store).
    Dispatch(DispatchArgs),
}

#[derive(clap::Args)]
pub struct DispatchArgs {
    /// Emails to send.
    #[arg(long, default_value_t = 20_000)]
    pub(crate) emails: usize,
    /// Profiles they go to.
    #[arg(long, default_value_t = 5_000)]
    pub(crate) profiles: usize,
    /// SMTP connections.
    #[arg(long, default_value_t = 8)]
    pub(crate) connections: usize,
    /// Send to this SMTP server (smtp://host:port) instead of a local one that accepts
    /// everything.
    #[arg(long)]
    pub(crate) smtp: Option<String>,
}

#[derive(clap::Args)]
pub struct PersonalizeArgs {
    /// Profiles with an answer.
    #[arg(long, default_value_t = 50_000)]
    pub(crate) profiles: usize,
    /// Requests per second.
    #[arg(long, default_value_t = 2_000)]
    pub(crate) rate: usize,
    /// Seconds of the run.
    #[arg(long, default_value_t = 10)]
    pub(crate) seconds: usize,
    /// Answers changed per second meanwhile.
    #[arg(long, default_value_t = 500)]
    pub(crate) writes: usize,
}

#[derive(clap::Args)]
pub struct CampaignsArgs {
    /// Profiles the events belong to.
    #[arg(long, default_value_t = 1_000)]
    pub(crate) profiles: usize,
    /// Events per second.
    #[arg(long, default_value_t = 5_000)]
    pub(crate) rate: usize,
    /// Seconds of the run.
    #[arg(long, default_value_t = 10)]
    pub(crate) seconds: usize,
}

#[derive(clap::Args)]
pub struct SegmentsArgs {
    /// Profiles to evaluate.
    #[arg(long, default_value_t = 1_000)]
    pub(crate) profiles: usize,
    /// Times every profile is evaluated against every segment.
    #[arg(long, default_value_t = 20)]
    pub(crate) rounds: usize,
    /// Profile changes per second for the latency run.
    #[arg(long, default_value_t = 5_000)]
    pub(crate) rate: usize,
    /// Seconds of the latency run.
    #[arg(long, default_value_t = 10)]
    pub(crate) seconds: usize,
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
        BenchCommand::Segments(args) => segments::run(args).await,
        BenchCommand::Campaigns(args) => campaigns::run(args).await,
        BenchCommand::Personalize(args) => personalize::run(args).await,
        BenchCommand::Dispatch(args) => dispatch::run(args).await,
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

/// A latency run: messages published at a steady rate, each under a key, and the time
/// until the answer with the same key was seen.
#[derive(Clone, Default)]
struct LatencyRun {
    sent_at:
        std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>>,
    latencies: std::sync::Arc<std::sync::Mutex<Vec<std::time::Duration>>>,
}

impl LatencyRun {
    /// Listens on `subject` until aborted: each message `key_of` names is an answer.
    async fn listen(
        &self,
        bus: &cairn_bus::Bus,
        subject: &str,
        key_of: impl Fn(bytes::Bytes) -> Option<String> + Send + 'static,
    ) -> anyhow::Result<tokio::task::JoinHandle<()>> {
        use futures::StreamExt as _;
        let mut messages = bus.client().subscribe(subject.to_string()).await?;
        let run = self.clone();
        Ok(tokio::spawn(async move {
            while let Some(message) = messages.next().await {
                let received = std::time::Instant::now();
                if let Some(key) = key_of(message.payload) {
                    run.answered(&key, received);
                }
            }
        }))
    }

    /// The answer for `key` arrived at `at`; only the first one per key counts.
    fn answered(&self, key: &str, at: std::time::Instant) {
        let sent = self
            .sent_at
            .lock()
            .map(|mut sent| sent.remove(key))
            .ok()
            .flatten();
        if let Some(sent) = sent
            && let Ok(mut latencies) = self.latencies.lock()
        {
            latencies.push(at - sent);
        }
    }

    /// Publishes `total` messages at `rate` per second, each millisecond those due by
    /// then (a steady stream, as from many independent senders; not bursts, whose last
    /// messages would wait behind the first); `message` gives message `n` and its key.
    async fn publish(
        &self,
        bus: &cairn_bus::Bus,
        rate: usize,
        total: usize,
        mut message: impl FnMut(usize) -> (String, cairn_bus::Outgoing),
    ) -> anyhow::Result<()> {
        let started = std::time::Instant::now();
        let mut ticker = tokio::time::interval(std::time::Duration::from_millis(1));
        let mut n = 0;
        while n < total {
            ticker.tick().await;
            let due = ((started.elapsed().as_secs_f64() * rate as f64) as usize + 1).min(total);
            if due <= n {
                continue;
            }
            let (keys, batch): (Vec<String>, Vec<cairn_bus::Outgoing>) =
                (n..due).map(&mut message).unzip();
            if let Ok(mut sent) = self.sent_at.lock() {
                let now = std::time::Instant::now();
                sent.extend(keys.into_iter().map(|key| (key, now)));
            }
            bus.send_all(batch).await?;
            n = due;
        }
        Ok(())
    }

    /// A run through the segmenter: `warm_up` messages first, left for its `segmenter`
    /// consumer to drain (not measured), then `total` more at `rate` per second; the
    /// latencies seen, sorted, and the CPU used per message until the segmenter and the
    /// consumers behind it (activation, personalization) have caught up. `message`
    /// gives message `n` and its key.
    async fn through_segmenter(
        &self,
        bus: &cairn_bus::Bus,
        server: Option<&NatsServer>,
        warm_up: usize,
        rate: usize,
        total: usize,
        mut message: impl FnMut(usize) -> (String, cairn_bus::Outgoing),
    ) -> anyhow::Result<(Vec<std::time::Duration>, (Option<f64>, Option<f64>))> {
        bus.publish_all((0..warm_up).map(|n| message(n).1).collect())
            .await?;
        drained(bus, cairn_bus::streams::PROFILES, "segmenter").await?;
        let cpu_before = CpuUsed::now(server);
        self.publish(bus, rate, total, |n| message(warm_up + n))
            .await?;
        drained(bus, cairn_bus::streams::PROFILES, "segmenter").await?;
        for consumer in [
            cairn_segmenter::activation::SERVICE.to_string(),
            format!("{}_segments", cairn_segmenter::personalization::SERVICE),
        ] {
            caught_up(bus, cairn_bus::streams::SEGMENTS, &consumer, false).await?;
        }
        let cpu = CpuUsed::now(server).per_event_since(&cpu_before, total);
        // Every change is handled (and what it flipped announced): the last answers are
        // on their way. A change that flips nothing has none.
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        Ok((self.seen(), cpu))
    }

    /// Waits (30 s at most) for `total` answers; the latencies seen, sorted.
    async fn latencies(&self, total: usize) -> Vec<std::time::Duration> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let count = || self.latencies.lock().map(|seen| seen.len()).unwrap_or(0);
        while count() < total && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        self.seen()
    }

    /// The latencies seen so far, sorted.
    fn seen(&self) -> Vec<std::time::Duration> {
        let mut latencies = self
            .latencies
            .lock()
            .map(|seen| seen.clone())
            .unwrap_or_default();
        latencies.sort();
        latencies
    }
}

/// CPU time (user and system) used so far by this process and by the nats-server a
/// benchmark started, from Linux's `/proc/<pid>/stat`: what a stage costs, which a
/// shared machine's neighbours change less than they change its speed.
#[derive(Debug, Clone, Copy)]
struct CpuUsed {
    cairn: Option<std::time::Duration>,
    nats: Option<std::time::Duration>,
}

impl CpuUsed {
    fn now(nats: Option<&NatsServer>) -> Self {
        Self {
            cairn: process_cpu("self"),
            nats: nats
                .and_then(NatsServer::pid)
                .and_then(|pid| process_cpu(&pid.to_string())),
        }
    }

    /// `(Cairn, nats-server)` microseconds of CPU per event over `events` since `before`.
    fn per_event_since(&self, before: &CpuUsed, events: usize) -> (Option<f64>, Option<f64>) {
        let per_event = |now: Option<std::time::Duration>, then: Option<std::time::Duration>| {
            Some(now?.saturating_sub(then?).as_secs_f64() * 1e6 / events.max(1) as f64)
        };
        (
            per_event(self.cairn, before.cairn),
            per_event(self.nats, before.nats),
        )
    }
}

/// User + system CPU time of process `pid` (`self` for this one).
fn process_cpu(pid: &str) -> Option<std::time::Duration> {
    stat_cpu(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// User + system CPU time in a `/proc/<pid>/stat` line.
fn stat_cpu(stat: &str) -> Option<std::time::Duration> {
    // After "pid (command) ", whose command may hold spaces: state, ppid, ...; utime
    // and stime are the 12th and 13th fields, in clock ticks of 1/100 s.
    let fields: Vec<&str> = stat.get(stat.rfind(')')? + 2..)?.split(' ').collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(std::time::Duration::from_millis(ticks * 10))
}

/// How a stage's CPU per event reads, with the rate it allows on this machine's cores.
fn cpu_line(unit: &str, cairn: Option<f64>, nats: Option<f64>) -> String {
    let Some(cairn) = cairn else {
        return format!("CPU per {unit}: not measured (no /proc)");
    };
    let cores = std::thread::available_parallelism().map_or(1, usize::from) as f64;
    match nats {
        Some(nats) => format!(
            "CPU per {unit}: Cairn {cairn:.0} µs, nats-server {nats:.0} µs (at most {:.0} {unit}s/s on {cores} cores)",
            cores * 1e6 / (cairn + nats)
        ),
        None => format!("CPU per {unit}: Cairn {cairn:.0} µs (NATS elsewhere)"),
    }
}

/// The `p` percentile (0..1) of `sorted`, in milliseconds.
fn percentile_ms(sorted: &[std::time::Duration], p: f64) -> f64 {
    sorted
        .get(((sorted.len() as f64 * p) as usize).min(sorted.len().saturating_sub(1)))
        .map_or(0.0, |latency| latency.as_secs_f64() * 1000.0)
}

/// Waits until `consumer` of `stream` has been given messages and has nothing pending
/// and nothing unacknowledged.
async fn drained(bus: &cairn_bus::Bus, stream: &str, consumer: &str) -> anyhow::Result<()> {
    caught_up(bus, stream, consumer, true).await
}

/// Waits until `consumer` of `stream` has nothing pending and nothing unacknowledged
/// (and, if `delivered`, has been given messages: a consumer just made counts nothing
/// pending yet).
async fn caught_up(
    bus: &cairn_bus::Bus,
    stream: &str,
    consumer: &str,
    delivered: bool,
) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    loop {
        let info = bus.consumer_info(stream, consumer).await?;
        if let Some(info) = info
            && info.num_pending == 0
            && info.num_ack_pending == 0
            && (info.delivered.stream_sequence > 0 || !delivered)
        {
            return Ok(());
        }
        if started.elapsed() > std::time::Duration::from_secs(600) {
            anyhow::bail!("{consumer} not done after 10 minutes");
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_is_read_from_a_stat_line_whose_command_has_spaces() {
        let line = "4242 (tokio rt) worker) S 1 4242 4242 0 -1 4194560 2790 0 0 0 1234 56 0 0 20 0 9 0 100 0 0";
        assert_eq!(
            stat_cpu(line),
            Some(std::time::Duration::from_millis(12_900))
        );
        assert_eq!(stat_cpu("4242 (cut short) S 1"), None);
        assert!(process_cpu("self").is_some());
    }
}

/// A stage that does no work, for the floor of a benchmark: each message passed on
/// unchanged to `<prefix>.<partition>` (the partition: its subject's last token).
#[derive(Clone)]
struct PassOn {
    prefix: &'static str,
}

impl cairn_bus::worker::Handler for PassOn {
    async fn handle(&self, message: &cairn_bus::worker::Delivered) -> cairn_bus::worker::Handled {
        let partition = message.subject.rsplit('.').next().unwrap_or_default();
        cairn_bus::worker::Handled::Publish(vec![cairn_bus::Outgoing {
            subject: format!("{}.{partition}", self.prefix),
            message_id: Some(format!(
                "floor:{}:{}",
                message.stream, message.stream_sequence
            )),
            headers: async_nats::HeaderMap::new(),
            payload: message.payload.clone(),
        }])
    }
}

/// Workers of [`PassOn`] (the services' worker loop), one per consumer, and how to stop
/// them.
struct PassingOn {
    shutdown: cairn_runtime::Shutdown,
    workers: Vec<tokio::task::JoinHandle<Result<(), cairn_bus::BusError>>>,
}

impl PassingOn {
    fn start(
        bus: &cairn_bus::Bus,
        consumers: &[async_nats::jetstream::consumer::PullConsumer],
        batch: usize,
        prefix: &'static str,
    ) -> Self {
        let shutdown = cairn_runtime::Shutdown::new();
        let workers = consumers
            .iter()
            .map(|consumer| {
                let options = cairn_bus::worker::WorkerOptions {
                    service: "bench-floor",
                    batch,
                    max_attempts: cairn_bus::worker::MAX_ATTEMPTS,
                    handling: cairn_bus::worker::Handling::InOrder,
                };
                tokio::spawn(cairn_bus::worker::run(
                    bus.clone(),
                    consumer.clone(),
                    PassOn { prefix },
                    options,
                    shutdown.clone(),
                ))
            })
            .collect();
        Self { shutdown, workers }
    }

    async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.trigger();
        for worker in self.workers {
            worker.await??;
        }
        Ok(())
    }
}
