//! Latency recording (HDR histograms in microseconds) and progress bars.

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use parking_lot::Mutex;
use serde::Serialize;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

const SHARDS: usize = 8;
/// Largest latency recorded: 5 minutes.
const MAX_US: u64 = 300_000_000;

fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_US, 3).expect("valid histogram bounds")
}

/// A histogram many tasks record into (sharded to keep lock hold times apart).
pub struct Lat {
    shards: Vec<Mutex<Histogram<u64>>>,
    next: AtomicUsize,
}

impl Default for Lat {
    fn default() -> Self {
        Lat {
            shards: (0..SHARDS).map(|_| Mutex::new(hist())).collect(),
            next: AtomicUsize::new(0),
        }
    }
}

impl Lat {
    pub fn record(&self, d: Duration) {
        self.record_us(d.as_micros() as u64);
    }

    pub fn record_us(&self, us: u64) {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % SHARDS;
        self.shards[i].lock().saturating_record(us.clamp(1, MAX_US));
    }

    pub fn summary(&self) -> Summary {
        let mut all = hist();
        for s in &self.shards {
            let _ = all.add(&*s.lock());
        }
        Summary::of(&all)
    }
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Summary {
    pub count: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Summary {
    fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Summary::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Summary {
            count: h.len(),
            mean_ms: h.mean() / 1000.0,
            p50_ms: ms(h.value_at_quantile(0.50)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "n={} p50={:.2}ms p99={:.2}ms p999={:.2}ms max={:.2}ms",
            self.count, self.p50_ms, self.p99_ms, self.p999_ms, self.max_ms
        )
    }
}

/// A progress bar on stderr (drawn only on a terminal, and not with `--quiet`).
pub fn bar(len: u64, msg: &str, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("{msg:>14} [{bar:40}] {pos}/{len} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.set_message(msg.to_string());
    pb
}

/// Sleeps `secs` seconds while a bar counts them.
pub async fn timed(secs: f64, msg: &str, quiet: bool) {
    let pb = bar((secs * 10.0).round() as u64, msg, quiet);
    let start = tokio::time::Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    while tokio::time::Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(100).min(end - tokio::time::Instant::now())).await;
        pb.set_position((start.elapsed().as_secs_f64() * 10.0) as u64);
    }
    pb.finish_and_clear();
}

pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}
