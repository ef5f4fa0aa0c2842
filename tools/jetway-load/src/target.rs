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

    /// Jetway's store counters, from its `/metrics` (on `--listen`; none from the
    /// bare reference or when `--metrics-listen` moved it) and `/proc/PID/io`.
    pub async fn commits(&self) -> Option<Commits> {
        if self.name == "bare" {
            return None;
        }
        let addr = self.url.strip_prefix("ws://")?.split('/').next()?;
        let text = http_get(addr, "/metrics").await?;
        let mut c = Commits::parse(&text)?;
        c.device_bytes = self.pid.and_then(device_bytes);
        Some(c)
    }
}

/// The body of `GET path` from `addr`, if it answers 200 with a plain body within
/// 5 s. Written by hand: one HTTP/1.0 GET of a text page over loopback is not worth
/// a client crate.
async fn http_get(addr: &str, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fetch = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        let req = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
        s.write_all(req.as_bytes()).await.ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        let text = String::from_utf8(buf).ok()?;
        let (head, body) = text.split_once("\r\n\r\n")?;
        plain_ok(head).then(|| body.to_string())
    };
    tokio::time::timeout(Duration::from_secs(5), fetch)
        .await
        .ok()
        .flatten()
}

/// Whether a response head says 200 with a body as sent (not chunked).
fn plain_ok(head: &str) -> bool {
    let mut lines = head.lines();
    let status_ok = lines.next().is_some_and(|l| {
        let mut it = l.split_whitespace();
        it.next().is_some_and(|v| v.starts_with("HTTP/1.")) && it.next() == Some("200")
    });
    let chunked = lines.any(|l| {
        l.split_once(':').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("transfer-encoding")
                && v.to_ascii_lowercase().contains("chunked")
        })
    });
    status_ok && !chunked
}

/// Bytes the process has dirtied for writeback (`write_bytes` of
/// /proc/PID/io).
fn device_bytes(pid: u32) -> Option<u64> {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    io.lines()
        .find_map(|l| l.strip_prefix("write_bytes:"))?
        .trim()
        .parse()
        .ok()
}

/// A reading of Jetway's group commit: durable writes waited for (tickets), syncs and
/// the time spent in them, and the bytes dirtied for writeback so far.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Commits {
    pub tickets: u64,
    pub syncs: u64,
    pub sync_seconds: f64,
    pub device_bytes: Option<u64>,
}

/// The group commit over a measured window: the difference of two [`Commits`].
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct CommitRates {
    pub tickets_per_sec: f64,
    pub syncs_per_sec: f64,
    pub tickets_per_sync: f64,
    pub sync_ms_mean: f64,
    /// Share of the window the commit loop spent in syncs.
    pub sync_busy_percent: f64,
    pub device_bytes_per_ticket: Option<f64>,
}

impl Commits {
    fn parse(metrics: &str) -> Option<Commits> {
        // `name value [timestamp]`; a labelled series never matches a bare name
        let value = |name: &str| {
            metrics.lines().find_map(|l| {
                let mut it = l.split_whitespace();
                (it.next() == Some(name))
                    .then(|| it.next()?.parse::<f64>().ok())
                    .flatten()
            })
        };
        Some(Commits {
            tickets: value("jetway_store_commits_total")? as u64,
            syncs: value("jetway_store_sync_duration_seconds_count")? as u64,
            sync_seconds: value("jetway_store_sync_duration_seconds_sum")?,
            device_bytes: None,
        })
    }

    /// What happened between this reading and `later`, `seconds` apart.
    pub fn rates(&self, later: &Commits, seconds: f64) -> Option<CommitRates> {
        let tickets = later.tickets.checked_sub(self.tickets)? as f64;
        let syncs = later.syncs.checked_sub(self.syncs)? as f64;
        let busy = later.sync_seconds - self.sync_seconds;
        if seconds <= 0.0 || syncs == 0.0 {
            return None;
        }
        let bytes = later
            .device_bytes
            .zip(self.device_bytes)
            .and_then(|(b, a)| b.checked_sub(a));
        Some(CommitRates {
            tickets_per_sec: tickets / seconds,
            syncs_per_sec: syncs / seconds,
            tickets_per_sync: tickets / syncs,
            sync_ms_mean: busy / syncs * 1000.0,
            sync_busy_percent: busy / seconds * 100.0,
            device_bytes_per_ticket: bytes.filter(|_| tickets > 0.0).map(|b| b as f64 / tickets),
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = "# HELP jetway_store_commits_total Durable writes.\n\
        jetway_store_commits_total 120\n\
        jetway_store_commits_total_extra 7\n\
        jetway_store_sync_duration_seconds_bucket{le=\"0.001\"} 30\n\
        jetway_store_sync_duration_seconds_sum 0.5\n\
        jetway_store_sync_duration_seconds_count 40\n";

    #[test]
    fn commit_counters_are_read_by_exact_name() {
        let c = Commits::parse(PAGE).unwrap();
        assert_eq!((c.tickets, c.syncs), (120, 40));
        assert!((c.sync_seconds - 0.5).abs() < 1e-9);
        assert!(Commits::parse("jetway_store_commits_total 1\n").is_none());
    }

    #[test]
    fn only_a_plain_200_is_read() {
        assert!(plain_ok("HTTP/1.1 200 OK\r\ncontent-type: text/plain"));
        assert!(!plain_ok("HTTP/1.1 404 Not Found"));
        assert!(!plain_ok("HTTP/1.1 2000 OK"));
        assert!(!plain_ok("XTTP/1.1 200 OK"));
        assert!(!plain_ok("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked"));
        let stamped = "jetway_store_commits_total 5 1700000000000\n\
            jetway_store_sync_duration_seconds_sum 0.25\n\
            jetway_store_sync_duration_seconds_count 2\n";
        assert_eq!(Commits::parse(stamped).map(|c| c.tickets), Some(5));
    }

    #[test]
    fn rates_are_the_difference_over_the_window() {
        let a = Commits {
            tickets: 100,
            syncs: 50,
            sync_seconds: 1.0,
            device_bytes: Some(1_000),
        };
        let b = Commits {
            tickets: 400,
            syncs: 150,
            sync_seconds: 1.5,
            device_bytes: Some(601_000),
        };
        let r = a.rates(&b, 2.0).unwrap();
        assert_eq!(r.tickets_per_sec, 150.0);
        assert_eq!(r.syncs_per_sec, 50.0);
        assert_eq!(r.tickets_per_sync, 3.0);
        assert!((r.sync_ms_mean - 5.0).abs() < 1e-9);
        assert!((r.sync_busy_percent - 25.0).abs() < 1e-9);
        assert_eq!(r.device_bytes_per_ticket, Some(2_000.0));
        assert!(
            b.rates(&a, 2.0).is_none(),
            "counters that went back (a restart)"
        );
        assert!(a.rates(&a, 2.0).is_none(), "no sync in the window");
    }
}
