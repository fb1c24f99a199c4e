//! Where the console finds the services it drives.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use cairn_runtime::host::GRPC_ADDR;
use cairn_runtime::{ConfigError, Settings, Var};

pub const SEGMENTER_ADDR: Var = Var {
    name: "CAIRN_CONSOLE_SEGMENTER_ADDR",
    default: "",
    doc: "gRPC address (host:port) of the segmenter (segments, campaigns) the console calls; empty: this process's CAIRN_GRPC_ADDR.",
};
pub const PROFILE_STORE_ADDR: Var = Var {
    name: "CAIRN_CONSOLE_PROFILE_STORE_ADDR",
    default: "",
    doc: "gRPC address (host:port) of the profile store the console calls; empty: this process's CAIRN_GRPC_ADDR.",
};
pub const DISPATCHER_ADDR: Var = Var {
    name: "CAIRN_CONSOLE_DISPATCHER_ADDR",
    default: "",
    doc: "gRPC address (host:port) of the dispatcher (template previews) the console calls; empty: this process's CAIRN_GRPC_ADDR.",
};

pub const VARS: &[Var] = &[
    SEGMENTER_ADDR,
    PROFILE_STORE_ADDR,
    DISPATCHER_ADDR,
    cairn_runtime::tls::TLS_CA,
];

/// The services' gRPC endpoints, opened lazily: the console starts even while they
/// are still starting, and says so on each page that needs them.
#[derive(Debug, Clone)]
pub struct Endpoints {
    pub segmenter: tonic::transport::Channel,
    pub profile_store: tonic::transport::Channel,
    pub dispatcher: tonic::transport::Channel,
}

impl Endpoints {
    pub fn from_settings(settings: &Settings) -> Result<Self, ConfigError> {
        let own = own_address(settings)?;
        let channel = |var: &Var| -> Result<tonic::transport::Channel, ConfigError> {
            let addr = settings.optional(var).unwrap_or_else(|| own.clone());
            Ok(cairn_runtime::grpc::client_endpoint(settings, var, &addr)?.connect_lazy())
        };
        Ok(Self {
            segmenter: channel(&SEGMENTER_ADDR)?,
            profile_store: channel(&PROFILE_STORE_ADDR)?,
            dispatcher: channel(&DISPATCHER_ADDR)?,
        })
    }
}

/// This process's gRPC listener as a place to connect to: a wildcard address becomes
/// the loopback one.
fn own_address(settings: &Settings) -> Result<String, ConfigError> {
    let addr = settings.socket_addr(&GRPC_ADDR)?;
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    Ok(SocketAddr::new(ip, addr.port()).to_string())
}
