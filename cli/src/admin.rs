//! How the CLI's admin commands reach a running Cairn: gRPC at `CAIRN_GRPC_ADDR` with
//! the bearer token from `CAIRN_TOKEN`, or the development token `cairn up` wrote into
//! the data directory. With `CAIRN_TLS_CA` set, over TLS, trusting that CA.

use anyhow::Context as _;
use cairn_proto::admin::v1::StatusRequest;
use cairn_proto::admin::v1::admin_client::AdminClient;
use cairn_runtime::host::{DATA_DIR, GRPC_ADDR};
use cairn_runtime::{Settings, Var};
use tonic::transport::Channel;

use crate::dev::{DEV_ADMIN_TOKEN_FILE, read_dev_secret};
use crate::modules;
use crate::process::UsageError;

pub const TOKEN: Var = Var {
    name: "CAIRN_TOKEN",
    default: "",
    doc: "Bearer token the CLI's admin commands (`cairn status`, ...) send to CAIRN_GRPC_ADDR; without it they use the development token `cairn up` wrote into the data directory.",
};

/// A connection to a running Cairn and the token to present.
pub struct AdminConnection {
    pub channel: Channel,
    token: String,
    pub addr: String,
}

impl AdminConnection {
    pub async fn open(settings: &Settings) -> anyhow::Result<Self> {
        let token = match settings.optional(&TOKEN) {
            Some(token) => token,
            None => {
                let data_dir = settings.path(&DATA_DIR);
                read_dev_secret(&data_dir, DEV_ADMIN_TOKEN_FILE).ok_or_else(|| {
                    UsageError(format!(
                        "no token: set CAIRN_TOKEN, or run `cairn up` first (it writes {})",
                        data_dir.join(DEV_ADMIN_TOKEN_FILE).display()
                    ))
                })?
            }
        };
        let addr = settings.string(&GRPC_ADDR);
        let endpoint = cairn_runtime::grpc::client_endpoint(settings, &GRPC_ADDR, &addr)?;
        let channel = endpoint.connect().await.with_context(|| {
            format!("cannot reach Cairn's gRPC API at {addr} (CAIRN_GRPC_ADDR); is it running?")
        })?;
        Ok(Self {
            channel,
            token,
            addr,
        })
    }

    /// `message` as a request carrying the bearer token.
    pub fn request<T>(&self, message: T) -> anyhow::Result<tonic::Request<T>> {
        let mut request = tonic::Request::new(message);
        let value = format!("Bearer {}", self.token).parse().map_err(|_| {
            UsageError("CAIRN_TOKEN contains characters a header cannot carry".into())
        })?;
        request.metadata_mut().insert("authorization", value);
        Ok(request)
    }
}

/// Turns a refused call into a message that says what to do.
pub fn explain(status: tonic::Status) -> anyhow::Error {
    match status.code() {
        tonic::Code::Unauthenticated => anyhow::anyhow!(
            "the server refused the token (CAIRN_TOKEN): {}",
            status.message()
        ),
        tonic::Code::PermissionDenied => {
            anyhow::anyhow!("the token lacks the role for this: {}", status.message())
        }
        _ => anyhow::anyhow!("{}: {}", status.code(), status.message()),
    }
}

/// `cairn status`: what the process at CAIRN_GRPC_ADDR runs and whether it is ready.
pub async fn status() -> anyhow::Result<()> {
    let settings = Settings::from_env(&modules::all_vars())?;
    let connection = AdminConnection::open(&settings).await?;
    let status = AdminClient::new(connection.channel.clone())
        .status(connection.request(StatusRequest {})?)
        .await
        .map_err(explain)?
        .into_inner();
    println!("cairn {} at {}", status.version, connection.addr);
    println!("  modules: {}", status.modules.join(", "));
    if status.ready {
        println!("  ready");
        Ok(())
    } else {
        println!("  not ready: {}", status.not_ready_reasons.join("; "));
        anyhow::bail!("not ready")
    }
}
