//! Measures what Jetway's durable writes cannot beat on this machine, without Jetway
//! around it: the raw `fdatasync` rate of a 4 KiB append, the latency of one such
//! append + `fdatasync` after the disk was idle for a while (what a lone change
//! waits for), and sled batches of booking-sized records followed by the same
//! flush + `fdatasync` Jetway's sync does.
//!
//! `sync-floor [DIR] [SECONDS_PER_FIGURE] [BATCH_SIZES...]`, e.g.
//! `sync-floor /tmp/floor 3 1 10 36 100 300`. DIR must be on the disk under test.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Keys and value sizes of one hold, roughly as Jetway writes them: the booking, its
/// user index entry, the flight version, a history event and the remembered reply.
const RECORDS: [(u8, usize); 5] = [(b'B', 620), (b'b', 0), (b'V', 8), (b'H', 160), (b'K', 700)];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = PathBuf::from(args.first().map_or("/tmp/sync-floor", String::as_str));
    let secs: f64 = args.get(1).map_or(Ok(3.0), |s| s.parse())?;
    let sizes: Vec<usize> = match args.get(2..) {
        Some(s) if !s.is_empty() => s.iter().map(|x| x.parse()).collect::<Result<_, _>>()?,
        _ => vec![1, 10, 36, 100, 300],
    };
    let per = Duration::from_secs_f64(secs);
    std::fs::create_dir_all(&dir)?;
    println!("dir {} ({secs} s per figure)", dir.display());
    let (n, lat) = fdatasync_rate(&dir.join("raw"), per)?;
    println!(
        "raw 4 KiB append + fdatasync: {:.0}/s, p50 {:.3} ms, p99 {:.3} ms",
        n as f64 / secs,
        pct(&lat, 0.5),
        pct(&lat, 0.99)
    );
    for gap_ms in [1, 5, 50] {
        let lat = isolated_syncs(&dir.join("idle"), Duration::from_millis(gap_ms), per)?;
        println!(
            "raw 4 KiB append + fdatasync after {gap_ms} ms idle: p50 {:.3} ms, p90 {:.3} ms ({} samples)",
            pct(&lat, 0.5),
            pct(&lat, 0.9),
            lat.len()
        );
    }
    for b in sizes {
        let (n, lat) = sled_batches(&dir.join(format!("sled-{b}")), b, per)?;
        println!(
            "sled batch of {b} holds ({} records) + flush + fdatasync: {:.0} batches/s = {:.0} holds/s, p50 {:.3} ms, p99 {:.3} ms",
            b * RECORDS.len(),
            n as f64 / secs,
            (n * b) as f64 / secs,
            pct(&lat, 0.5),
            pct(&lat, 0.99)
        );
    }
    Ok(())
}

fn pct(lat: &[Duration], q: f64) -> f64 {
    let mut v = lat.to_vec();
    v.sort();
    v.get(((v.len() as f64 * q) as usize).min(v.len().saturating_sub(1)))
        .map_or(0.0, |d| d.as_secs_f64() * 1e3)
}

fn fdatasync_rate(path: &Path, per: Duration) -> std::io::Result<(usize, Vec<Duration>)> {
    let _ = std::fs::remove_file(path);
    let mut f = OpenOptions::new().create(true).append(true).open(path)?;
    let block = [7u8; 4096];
    let mut lat = Vec::new();
    let start = Instant::now();
    while start.elapsed() < per {
        let t = Instant::now();
        f.write_all(&block)?;
        f.sync_data()?;
        lat.push(t.elapsed());
    }
    Ok((lat.len(), lat))
}

/// One append + `fdatasync` after each idle `gap`, for `per` (at most 200 samples).
fn isolated_syncs(path: &Path, gap: Duration, per: Duration) -> std::io::Result<Vec<Duration>> {
    let _ = std::fs::remove_file(path);
    let mut f = OpenOptions::new().create(true).append(true).open(path)?;
    let block = [7u8; 4096];
    let mut lat = Vec::new();
    let start = Instant::now();
    while start.elapsed() < per && lat.len() < 200 {
        std::thread::sleep(gap);
        let t = Instant::now();
        f.write_all(&block)?;
        f.sync_data()?;
        lat.push(t.elapsed());
    }
    Ok(lat)
}

fn sled_batches(
    path: &Path,
    holds: usize,
    per: Duration,
) -> Result<(usize, Vec<Duration>), Box<dyn std::error::Error>> {
    let _ = std::fs::remove_dir_all(path);
    let db = sled::Config::new()
        .path(path)
        .cache_capacity(64 << 20)
        .open()?;
    let data = File::open(path.join("db"))?;
    let mut lat = Vec::new();
    let mut id = 0u64;
    let start = Instant::now();
    while start.elapsed() < per {
        let t = Instant::now();
        let mut batch = sled::Batch::default();
        for _ in 0..holds {
            id += 1;
            for (prefix, len) in RECORDS {
                let mut k = vec![prefix];
                k.extend_from_slice(&id.to_be_bytes());
                batch.insert(k, vec![b'x'; len]);
            }
        }
        db.apply_batch(batch)?;
        db.flush()?;
        data.sync_data()?;
        lat.push(t.elapsed());
    }
    Ok((lat.len(), lat))
}
