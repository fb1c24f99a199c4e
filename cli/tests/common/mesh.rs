//! The mesh as a cluster runs it: nats-server, each service its own `cairn serve`
//! process, an SMTP server; processes can be killed and started again on their data.
//!
//! The profile store, the segmenter and the dispatcher share one process: on the
//! embedded store they read the same directory (the segmenter and the dispatcher read
//! profiles), which one process at a time may open; on ScyllaDB they are three.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use cairn_testkit::smtp::SmtpServer;
use cairn_testkit::{TestNats, free_addr};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::process::Child;
use tokio::task::JoinHandle;

use super::{cairn, output, ready_or_exited, sigterm};

/// The cart reminder: an email 3 s after the last add_to_cart, unless the order came.
pub const CART: &str = r#"
name: cart_recovery
audience: "EXISTS email"
transitions:
  - {from: start, to: carting, event: add_to_cart}
  - {from: carting, to: bought, event: Order Completed}
  - {from: carting, to: abandoned, after: 3s, without: add_to_cart}
actions:
  abandoned:
    - {channel: email, template: cart_reminder}
"#;

pub const WRITE_KEY: &str = "wk_e2e";
pub const ADMIN_TOKEN: &str = "tk_e2e";

/// The processes, as Deployments would run them.
pub const PROCESSES: &[&[&str]] = &[
    &["collector"],
    &["identity"],
    &["enrich-geo"],
    &["enrich-device"],
    &["enrich-activity"],
    &["enrich-content"],
    &["profile-store", "segmenter", "dispatcher"],
];

/// One `cairn serve` process and how to start it again.
struct Process {
    name: String,
    services: &'static [&'static str],
    env: Vec<(String, String)>,
    admin: SocketAddr,
    child: Child,
    /// Standard error of every run so far, each read as it comes so no pipe fills.
    logs: Vec<JoinHandle<String>>,
    _data: tempfile::TempDir,
}

impl Process {
    fn grpc(&self) -> SocketAddr {
        self.env
            .iter()
            .find(|(name, _)| name == "CAIRN_GRPC_ADDR")
            .and_then(|(_, value)| value.parse().ok())
            .expect("a gRPC address")
    }

    /// Waits until the process is ready. Its ports are picked before it starts, so a
    /// parallel test may take one first: a process that exits saying an address is in
    /// use starts again on fresh ones; any other exit fails with what it logged.
    async fn until_ready(&mut self) {
        for _ in 0..3 {
            let Some(status) = ready_or_exited(self.admin, &mut self.child).await else {
                return;
            };
            let log = match self.logs.pop() {
                Some(run) => run.await.unwrap_or_default(),
                None => String::new(),
            };
            assert!(
                log.contains("in use"),
                "{} exited with {status} before becoming ready:\n{log}",
                self.name
            );
            let (grpc, admin) = (free_addr(), free_addr());
            for (name, value) in &mut self.env {
                match name.as_str() {
                    "CAIRN_GRPC_ADDR" => *value = grpc.to_string(),
                    "CAIRN_ADMIN_ADDR" => *value = admin.to_string(),
                    _ => {}
                }
            }
            self.admin = admin;
            let (child, log) = Process::spawn(self.services, &self.env);
            self.child = child;
            self.logs.push(log);
        }
        panic!("{}: no free addresses in three tries", self.name);
    }

    fn spawn(services: &[&str], env: &[(String, String)]) -> (Child, JoinHandle<String>) {
        let mut command = cairn();
        command.arg("serve").args(services);
        command.envs(env.iter().map(|(name, value)| (name, value)));
        let mut child = command.spawn().unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let log = tokio::spawn(async move {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text).await;
            text
        });
        (child, log)
    }
}

pub struct Mesh {
    pub nats: TestNats,
    pub smtp: SmtpServer,
    pub http: SocketAddr,
    /// The gRPC address of the process with the profile store, segmenter and dispatcher.
    pub core_grpc: SocketAddr,
    pub core_admin: SocketAddr,
    processes: Vec<Process>,
}

impl Mesh {
    /// Starts every process with `extra` settings and waits until each is ready; `None`
    /// without aiosmtpd.
    pub async fn start(extra: &[(&str, &str)]) -> Option<Mesh> {
        Self::start_on(TestNats::start().await, extra).await
    }

