//! The Helm chart against the binary: every workload charts/cairn renders is started here
//! with the command, ports and environment the chart gives it, and probed the way its
//! readiness, liveness and startup probes say; the consumers its KEDA triggers watch must
//! exist under those names once the service runs. (charts/check.py checks the chart
//! itself: lint, schemas, how the objects fit together.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use cairn_testkit::{TestNats, free_addr};
use serde_json::Value;
use tokio::process::{Child, Command};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The objects the chart renders with `values` (a file under charts/cairn/ci), or `None`
/// when helm-python-sdk is not installed (and this is not CI, where it must be).
fn rendered(values: &str) -> Option<Vec<Value>> {
    let tools = repo().join(".cairn/tools/helm");
    if !tools.join("helm_python").exists() {
        assert!(
            std::env::var("CI").is_err(),
            "no helm-python-sdk under CI: ./dev test installs it into .cairn/tools/helm"
        );
        eprintln!("SKIPPED: helm-python-sdk is not installed (./dev test installs it)");
        return None;
    }
    let output = std::process::Command::new("python3")
        .arg(repo().join("charts/check.py"))
        .arg("render")
        .arg(repo().join("charts/cairn/ci").join(values))
        .env("PYTHONPATH", &tools)
        .output()
        .expect("python3 runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    Some(serde_json::from_slice(&output.stdout).unwrap())
}

fn of_kind<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

fn name(object: &Value) -> &str {
    object["metadata"]["name"].as_str().unwrap()
}

/// One rendered workload, started as the chart says, on local ports.
struct Started {
    name: String,
    child: Child,
    /// The chart's container ports (by name and by number) → where this process listens.
    ports: BTreeMap<String, SocketAddr>,
    container: Value,
    _data: tempfile::TempDir,
}

/// Starts `workload` with its args and environment (its ConfigMap, its literal env, test
/// secrets), moved to free local ports, a local NATS and the embedded store.
fn start(workload: &Value, config: &Value, nats: &TestNats) -> Started {
    let spec = &workload["spec"]["template"]["spec"];
    let container = spec["containers"][0].clone();
    let mut env: BTreeMap<String, String> = config["data"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(key, value)| (key.clone(), value.as_str().unwrap().to_string()))
        .collect();
    for var in container["env"].as_array().unwrap() {
        let key = var["name"].as_str().unwrap().to_string();
        if let Some(value) = var["value"].as_str() {
            env.insert(key, value.to_string());
        } else {
            assert_eq!(
                var["valueFrom"]["secretKeyRef"]["key"],
                key,
                "{}: secret keys are the variable names",
                name(workload)
            );
        }
    }

    // The listeners the configuration names are the container's ports.
    let mut ports = BTreeMap::new();
    for port in container["ports"].as_array().unwrap() {
        let (port_name, number) = (
            port["name"].as_str().unwrap(),
            port["containerPort"].as_u64().unwrap(),
        );
        let var = match port_name {
            "http" => "CAIRN_HTTP_ADDR",
            "grpc" => "CAIRN_GRPC_ADDR",
            "admin" => "CAIRN_ADMIN_ADDR",
            other => panic!("{}: unknown port {other}", name(workload)),
        };
        assert_eq!(
            env[var],
            format!("0.0.0.0:{number}"),
            "{}: {var} and the {port_name} port",
            name(workload)
        );
        let local = free_addr();
        env.insert(var.to_string(), local.to_string());
        ports.insert(port_name.to_string(), local);
        ports.insert(number.to_string(), local);
    }

    // What this machine has instead of the cluster's: NATS, the store, secrets.
    let data = tempfile::tempdir().unwrap();
    env.retain(|key, _| !key.starts_with("CAIRN_SCYLLA") && !key.starts_with("OTEL_"));
    for (key, value) in [
        ("CAIRN_NATS_URL", nats.url()),
        ("CAIRN_STREAM_REPLICAS", "1".to_string()),
        ("CAIRN_STORE", "embedded".to_string()),
        ("CAIRN_DATA_DIR", data.path().display().to_string()),
        ("CAIRN_EMAIL_TRANSPORT", "file".to_string()),
        ("CAIRN_LOG", "warn".to_string()),
        ("CAIRN_LOG_FORMAT", "text".to_string()),
        ("CAIRN_WRITE_KEYS", "web:wk_chart_test".to_string()),
        ("CAIRN_ADMIN_TOKENS", "admin:tk_chart_test".to_string()),
    ] {
        env.insert(key.to_string(), value);
    }

    let args: Vec<String> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|arg| arg.as_str().unwrap().to_string())
        .collect();
    let child = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(&args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(&env)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    Started {
        name: name(workload).to_string(),
        child,
        ports,
        container,
        _data: data,
    }
}

impl Started {
    fn port(&self, port: &Value) -> SocketAddr {
        let key = match port {
            Value::String(name) => name.clone(),
            other => other.to_string(),
        };
        *self.ports.get(&key).unwrap_or_else(|| {
            panic!(
                "{}: a probe names port {key}, not a container port",
                self.name
            )
        })
    }

    /// Whether `probe` (a Kubernetes probe) succeeds now.
    async fn probe(&self, probe: &Value) -> bool {
        if let Some(http) = probe.get("httpGet") {
            let addr = self.port(&http["port"]);
            let url = format!("http://{addr}{}", http["path"].as_str().unwrap());
            return matches!(reqwest::get(url).await, Ok(response) if response.status() == 200);
        }
        if let Some(grpc) = probe.get("grpc") {
            let addr = self.port(&grpc["port"]);
            let Ok(channel) = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                .unwrap()
                .connect()
                .await
            else {
                return false;
            };
            let mut client = HealthClient::new(channel);
            let service = grpc["service"].as_str().unwrap_or_default().to_string();
            return matches!(
                client.check(HealthCheckRequest { service }).await,
                Ok(answer) if answer.get_ref().status == ServingStatus::Serving as i32
            );
        }
        panic!("{}: a probe of an unknown kind: {probe}", self.name);
    }

    /// Waits until every probe the chart gives the container succeeds.
    async fn wait_probes_pass(&mut self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
        for kind in ["startupProbe", "readinessProbe", "livenessProbe"] {
            let probe = self.container[kind].clone();
            assert!(!probe.is_null(), "{}: no {kind}", self.name);
            while !self.probe(&probe).await {
                if let Ok(Some(status)) = self.child.try_wait() {
                    let stderr = common::stderr_of(&mut self.child).await;
                    panic!("{} exited with {status}: {stderr}", self.name);
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{}: the {kind} {probe} fails after 90 s",
                    self.name
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    async fn stop(mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id().unwrap() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        let status = self.child.wait().await.unwrap();
        assert!(status.success(), "{} exited with {status}", self.name);
    }
}

/// Starts every workload `values` renders, probes it as the chart says, and checks that
/// the consumers of its ScaledObjects exist.
async fn check_workloads(values: &str, nats: &TestNats) -> Option<usize> {
    let objects = rendered(values)?;
    let config = *of_kind(&objects, "ConfigMap").first().expect("a ConfigMap");
    let mut workloads = of_kind(&objects, "Deployment");
    workloads.extend(of_kind(&objects, "StatefulSet"));
    assert!(!workloads.is_empty());
    let scaled = of_kind(&objects, "ScaledObject");
    let bus = nats.bus().await;

    let mut started: Vec<Started> = workloads
        .iter()
        .map(|workload| start(workload, config, nats))
        .collect();
    for process in &mut started {
        process.wait_probes_pass().await;
    }
    for object in &scaled {
        let target = object["spec"]["scaleTargetRef"]["name"].as_str().unwrap();
        assert!(
            workloads.iter().any(|w| name(w) == target),
            "{}: scales {target}, not rendered",
            name(object)
        );
        for trigger in object["spec"]["triggers"].as_array().unwrap() {
            if trigger["type"] != "nats-jetstream" {
                continue;
            }
            let stream = trigger["metadata"]["stream"].as_str().unwrap();
            let consumer = trigger["metadata"]["consumer"].as_str().unwrap();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            while bus.consumer_info(stream, consumer).await.unwrap().is_none() {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{target} has no consumer {consumer} on {stream}, which KEDA watches"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    let count = started.len();
    for process in started {
        process.stop().await;
    }
    Some(count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_service_serves_what_the_chart_probes_and_declares_the_consumers_keda_watches() {
    let nats = TestNats::start().await;
    let Some(count) = check_workloads("keda-values.yaml", &nats).await else {
        return;
    };
    assert_eq!(count, 10, "one Deployment per service");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_single_pod_on_the_embedded_store_serves_what_the_chart_probes() {
    let nats = TestNats::start().await;
    let Some(count) = check_workloads("embedded-values.yaml", &nats).await else {
        return;
    };
    assert_eq!(count, 1, "one StatefulSet with every service");
}

/// The variables `cairn config` lists, from the binary.
fn binary_variables() -> Vec<String> {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_cairn"))
        .arg("config")
        .output()
        .unwrap();
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .filter_map(|line| line.strip_prefix("| `"))
        .filter_map(|line| line.split('`').next())
        .map(str::to_string)
        .collect()
}

/// Every variable the binary reads is one the chart's values may set (`config`), a
/// secret, or one the chart sets itself; and the schema allows no variable the binary
/// does not read.
#[test]
fn the_values_schema_names_exactly_the_variables_the_binary_reads() {
    let Some(objects) = rendered("defaults-values.yaml") else {
        return;
    };
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("charts/cairn/values.schema.json")).unwrap(),
    )
    .unwrap();
    let names = |value: &Value| -> Vec<String> {
        value
            .as_array()
            .unwrap()
            .iter()
            .map(|name| name.as_str().unwrap().to_string())
            .collect()
    };
    let settable = names(&schema["properties"]["config"]["propertyNames"]["anyOf"][0]["enum"]);
    let secrets =
        names(&schema["properties"]["secrets"]["properties"]["values"]["propertyNames"]["enum"]);
    let mut set_by_chart: Vec<String> = of_kind(&objects, "ConfigMap")[0]["data"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    // Set per pod when their values are given, and read by the command line only.
    set_by_chart.extend(
        [
            "CAIRN_NATS_CREDS_FILE",
            "CAIRN_SCYLLA_TLS_CA",
            "CAIRN_TLS_CERT",
            "CAIRN_TLS_KEY",
            "CAIRN_TLS_CA",
            "CAIRN_CONSOLE_SEGMENTER_ADDR",
            "CAIRN_CONSOLE_PROFILE_STORE_ADDR",
            "CAIRN_CONSOLE_DISPATCHER_ADDR",
            "CAIRN_SCYLLA_DATACENTER",
            "CAIRN_STORE_FSYNC",
            "CAIRN_STORE_CACHE",
            "CAIRN_TOKEN",
            "CAIRN_NATS_SERVER",
            "CAIRN_CONFIG_FILE",
        ]
        .map(str::to_string),
    );
    let binary = binary_variables();
    for var in &binary {
        assert!(
            settable.contains(var) || secrets.contains(var) || set_by_chart.contains(var),
            "{var}: the chart can neither set it nor take it in `config`; add it to \
             config.propertyNames (and services' env) in charts/cairn/values.schema.json"
        );
    }
    for var in settable.iter().chain(&secrets) {
        assert!(
            binary.contains(var),
            "{var}: in the values schema, not read by cairn"
        );
    }
}

#[test]
fn the_chart_knows_every_service_the_binary_serves() {
    let Some(objects) = rendered("defaults-values.yaml") else {
        return;
    };
    let chart: Vec<String> = of_kind(&objects, "Deployment")
        .iter()
        .map(|workload| {
            workload["spec"]["template"]["spec"]["containers"][0]["args"][1]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_cairn"))
        .arg("modules")
        .output()
        .unwrap();
    let mut binary: Vec<String> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| line.split_whitespace().next().unwrap().to_string())
        .collect();
    let mut chart_sorted = chart.clone();
    chart_sorted.sort();
    binary.sort();
    assert_eq!(chart_sorted, binary);
}
