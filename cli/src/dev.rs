//! `cairn up`: the whole mesh in one process for local use. Starts a nats-server with
//! JetStream under the data directory when none answers at `CAIRN_NATS_URL`, and
//! creates development credentials when none are configured.

use std::net::{SocketAddr, ToSocketAddrs as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use cairn_bus::config::NATS_URL;
use cairn_bus::server::{NATS_SERVER, NatsServer, find_binary};
use cairn_runtime::Settings;
use cairn_runtime::auth::{ADMIN_TOKENS, WRITE_KEYS};
use cairn_runtime::host::{ADMIN_ADDR, DATA_DIR, GRPC_ADDR, HTTP_ADDR};
use rand::Rng as _;

use crate::modules::{self, MODULES};
use crate::process::{self, UsageError};

/// The development write key file, under the data directory.
pub const DEV_WRITE_KEY_FILE: &str = "dev-write-key";
/// The development admin token file, under the data directory.
pub const DEV_ADMIN_TOKEN_FILE: &str = "dev-admin-token";
/// The development secret of unsubscribe links, under the data directory.
pub const DEV_LINK_SECRET_FILE: &str = "dev-email-link-secret";

pub async fn up(demo: bool) -> anyhow::Result<()> {
    let mut settings = Settings::from_env(&modules::all_vars())?;
    let data_dir = settings.path(&DATA_DIR);
    std::fs::create_dir_all(&data_dir).with_context(|| {
        format!(
            "cannot create the data directory {} (CAIRN_DATA_DIR)",
            data_dir.display()
        )
    })?;

    let nats = ensure_nats(&settings, &data_dir).await?;

    let write_key = match settings.optional(&WRITE_KEYS) {
        Some(_) => None,
        None => {
            let key = dev_secret(&data_dir.join(DEV_WRITE_KEY_FILE), "wk_")?;
            settings.set(&WRITE_KEYS, format!("dev:{key}"));
            Some(key)
        }
    };
    if settings.optional(&ADMIN_TOKENS).is_none() {
        let token = dev_secret(&data_dir.join(DEV_ADMIN_TOKEN_FILE), "tk_")?;
        settings.set(&ADMIN_TOKENS, format!("admin:{token}"));
    }
    if settings
        .optional(&cairn_bus::suppressions::LINK_SECRET)
        .is_none()
    {
        let secret = dev_secret(&data_dir.join(DEV_LINK_SECRET_FILE), "ls_")?;
        settings.set(&cairn_bus::suppressions::LINK_SECRET, secret);
    }

    if demo && !settings.is_set(&cairn_dispatcher::config::EMAIL_QUIET_HOURS) {
        // Demo emails go out whatever the hour.
        settings.set(
            &cairn_dispatcher::config::EMAIL_QUIET_HOURS,
            "off".to_string(),
        );
    }
    let http = settings.string(&HTTP_ADDR);
    println!("Cairn is starting: {}", modules::names().join(", "));
    println!("  HTTP   http://{http}   (Segment-spec API: POST /v1/track, /v1/batch, ...)");
    println!("  console http://{http}/console/   (sign in with an admin token)");
    println!("  gRPC   {}", settings.string(&GRPC_ADDR));
    println!(
        "  admin  http://{}/metrics /healthz /readyz",
        settings.string(&ADMIN_ADDR)
    );
    println!("  data   {}", data_dir.display());
    if let Some(key) = &write_key {
        println!(
            "  development write key: {key}   (source \"dev\"; set CAIRN_WRITE_KEYS for your own)"
        );
        let me = std::env::args()
            .next()
            .unwrap_or_else(|| "cairn".to_string());
        println!("  try:   {me} send --event \"Hello\"     or");
        println!(
            "          curl -u {key}: http://{http}/v1/track -d '{{\"userId\":\"u1\",\"event\":\"Hello\"}}'"
        );
    }
    println!(
        "  development admin token: in {}",
        data_dir.join(DEV_ADMIN_TOKEN_FILE).display()
    );
    if demo {
        let key = crate::send::write_key(&settings)?;
        tokio::spawn(crate::demo::run(settings.clone(), key));
        println!(
            "  demo:  emails land in {} (quiet hours off)",
            data_dir.join("outbox").display()
        );
    }
    let specs: Vec<_> = MODULES.iter().collect();
    let result = process::run(&specs, settings, "cairn").await;
    // NATS goes last, once every module has drained.
    if let Some(mut nats) = nats {
        nats.stop().await;
    }
    result
}

/// Returns a nats-server this process started, or `None` when one already answers.
pub async fn ensure_nats(
    settings: &Settings,
    data_dir: &Path,
) -> anyhow::Result<Option<NatsServer>> {
    let url = settings.string(&NATS_URL);
    let probe = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(1))
        .connect(url.as_str());
    let shown = cairn_bus::config::redact_url(&url);
    if let Ok(Ok(_client)) = tokio::time::timeout(Duration::from_secs(2), probe).await {
        println!("Using the NATS server at {shown}");
        return Ok(None);
    }
    let addr = local_addr_of(&url).ok_or_else(|| {
        UsageError(format!(
            "no NATS server answers at {shown} (CAIRN_NATS_URL), and it is not a local address where `cairn up` could start one"
        ))
    })?;
    let binary = find_binary(
        settings
            .optional(&NATS_SERVER)
            .map(PathBuf::from)
            .as_deref(),
    )?;
    let store = data_dir.join("nats");
    let log = store.join("nats-server.log");
    println!(
        "Starting nats-server on {addr} (data and log in {})",
        store.display()
    );
    let server = NatsServer::start(&binary, addr, &store, Some(&log)).await?;
    Ok(Some(server))
}

/// The socket address of a `nats://host:port` URL when it is on this machine.
fn local_addr_of(url: &str) -> Option<SocketAddr> {
    if url.contains(',') {
        return None;
    }
    let host_port = url.trim().trim_start_matches("nats://");
    let host_port = host_port.rsplit('@').next()?;
    let host_port = if host_port.contains(':') {
        host_port.to_string()
    } else {
        format!("{host_port}:4222")
    };
    host_port
        .to_socket_addrs()
        .ok()?
        .find(|addr| addr.ip().is_loopback())
}

/// Reads the secret in `path`, creating it (random, owner-only) when absent.
fn dev_secret(path: &PathBuf, prefix: &str) -> anyhow::Result<String> {
    if let Ok(existing) = std::fs::read_to_string(path) {
        let existing = existing.trim().to_string();
        if !existing.is_empty() {
            return Ok(existing);
        }
    }
    let bytes: [u8; 16] = rand::rng().random();
    let secret = format!("{prefix}{}", cairn_runtime::encoding::hex(&bytes));
    write_private(path, &secret).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(secret)
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    writeln!(file, "{text}")
}

/// The development secret stored in the data directory, if `cairn up` wrote one.
pub fn read_dev_secret(data_dir: &Path, file: &str) -> Option<String> {
    std::fs::read_to_string(data_dir.join(file))
        .ok()
        .map(|text| text.trim().to_string())
        .filter(|text| !text.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_urls_are_recognised() {
        assert_eq!(
            local_addr_of("nats://127.0.0.1:4222"),
            Some("127.0.0.1:4222".parse().unwrap())
        );
        assert_eq!(
            local_addr_of("nats://127.0.0.1"),
            Some("127.0.0.1:4222".parse().unwrap())
        );
        assert_eq!(local_addr_of("nats://10.1.2.3:4222"), None);
        assert_eq!(local_addr_of("nats://a:4222,nats://b:4222"), None);
    }
}