    /// [`Mesh::start`] on `nats` (a cluster, say).
    pub async fn start_on(nats: TestNats, extra: &[(&str, &str)]) -> Option<Mesh> {
        let smtp = SmtpServer::start().await?;
        let http = free_addr();
        let geo = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../testdata/geo/GeoIP2-City-Test.mmdb")
            .display()
            .to_string();
        let mut shared: Vec<(String, String)> = [
            ("CAIRN_NATS_URL", nats.url()),
            ("CAIRN_WRITE_KEYS", format!("web:{WRITE_KEY}")),
            ("CAIRN_ADMIN_TOKENS", format!("admin:{ADMIN_TOKEN}")),
            (
                "CAIRN_EMAIL_LINK_SECRET",
                "e2e-link-secret-0123456789".into(),
            ),
            ("CAIRN_EMAIL_TRANSPORT", "smtp".into()),
            ("CAIRN_SMTP_URL", smtp.url()),
            ("CAIRN_EMAIL_QUIET_HOURS", "off".into()),
            ("CAIRN_PUBLIC_URL", format!("http://{http}")),
            ("CAIRN_GEO_DATABASES", geo),
            ("CAIRN_HTTP_ADDR", http.to_string()),
            // Everything Cairn says about itself, to check that it names no one.
            (
                "CAIRN_LOG",
                "debug,fjall=warn,lsm_tree=warn,h2=info,hyper=info".into(),
            ),
        ]
        .into_iter()
        .map(|(name, value)| (name.to_string(), value))
        .collect();
        shared.extend(
            extra
                .iter()
                .map(|(name, value)| (name.to_string(), value.to_string())),
        );
        let mut processes = Vec::new();
        for services in PROCESSES {
            let dir = tempfile::tempdir().unwrap();
            let (grpc, admin) = (free_addr(), free_addr());
            let mut env = shared.clone();
            env.extend([
                ("CAIRN_GRPC_ADDR".to_string(), grpc.to_string()),
                ("CAIRN_ADMIN_ADDR".to_string(), admin.to_string()),
                (
                    "CAIRN_DATA_DIR".to_string(),
                    dir.path().display().to_string(),
                ),
            ]);
            let (child, log) = Process::spawn(services, &env);
            processes.push(Process {
                name: services.join("+"),
                services,
                env,
                admin,
                child,
                logs: vec![log],
                _data: dir,
            });
        }
        for process in &mut processes {
            process.until_ready().await;
        }
        let core = processes
            .iter()
            .find(|process| process.services.contains(&"dispatcher"))
            .expect("a process with the dispatcher");
        let (core_grpc, core_admin) = (core.grpc(), core.admin);
        Some(Mesh {
            nats,
            smtp,
            http,
            core_grpc,
            core_admin,
            processes,
        })
    }

    /// The names of the processes (`collector`, ..., `profile-store+segmenter+dispatcher`).
    pub fn process_names(&self) -> Vec<String> {
        self.processes
            .iter()
            .map(|process| process.name.clone())
            .collect()
    }

    /// SIGKILLs the process `name` and starts it again on the same data and ports.
    pub async fn kill_and_restart(&mut self, name: &str) {
        let process = self
            .processes
            .iter_mut()
            .find(|process| process.name == name)
            .unwrap_or_else(|| panic!("no process {name}"));
        process.child.start_kill().unwrap();
        process.child.wait().await.unwrap();
        let (child, log) = Process::spawn(process.services, &process.env);
        process.child = child;
        process.logs.push(log);
        process.until_ready().await;
        if process.services.contains(&"dispatcher") {
            self.core_admin = process.admin;
            self.core_grpc = process.grpc();
        }
    }

    /// Saves the `cart_reminder` template the [`CART`] campaign sends, through the CLI.
    pub async fn put_cart_reminder_template(&self) {
        let dir = tempfile::tempdir().unwrap();
        let text = dir.path().join("reminder.txt");
        std::fs::write(&text, "Your cart is waiting for you.").unwrap();
        let args = [
            "template",
            "put",
            "cart_reminder",
            "--subject",
            "Still thinking it over?",
            "--text",
            text.to_str().unwrap(),
        ];
        self.cli(&args, None).await;
    }

