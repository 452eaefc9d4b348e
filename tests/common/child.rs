//! A `virtualfit serve` child process on 127.0.0.1, killed on drop: its addresses (read from its
//! JSON log), its log lines, its peak memory, SIGTERM and exit.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Log lines kept per child (the first ones; enough for any test's assertions).
const KEPT_LOG_LINES: usize = 20_000;

pub struct ChildServer {
    child: Child,
    /// `http://127.0.0.1:PORT` of the API.
    pub base: String,
    /// `http://127.0.0.1:PORT` of the metrics port, when `--metrics-bind` was given.
    pub metrics_base: Option<String>,
    logs: Arc<Mutex<Vec<String>>>,
}

impl ChildServer {
    /// Starts `virtualfit serve --bind 127.0.0.1:0 --log-format json EXTRA…` and waits for its
    /// addresses (not for readiness: see [`ChildServer::wait_ready`]).
    pub fn start(extra: &[&str]) -> Self {
        Self::start_with_open_files(extra, None)
    }

    /// The same, with the child's open-files limit set to `open_files` (soft and hard).
    pub fn start_with_open_files(extra: &[&str], open_files: Option<u64>) -> Self {
        let bin = env!("CARGO_BIN_EXE_virtualfit");
        let mut command = match open_files {
            Some(n) => {
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg(format!("ulimit -n {n} && exec \"$0\" \"$@\""))
                    .arg(bin);
                c
            }
            None => Command::new(bin),
        };
        command.args(["serve", "--bind", "127.0.0.1:0", "--log-format", "json"]);
        // Each server keeps its jobs in its own folder, unless the test names one.
        if !extra.contains(&"--data-dir") {
            command.arg("--data-dir").arg(super::fresh_data_dir());
        }
        command
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = command.spawn().expect("the binary starts");
        let wants_metrics = extra.contains(&"--metrics-bind");
        let stdout = child.stdout.take().expect("stdout");
        let logs: Arc<Mutex<Vec<String>>> = Arc::default();
        let (tx, rx) = std::sync::mpsc::channel();
        let kept = logs.clone();
        std::thread::spawn(move || {
            let (mut addr, mut metrics) = (None, None);
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                    let found = v["addr"].as_str().map(str::to_string);
                    match v["message"].as_str() {
                        Some("listening") => addr = found,
                        Some("metrics listening") => metrics = found,
                        _ => {}
                    }
                    if let Some(a) = &addr {
                        if !wants_metrics || metrics.is_some() {
                            let _ = tx.send((a.clone(), metrics.clone()));
                            addr = None;
                        }
                    }
                }
                let mut kept = kept.lock().unwrap_or_else(|p| p.into_inner());
                if kept.len() < KEPT_LOG_LINES {
                    kept.push(line);
                }
            }
        });
        let (addr, metrics) = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the server logs its addresses");
        ChildServer {
            child,
            base: format!("http://{addr}"),
            metrics_base: metrics.map(|m| format!("http://{m}")),
            logs,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `host:port` of the API.
    pub fn addr(&self) -> &str {
        self.base.trim_start_matches("http://")
    }

    /// Waits (at most a minute) until `/readyz` answers 200.
    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let client = super::client();
        while Instant::now() < deadline {
            if let Ok(r) = client.get(format!("{}/readyz", self.base)).send().await {
                if r.status() == 200 {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the server never became ready");
    }

    /// The log lines so far.
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The process's peak resident memory so far (`VmHWM`), in bytes.
    pub fn peak_rss_bytes(&self) -> u64 {
        self.status_kib("VmHWM:") * 1024
    }

    /// The process's resident memory now (`VmRSS`), in bytes.
    pub fn rss_bytes(&self) -> u64 {
        self.status_kib("VmRSS:") * 1024
    }

    fn status_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("/proc/PID/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {field} in /proc/PID/status"))
    }

    pub fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
    }

    /// SIGKILL: the process dies at once, with nothing cleaned up.
    pub fn kill(&mut self) {
        self.child.kill().expect("SIGKILL");
    }

    /// Waits for the process to exit, at most `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
