//! A real SMTP server for tests: aiosmtpd (from PyPI, which `./dev test` installs into
//! `.cairn/tools/python`) running `smtp_server.py`, which writes every email it accepts
//! into a folder and scripts its answers by recipient: `defer-…@` is deferred (451) once
//! per Message-ID, `busy-…@` always, `reject-…@` refused (550).

use std::path::PathBuf;
use std::time::Duration;

/// aiosmtpd on a free port, writing what it accepts into a folder.
pub struct SmtpServer {
    pub port: u16,
    inbox: tempfile::TempDir,
    _process: tokio::process::Child,
}

impl SmtpServer {
    /// `None` when aiosmtpd is not installed (and this is not CI, where it must be).
    pub async fn start() -> Option<Self> {
        let tools = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.cairn/tools/python");
        if !tools.join("aiosmtpd").exists() {
            assert!(
                std::env::var("CI").is_err(),
                "no aiosmtpd under CI: ./dev test installs it into .cairn/tools/python"
            );
            eprintln!("SKIPPED: aiosmtpd is not installed (./dev test installs it)");
            return None;
        }
        let port = crate::free_addr().port();
        let inbox = tempfile::tempdir().unwrap();
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("smtp_server.py");
        let mut process = tokio::process::Command::new("python3")
            .arg(script)
            .arg(port.to_string())
            .arg(inbox.path())
            .env("PYTHONPATH", &tools)
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 runs");
        let stdout = process.stdout.take().unwrap();
        let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
        let ready = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .expect("aiosmtpd started within 20 s")
            .unwrap();
        assert_eq!(ready.as_deref(), Some("ready"));
        Some(Self {
            port,
            inbox,
            _process: process,
        })
    }

    /// Where the dispatcher reaches it (`CAIRN_SMTP_URL`).
    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    /// How many emails it has accepted so far.
    pub fn received_count(&self) -> usize {
        std::fs::read_dir(self.inbox.path())
            .unwrap()
            .filter(|entry| {
                entry
                    .as_ref()
                    .is_ok_and(|entry| entry.path().extension().is_some_and(|ext| ext == "eml"))
            })
            .count()
    }

    /// The emails accepted so far, as text.
    pub fn received(&self) -> Vec<String> {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(self.inbox.path())
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .filter(|path| path.extension().is_some_and(|ext| ext == "eml"))
            .collect();
        paths.sort();
        paths
            .into_iter()
            .map(|path| std::fs::read_to_string(path).unwrap())
            .collect()
    }
}