    /// Runs the CLI against the mesh; its standard output, or the failure.
    pub async fn cli(&self, args: &[&str], stdin: Option<&str>) -> String {
        let mut command = cairn();
        command
            .args(args)
            .env("CAIRN_GRPC_ADDR", self.core_grpc.to_string())
            .env("CAIRN_TOKEN", ADMIN_TOKEN)
            .env("CAIRN_HTTP_ADDR", self.http.to_string());
        let (code, stdout, stderr) = match stdin {
            None => output(&mut command).await,
            Some(text) => {
                command.stdin(std::process::Stdio::piped());
                let mut child = command.spawn().unwrap();
                let mut pipe = child.stdin.take().unwrap();
                pipe.write_all(text.as_bytes()).await.unwrap();
                drop(pipe);
                let done = child.wait_with_output().await.unwrap();
                (
                    done.status.code().unwrap_or(-1),
                    String::from_utf8_lossy(&done.stdout).to_string(),
                    String::from_utf8_lossy(&done.stderr).to_string(),
                )
            }
        };
        assert_eq!(code, 0, "cairn {args:?}: {stderr}");
        stdout
    }

    /// Posts a Segment batch to the collector, as a site's SDK does.
    pub async fn send(&self, batch: Value) {
        let response = reqwest::Client::new()
            .post(format!("http://{}/v1/batch", self.http))
            .basic_auth(WRITE_KEY, Some(""))
            .json(&json!({ "batch": batch }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    }

    /// What the site shows the visitor `query` names (`anonymousId=...`), as the
    /// browser asks for it.
    pub async fn shown(&self, query: &str) -> Value {
        let response = reqwest::get(format!(
            "http://{}/v1/personalize?writeKey={WRITE_KEY}&{query}",
            self.http
        ))
        .await
        .unwrap();
        assert_eq!(response.status(), 200);
        response.json().await.unwrap()
    }

    /// Waits until the content shown to `query`'s visitor satisfies `done`.
    pub async fn shown_when(&self, query: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let answer = self.shown(query).await;
            if done(&answer) {
                return answer;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{query}: after 30 s shown {answer}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The profile `args` finds (`--email x`, `--anonymous-id y`), once `done` holds.
    pub async fn profile_when(&self, args: &[&str], done: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let mut command = cairn();
            command
                .args(["profile", "get"])
                .args(args)
                .env("CAIRN_GRPC_ADDR", self.core_grpc.to_string())
                .env("CAIRN_TOKEN", ADMIN_TOKEN);
            let (code, stdout, stderr) = output(&mut command).await;
            if code == 0 {
                let profile: Value = serde_json::from_str(&stdout).unwrap();
                if done(&profile) {
                    return profile;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{args:?}: after 30 s {profile}"
                );
            } else {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{args:?}: after 30 s {stderr}"
                );
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// The emails the SMTP server took, for `to`.
    pub fn emails_to(&self, to: &str) -> Vec<String> {
        self.smtp
            .received()
            .into_iter()
            .filter(|email| header(email, "To").as_deref() == Some(to))
            .collect()
    }

    /// A counter of the dispatcher's Prometheus metrics.
    pub async fn emails_counted(&self, outcome: &str) -> u64 {
        let text = reqwest::get(format!("http://{}/metrics", self.core_admin))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .filter(|line| {
                line.starts_with("cairn_dispatcher_emails_total")
                    && line.contains(&format!("outcome=\"{outcome}\""))
            })
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    }

    /// Stops every process; what each logged over all its runs, by process name.
    pub async fn stop(self) -> Vec<(String, String)> {
        for process in &self.processes {
            sigterm(&process.child);
        }
        let mut logs = Vec::new();
        for mut process in self.processes {
            let status = tokio::time::timeout(Duration::from_secs(30), process.child.wait())
                .await
                .expect("exited within 30s")
                .unwrap();
            let mut log = String::new();
            for run in process.logs {
                log.push_str(&run.await.unwrap());
            }
            assert_eq!(status.code(), Some(0), "{}: {log}", process.name);
            logs.push((process.name, log));
        }
        logs
    }
}

/// A header of `email`, its folded lines joined.
pub fn header(email: &str, name: &str) -> Option<String> {
    let head = email.split("\r\n\r\n").next()?.split("\n\n").next()?;
    let unfolded = head
        .replace("\r\n", "\n")
        .replace("\n ", " ")
        .replace("\n\t", " ");
    unfolded
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{name}: ")))
        .map(|value| value.trim().to_string())
}
