//! The server under load: spawned by the tool (Jetway with a temporary data dir, or
//! the bare reference) or already running (`--url` and `--pid`).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::client::Error;

/// Which server to load.
#[derive(Debug, Clone)]
pub enum Spec {
    /// Start `jetway` at this path with a fresh data dir and these extra flags.
    Jetway { bin: PathBuf, args: Vec<String> },
    /// Start the bare reference at this path.
    Bare { bin: PathBuf },
    /// A server that is already running.
    Running { url: String, pid: Option<u32> },
}

pub struct Target {
    pub url: String,
    pub pid: Option<u32>,
    pub name: &'static str,
    child: Option<Child>,
    _dir: Option<tempfile::TempDir>,
}

impl Target {
    pub async fn start(spec: &Spec) -> Result<Target, Error> {
        let (mut cmd, name, dir) = match spec {
            Spec::Running { url, pid } => {
                return Ok(Target {
                    url: url.clone(),
                    pid: *pid,
                    name: "running",
                    child: None,
                    _dir: None,
                })
            }
            Spec::Jetway { bin, args } => {
                let dir = tempfile::Builder::new().prefix("jetway-load-").tempdir()?;
                let mut cmd = Command::new(bin);
                cmd.arg("--listen")
                    .arg("127.0.0.1:0")
                    .arg("--data-dir")
                    .arg(dir.path().join("db"))
                    .args(args);
                let log = std::fs::File::create(dir.path().join("server.log"))?;
                cmd.stderr(log);
                if std::env::var_os("RUST_LOG").is_none() {
                    cmd.env("RUST_LOG", "warn");
                }
                (cmd, "jetway", Some(dir))
            }
            Spec::Bare { bin } => {
                let mut cmd = Command::new(bin);
                cmd.arg("--listen").arg("127.0.0.1:0");
                cmd.stderr(Stdio::inherit());
                (cmd, "bare", None)
            }
        };
        cmd.stdout(Stdio::piped())
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {name}: {e}"))?;
        let pid = child.id();
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let first = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .map_err(|_| format!("{name} did not say where it listens within 60 s"))??
            .ok_or_else(|| {
                let log = dir
                    .as_ref()
                    .and_then(|d| std::fs::read_to_string(d.path().join("server.log")).ok())
                    .unwrap_or_default();
                format!("{name} exited before listening: {log}")
            })?;
        let addr = first
            .rsplit(' ')
            .next()
            .filter(|_| first.contains("listening on"))
            .ok_or_else(|| format!("unexpected first line from {name}: {first}"))?
            .to_string();
        // keep draining stdout so the server never blocks on it
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Target {
            url: format!("ws://{addr}/ws"),
            pid,
            name,
            child: Some(child),
            _dir: dir,
        })
    }

    /// Asks a spawned server to stop (SIGTERM), then kills it after `grace`.
    pub async fn stop(mut self) {
        if let Some(mut child) = self.child.take() {
            if let Some(pid) = child.id() {
                // SAFETY: kill(2) with a pid we spawned and still own
                unsafe {
                    libc::kill(pid as libc::pid_t, libc::SIGTERM);
                }
            }
            if tokio::time::timeout(Duration::from_secs(15), child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
        }
    }

    /// `VmRSS`, `RssAnon`, `VmHWM` and `Threads` of the server, from /proc.
    pub fn memory(&self) -> Option<ProcStatus> {
        self.pid
            .and_then(|p| ProcStatus::read(Path::new(&format!("/proc/{p}/status"))))
    }

    /// Consumed CPU time (user+system) of the server, in seconds.
    pub fn cpu_seconds(&self) -> Option<f64> {
        cpu_seconds(self.pid?)
    }
}

/// Consumed CPU time (user+system) of a process, in seconds, from /proc/PID/stat.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some((utime + stime) / hz.max(1.0))
}

#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct ProcStatus {
    pub vm_rss_kib: u64,
    pub rss_anon_kib: u64,
    pub vm_hwm_kib: u64,
    pub threads: u64,
}

impl ProcStatus {
    fn read(path: &Path) -> Option<Self> {
        let text = std::fs::read_to_string(path).ok()?;
        let mut s = ProcStatus::default();
        for line in text.lines() {
            let mut it = line.split_whitespace();
            let (Some(k), Some(v)) = (it.next(), it.next()) else {
                continue;
            };
            let v: u64 = v.parse().unwrap_or(0);
            match k {
                "VmRSS:" => s.vm_rss_kib = v,
                "RssAnon:" => s.rss_anon_kib = v,
                "VmHWM:" => s.vm_hwm_kib = v,
                "Threads:" => s.threads = v,
                _ => {}
            }
        }
        Some(s)
    }
}

/// Raises this process's open-file soft limit to its hard limit (children inherit
/// it). Returns the new soft limit.
pub fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain getrlimit/setrlimit on a local struct
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
    }
    lim.rlim_cur
}
