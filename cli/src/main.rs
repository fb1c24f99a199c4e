//! `cairn`: one binary for every service and for local use.
//!
//! `main` only parses the command line and hands over; each command lives in its own
//! module. Exit codes: 0 success, 1 failure at run time, 2 bad usage or configuration.

#![forbid(unsafe_code)]

mod admin;
mod bench;
mod campaign;
mod demo;
mod dev;
mod enrich;
mod loadgen;
mod modules;
mod process;
mod profile;
mod rebuild;
mod segment;
mod send;
mod suppression;
mod template;
mod traffic;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Many small allocations per event (keys, JSON, buffers): mimalloc handles them with
/// less contention between threads than the system allocator. Built without transparent
/// huge pages (`no_thp`): zeroing a fresh 2 MiB page each time it reuses purged memory
/// took 6% of the profile store's time.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "cairn",
    version,
    about = "Cairn: a real-time customer data platform"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve one service (what each Kubernetes Deployment runs), or several in one
    /// process (what a single-replica install on the embedded store runs).
    Serve {
        /// The services: each one of `cairn modules`.
        #[arg(required = true)]
        services: Vec<String>,
    },
    /// Run every service in this process, with a local nats-server when none answers.
    Up {
        /// Also save demo templates, segments and campaigns and send a trickle of demo
        /// shoppers, so there is something to see within a minute.
        #[arg(long)]
        demo: bool,
    },
    /// Post one test event to the collector's HTTP API.
    Send(send::SendArgs),
    /// Send synthetic shop traffic to the running collector at a target rate.
    Loadgen(loadgen::LoadgenArgs),
    /// Benchmarks.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Ask the running Cairn at CAIRN_GRPC_ADDR what it runs and whether it is ready.
    Status,
    /// Profiles of the running Cairn (at CAIRN_GRPC_ADDR, with CAIRN_TOKEN).
    #[command(subcommand)]
    Profile(profile::ProfileCommand),
    /// Run an enricher's logic on input given here, for people debugging data.
    #[command(subcommand)]
    Enrich(enrich::EnrichCommand),
    /// Segments in FilterQL.
    #[command(subcommand)]
    Segment(segment::SegmentCommand),
    /// Campaigns: state machines over each profile, in YAML or JSON.
    #[command(subcommand)]
    Campaign(campaign::CampaignCommand),
    /// Email templates the dispatcher renders.
    #[command(subcommand)]
    Template(template::TemplateCommand),
    /// Addresses kept from campaign emails (complaints, requests by hand).
    #[command(subcommand)]
    Suppression(suppression::SuppressionCommand),
    /// Rebuild identities and profiles from the raw events (after a rule change), with
    /// Cairn stopped.
    Rebuild(rebuild::RebuildArgs),
    /// List the services and what each serves.
    Modules,
    /// Print every configuration variable with its default and meaning.
    Config,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve { services } => process::serve(&services).await,
            Command::Up { demo } => dev::up(demo).await,
            Command::Send(args) => send::run(args).await,
            Command::Loadgen(args) => loadgen::run(args).await,
            Command::Bench(command) => bench::run(command).await,
            Command::Status => admin::status().await,
            Command::Profile(command) => profile::run(command).await,
            Command::Enrich(command) => enrich::run(command),
            Command::Segment(command) => segment::run(command).await,
            Command::Campaign(command) => campaign::run(command).await,
            Command::Template(command) => template::run(command).await,
            Command::Suppression(command) => suppression::run(command).await,
            Command::Rebuild(args) => rebuild::run(args).await,
            Command::Modules => modules::print(),
            Command::Config => process::print_config(),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {}", process::describe(&err));
            ExitCode::from(process::exit_code(&err))
        }
    }
}
