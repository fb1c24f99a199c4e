//! What the tests of the `cairn` binary share: running it as a user or Kubernetes would.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod mesh;

use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt as _;
use tokio::process::{Child, Command};

/// The binary, with a clean environment (only PATH) and quiet logs.
pub fn cairn() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_cairn"));
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("CAIRN_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// Waits for the exit and returns the status code with what it printed on stderr.
pub async fn exit_of(child: &mut Child) -> (Option<i32>, String) {
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("exited within 30s")
        .unwrap();
    (status.code(), stderr_of(child).await)
}

/// What `child` printed on stderr, once it has exited (nothing when the caller took
/// the pipe to read it as it came).
pub async fn stderr_of(child: &mut Child) -> String {
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        pipe.read_to_string(&mut stderr).await.unwrap();
    }
    stderr
}

/// What the exited `child` printed on stdout.
pub async fn stdout_of(child: &mut Child) -> String {
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .await
        .unwrap();
    stdout
}

pub async fn output(command: &mut Command) -> (i32, String, String) {
    let output = command.output().await.unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).to_string(),
        String::from_utf8_lossy(&output.stderr).to_string(),
    )
}

pub fn sigterm(child: &Child) {
    let pid = nix::unistd::Pid::from_raw(child.id().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
}

pub async fn wait_ready(admin: std::net::SocketAddr, child: &mut Child) {
    if let Some(status) = ready_or_exited(admin, child).await {
        let stderr = stderr_of(child).await;
        panic!("cairn exited with {status} before becoming ready: {stderr}");
    }
}

/// Waits until the process answers ready on `admin` (`None`), or exits first (its
/// status). Fails after 30 s.
pub async fn ready_or_exited(
    admin: std::net::SocketAddr,
    child: &mut Child,
) -> Option<std::process::ExitStatus> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(response) = reqwest::get(format!("http://{admin}/readyz")).await
            && response.status() == 200
        {
            return None;
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        assert!(tokio::time::Instant::now() < deadline, "not ready in 30s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
