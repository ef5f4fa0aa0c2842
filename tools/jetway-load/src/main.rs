//! `jetway-load`: drives a running (or self-started) Jetway over real WebSockets on
//! loopback. Scenarios: connections, fanout, booking, stampede, login-storm. Every
//! run is bounded in time and count; `--json` prints one JSON object on stdout.
//! See docs/benchmarks.md.

mod boards;
mod booking;
mod client;
mod connections;
mod fanout;
mod stampede;
mod stats;
mod target;

use clap::{Args, Parser, Subcommand};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use client::{Endpoint, Error};
use target::{Spec, Target};

#[derive(Parser)]
#[command(name = "jetway-load", version, about = "Load generator for Jetway")]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Args, Clone)]
struct Common {
    /// Start this jetway binary with a fresh temporary data dir (and stop it after).
    #[arg(long, value_name = "PATH")]
    spawn: Option<PathBuf>,
    /// Start this bare-broadcast binary instead.
    #[arg(long, value_name = "PATH", conflicts_with = "spawn")]
    spawn_bare: Option<PathBuf>,
    /// Target an already running server (loopback only).
    #[arg(long, conflicts_with_all = ["spawn", "spawn_bare"])]
    url: Option<String>,
    /// Its process id, for memory and CPU readings from /proc.
    #[arg(long, requires = "url")]
    pid: Option<u32>,
    /// An extra flag for a spawned jetway (repeatable), e.g. --server-arg=--hold-ttl=60.
    #[arg(long, allow_hyphen_values = true)]
    server_arg: Vec<String>,
    /// Loopback source addresses to spread connections over (127.0.0.2, ...).
    #[arg(long, default_value_t = 8)]
    sources: usize,
    /// Print one JSON object on stdout instead of the human summary.
    #[arg(long)]
    json: bool,
    /// No progress bars.
    #[arg(long)]
    quiet: bool,
    /// Hard bound on the whole run, in seconds.
    #[arg(long, default_value_t = 900)]
    timeout: u64,
}

impl Common {
    fn spec(&self) -> Result<Spec, Error> {
        if let Some(bin) = &self.spawn {
            return Ok(Spec::Jetway {
                bin: bin.clone(),
                args: self.server_arg.clone(),
            });
        }
        if let Some(bin) = &self.spawn_bare {
            return Ok(Spec::Bare { bin: bin.clone() });
        }
        match &self.url {
            Some(url) => Ok(Spec::Running {
                url: url.clone(),
                pid: self.pid,
            }),
            None => Err("say which server: --spawn PATH, --spawn-bare PATH or --url URL".into()),
        }
    }
}

#[derive(Subcommand)]
enum Scenario {
    /// Open N authenticated, subscribed connections; server memory per connection.
    Connections {
        #[command(flatten)]
        common: Common,
        #[arg(long, short = 'n', default_value_t = 10_000)]
        connections: usize,
        /// Accounts the connections share (each logs in with auth.resume).
        #[arg(long, default_value_t = 16)]
        accounts: usize,
        /// Seconds to keep them all open before measuring.
        #[arg(long, default_value_t = 3.0)]
        hold: f64,
        /// Leave the connections anonymous (no auth.resume), to split the cost.
        #[arg(long)]
        no_auth: bool,
        /// Don't subscribe them to a flight, to split the cost.
        #[arg(long)]
        no_subscribe: bool,
        /// Subscribe every connection to this flight id, or to the one with the most
        /// seats (`largest`, so each receives the biggest map); default: round-robin
        /// over all flights.
        #[arg(long)]
        flight: Option<String>,
    },
    /// W watchers of one flight while writers hold and cancel at a set rate.
    Fanout {
        #[command(flatten)]
        common: Common,
        #[arg(long, short = 'w', default_value_t = 1000)]
        watchers: usize,
        #[arg(long, default_value_t = 4)]
        writers: usize,
        /// Seat changes per second, all writers together.
        #[arg(long, default_value_t = 200.0)]
        rate: f64,
        #[arg(long, short = 'd', default_value_t = 10.0)]
        duration: f64,
        #[arg(long, default_value_t = 2.0)]
        warmup: f64,
        /// Also run the same load against this bare-broadcast binary and report ratios.
        #[arg(long, value_name = "PATH")]
        reference: Option<PathBuf>,
        /// Repeat (alternating target and reference) and report medians.
        #[arg(long, default_value_t = 1)]
        runs: usize,
    },
    /// C users: register once, then hold, pay, cancel over many flights.
    Booking {
        #[command(flatten)]
        common: Common,
        #[arg(long, short = 'c', default_value_t = 500)]
        users: usize,
        #[arg(long, short = 'd', default_value_t = 10.0)]
        duration: f64,
        /// Stop after this many hold+pay pairs.
        #[arg(long, default_value_t = 1_000_000)]
        max_pairs: u64,
    },
    /// B departure boards of one airport while writers change its flights' seats.
    Boards {
        #[command(flatten)]
        common: Common,
        #[arg(long, short = 'b', default_value_t = 1000)]
        boards: usize,
        #[arg(long, default_value = "LHR")]
        airport: String,
        #[arg(long, default_value_t = 8)]
        writers: usize,
        /// Seat changes per second, all writers together.
        #[arg(long, default_value_t = 200.0)]
        rate: f64,
        #[arg(long, short = 'd', default_value_t = 10.0)]
        duration: f64,
    },
    /// N users race for every seat of one flight.
    Stampede {
        #[command(flatten)]
        common: Common,
        #[arg(long, short = 'n', default_value_t = 10_000)]
        users: usize,
        /// Accounts the users share (each connection logs in with auth.resume).
        #[arg(long, default_value_t = 100)]
        accounts: usize,
        /// Every user its own account (as many registrations as users: add
        /// `--server-arg=--insecure-fast-hashing` for thousands).
        #[arg(long, conflicts_with = "accounts")]
        one_account_per_user: bool,
        /// Losers keep their connections open until the race is over (by default
        /// each closes as soon as it lost, and the server tears it down during the
        /// race).
        #[arg(long)]
        losers_stay: bool,
    },
    /// Fan-out latency while L connections log in back to back (Argon2).
    LoginStorm {
        #[command(flatten)]
        common: Common,
        #[arg(long, short = 'w', default_value_t = 1000)]
        watchers: usize,
        #[arg(long, default_value_t = 4)]
        writers: usize,
        #[arg(long, default_value_t = 200.0)]
        rate: f64,
        /// Connections logging in back to back during the storm.
        #[arg(long, short = 'l', default_value_t = 200)]
        logins: usize,
        /// Seconds of each phase (quiet, then storm).
        #[arg(long, short = 'd', default_value_t = 10.0)]
        duration: f64,
        #[arg(long, default_value_t = 2.0)]
        warmup: f64,
    },
}

impl Scenario {
    fn common(&self) -> &Common {
        match self {
            Scenario::Connections { common, .. }
            | Scenario::Fanout { common, .. }
            | Scenario::Booking { common, .. }
            | Scenario::Stampede { common, .. }
            | Scenario::Boards { common, .. }
            | Scenario::LoginStorm { common, .. } => common,
        }
    }
}

/// A scenario's result: the JSON, the human summary, and whether it passed.
struct Report {
    json: Value,
    text: String,
    ok: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let nofile = target::raise_nofile();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("jetway-load: {e}");
            return ExitCode::FAILURE;
        }
    };
    let common = cli.scenario.common().clone();
    let limit = Duration::from_secs(common.timeout);
    let result = rt.block_on(async {
        match tokio::time::timeout(limit, run(&cli.scenario, nofile)).await {
            Ok(r) => r,
            Err(_) => Err(format!("gave up after --timeout {} s", common.timeout).into()),
        }
    });
    // don't wait for connection tasks that are still open
    rt.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(r) => {
            if common.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&r.json).unwrap_or_default()
                );
            } else {
                print!("{}", r.text);
                println!("{}", if r.ok { "result: OK" } else { "result: FAILED" });
            }
            if r.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            if common.json {
                println!("{}", json!({"ok": false, "error": e.to_string()}));
            }
            eprintln!("jetway-load: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn start(c: &Common) -> Result<(Target, Endpoint), Error> {
    let t = Target::start(&c.spec()?).await?;
    let ep = Endpoint::new(&t.url, c.sources)?;
    Ok((t, ep))
}

fn machine() -> Value {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    json!({"cpus": cpus, "cpu_model": model, "loadavg_at_start": load.trim()})
}

async fn run(s: &Scenario, nofile: u64) -> Result<Report, Error> {
    let m = machine();
    let mut r = match s {
        Scenario::Connections {
            common,
            connections,
            accounts,
            hold,
            no_auth,
            no_subscribe,
            flight,
        } => {
            let (t, ep) = start(common).await?;
            let o = connections::Opts {
                connections: *connections,
                accounts: *accounts,
                hold: *hold,
                auth: !*no_auth,
                subscribe: !*no_subscribe,
                flight: flight.clone(),
                quiet: common.quiet,
            };
            let res = connections::run(&t, &std::sync::Arc::new(ep), &o).await;
            t.stop().await;
            let out = res?;
            let kib = |b: Option<f64>| b.map_or("n/a".into(), |b| format!("{:.2} KiB", b / 1024.0));
            let micros = |us: Option<f64>| us.map_or("n/a".into(), |us| format!("{us:.0} µs"));
            let text = format!(
                "connections ({}): {} of {} open in {:.1} s ({:.0}/s, CPU per connection: server {}, load tool {}), {} failed, {} dropped\n\
                 server memory per connection: {} VmRSS, {} RssAnon\n\
                 server VmRSS before/open/closed: {:?}/{:?}/{:?} KiB{}\n",
                out.target,
                out.opened,
                out.requested,
                out.open_seconds,
                out.connections_per_sec,
                micros(out.server_cpu_us_per_connection),
                micros(out.client_cpu_us_per_connection),
                out.failed,
                out.dropped,
                kib(out.bytes_per_connection),
                kib(out.anon_bytes_per_connection),
                out.memory_before.map(|m| m.vm_rss_kib),
                out.memory_open.map(|m| m.vm_rss_kib),
                out.memory_closed.map(|m| m.vm_rss_kib),
                out.first_error
                    .as_ref()
                    .map_or(String::new(), |e| format!("\nfirst error: {e}")),
            );
            Report {
                ok: out.ok,
                json: serde_json::to_value(&out)?,
                text,
            }
        }
        Scenario::Fanout {
            common,
            watchers,
            writers,
            rate,
            duration,
            warmup,
            reference,
            runs,
        } => {
            let o = fanout::Opts {
                watchers: *watchers,
                writers: *writers,
                rate: *rate,
                warmup: *warmup,
                phases: vec![("measure".into(), *duration, false)],
                logins: 0,
                quiet: common.quiet,
            };
            fanout_compare(common, reference.as_ref(), &o, (*runs).max(1)).await?
        }
        Scenario::LoginStorm {
            common,
            watchers,
            writers,
            rate,
            logins,
            duration,
            warmup,
        } => {
            let o = fanout::Opts {
                watchers: *watchers,
                writers: *writers,
                rate: *rate,
                warmup: *warmup,
                phases: vec![
                    ("quiet".into(), *duration, false),
                    ("storm".into(), *duration, true),
                ],
                logins: *logins,
                quiet: common.quiet,
            };
            let (t, ep) = start(common).await?;
            let res = fanout::run(&t, &ep, &o).await;
            t.stop().await;
            let out = res?;
            let quiet = &out.phases[0];
            let storm = &out.phases[1];
            let ratio = storm.latency.p99_ms / quiet.latency.p99_ms.max(1e-9);
            let mut text = fanout_text(&out);
            text += &format!(
                "logins during the storm: {} ({:.1}/s), login {}\n\
                 fan-out p99 storm/quiet: {:.2}x (target <= 2x)\n",
                storm.logins,
                storm.logins as f64 / storm.seconds,
                storm.login_latency,
                ratio
            );
            let mut j = serde_json::to_value(&out)?;
            j["p99_ratio_storm_to_quiet"] = json!(ratio);
            Report {
                ok: out.ok && storm.logins > 0,
                json: j,
                text,
            }
        }
        Scenario::Booking {
            common,
            users,
            duration,
            max_pairs,
        } => {
            let (t, ep) = start(common).await?;
            let o = booking::Opts {
                users: *users,
                duration: *duration,
                max_pairs: *max_pairs,
                quiet: common.quiet,
            };
            let res = booking::run(&t, &ep, &o).await;
            t.stop().await;
            let out = res?;
            let mut text = format!(
                "booking ({}): {} users on {} flights (registered in {:.1} s), {:.1} s\n\
                 {} ops ({:.0}/s), {} hold+pay pairs ({:.0}/s), server CPU {}\n",
                out.target,
                out.users,
                out.flights,
                out.register_seconds,
                out.seconds,
                out.ops,
                out.ops_per_sec,
                out.pairs,
                out.pairs_per_sec,
                out.server_cpu_percent
                    .map_or("n/a".into(), |c| format!("{c:.0}%")),
            );
            let ms = |v: Option<f64>| v.map_or("n/a".into(), |v| format!("{v:.3} ms"));
            text += &format!(
                "  CPU per operation: server {}, this tool {} ({})\n",
                ms(out.server_cpu_ms_per_op),
                ms(out.client_cpu_ms_per_op),
                out.client_cpu_percent
                    .map_or("n/a".into(), |c| format!("{c:.0}%")),
            );
            for (name, m) in &out.methods {
                text += &format!("  {name:15} {:7.0}/s  {}\n", m.per_sec, m.latency);
            }
            if out.server_commits.is_none() && out.target != "bare" {
                text += "  group commit: n/a (no /metrics on the WebSocket's address)\n";
            }
            if let Some(c) = &out.server_commits {
                text += &format!(
                    "  group commit: {:.0} tickets/s in {:.0} syncs/s ({:.1} each), \
                     sync {:.2} ms mean, busy {:.0}%, {} dirtied for writeback per ticket\n",
                    c.tickets_per_sec,
                    c.syncs_per_sec,
                    c.tickets_per_sync,
                    c.sync_ms_mean,
                    c.sync_busy_percent,
                    c.device_bytes_per_ticket
                        .map_or("n/a".into(), |b| format!("{:.1} KB", b / 1000.0)),
                );
            }
            if !out.errors.is_empty() {
                text += &format!("errors: {:?}\n", out.errors);
            }
            if out.throttled > 0 {
                text += &format!(
                    "throttled: {} calls answered rate_limited and sent again (the run measures the server's --rate-limit)\n",
                    out.throttled
                );
            }
            Report {
                ok: out.ok,
                json: serde_json::to_value(&out)?,
                text,
            }
        }
        Scenario::Stampede {
            common,
            users,
            accounts,
            one_account_per_user,
            losers_stay,
        } => {
            let (t, ep) = start(common).await?;
            let o = stampede::Opts {
                users: *users,
                accounts: if *one_account_per_user {
                    *users
                } else {
                    *accounts
                },
                quiet: common.quiet,
                losers_stay: *losers_stay,
            };
            let res = stampede::run(&t, &ep, &o).await;
            t.stop().await;
            let out = res?;
            let ms = |v: Option<f64>| v.map_or("not sold out".into(), |v| format!("{v:.1} ms"));
            let text = format!(
                "stampede ({}): {} users ({} accounts{}) for {} seats of {}\n\
                 holds won {}, paid {}, seats booked {}, oversold {}, unsold {}, losers {}\n\
                 all held after {}, sold out after {}\n\
                 winner hold {}\n loser answer {}\n pay {}\n{}",
                out.target,
                out.users,
                out.accounts,
                if out.losers_stay { ", losers stay" } else { "" },
                out.seats,
                out.flight_id,
                out.holds_won,
                out.paid,
                out.seats_booked,
                out.oversold,
                out.unsold,
                out.losers,
                ms(out.all_held_ms),
                ms(out.sold_out_ms),
                out.winner_hold_latency,
                out.loser_latency,
                out.pay_latency,
                if out.errors.is_empty() {
                    String::new()
                } else {
                    format!("errors: {:?}\n", out.errors)
                },
            );
            Report {
                ok: out.ok,
                json: serde_json::to_value(&out)?,
                text,
            }
        }
        Scenario::Boards {
            common,
            boards,
            airport,
            writers,
            rate,
            duration,
        } => {
            let (t, ep) = start(common).await?;
            let o = boards::Opts {
                boards: *boards,
                airport: airport.clone(),
                writers: *writers,
                rate: *rate,
                duration: *duration,
                quiet: common.quiet,
            };
            let res = boards::run(&t, &ep, &o).await;
            t.stop().await;
            let out = res?;
            let text = format!(
                "boards ({}): {} boards of {} ({} flights in the window, {} changed), {:.1} s\n\
                 seat changes {} ({:.0}/s), writer {}, errors {}\n\
                 pushes to boards {} ({:.2} per board per second), most pushes of one flight to one board in one second {}\n\
                 server CPU {} ({} per seat change)\n",
                out.target,
                out.boards,
                out.airport,
                out.flights_in_window,
                out.flights_changed,
                out.seconds,
                out.changes,
                out.changes_per_sec,
                out.writer_latency,
                out.writer_errors,
                out.pushes,
                out.pushes_per_board_per_sec,
                out.max_per_flight_second,
                out.server_cpu_percent
                    .map_or("n/a".into(), |c| format!("{c:.0}%")),
                out.server_cpu_ms_per_change
                    .map_or("n/a".into(), |c| format!("{c:.2} ms")),
            );
            Report {
                ok: out.ok,
                json: serde_json::to_value(&out)?,
                text,
            }
        }
    };
    r.json["scenario"] = json!(match s {
        Scenario::Connections { .. } => "connections",
        Scenario::Fanout { .. } => "fanout",
        Scenario::Booking { .. } => "booking",
        Scenario::Stampede { .. } => "stampede",
        Scenario::Boards { .. } => "boards",
        Scenario::LoginStorm { .. } => "login-storm",
    });
    r.json["ok"] = json!(r.ok);
    r.json["machine"] = m;
    r.json["client_nofile_limit"] = json!(nofile);
    Ok(r)
}

fn fanout_text(out: &fanout::Outcome) -> String {
    let mut text = format!(
        "fanout ({}): {} watchers of {}, {} writers at {:.0} changes/s\n",
        out.target, out.watchers, out.flight_id, out.writers, out.rate
    );
    for p in &out.phases {
        text += &format!(
            "  {:8} {:.0} s: {:.0} changes/s, {:.0} deliveries/s, server CPU {}\n           delivery {}\n",
            p.name,
            p.seconds,
            p.changes_per_sec,
            p.deliveries_per_sec,
            p.server_cpu_percent
                .map_or("n/a".into(), |c| format!("{c:.0}%")),
            p.latency
        );
    }
    text += &format!(
        "  gaps {}, duplicates/reordered {}, watchers closed {}, writer errors {}, writer request {}\n",
        out.gaps,
        out.duplicates_or_reordered,
        out.watchers_closed,
        out.writer_errors,
        out.writer_latency
    );
    if let Some(r) = out.close_reasons.first() {
        text += &format!("  first close: {r}\n");
    }
    text
}

async fn fanout_once(
    common: &Common,
    spec: Spec,
    o: &fanout::Opts,
) -> Result<fanout::Outcome, Error> {
    let t = Target::start(&spec).await?;
    let ep = Endpoint::new(&t.url, common.sources)?;
    let res = fanout::run(&t, &ep, o).await;
    t.stop().await;
    res
}

async fn fanout_compare(
    common: &Common,
    reference: Option<&PathBuf>,
    o: &fanout::Opts,
    runs: usize,
) -> Result<Report, Error> {
    let spec = common.spec()?;
    let mut text = String::new();
    let mut ok = true;
    let mut jet = Vec::new();
    let mut bare = Vec::new();
    for run in 0..runs {
        // alternate which goes first, so drift on a shared machine hits both alike
        let order: Vec<bool> = if reference.is_some() {
            if run % 2 == 0 {
                vec![true, false]
            } else {
                vec![false, true]
            }
        } else {
            vec![false]
        };
        for is_ref in order {
            let s = match (is_ref, reference) {
                (true, Some(bin)) => Spec::Bare { bin: bin.clone() },
                _ => spec.clone(),
            };
            let out = fanout_once(common, s, o).await?;
            text += &format!("run {}: ", run + 1);
            text += &fanout_text(&out);
            ok &= out.ok;
            if is_ref {
                bare.push(out);
            } else {
                jet.push(out);
            }
        }
    }
    let med = |v: &[fanout::Outcome], f: fn(&fanout::PhaseResult) -> f64| {
        stats::median(v.iter().map(|o| f(&o.phases[0])).collect())
    };
    let summary = |v: &[fanout::Outcome]| {
        json!({
            "deliveries_per_sec": med(v, |p| p.deliveries_per_sec),
            "changes_per_sec": med(v, |p| p.changes_per_sec),
            "p50_ms": med(v, |p| p.latency.p50_ms),
            "p99_ms": med(v, |p| p.latency.p99_ms),
            "p999_ms": med(v, |p| p.latency.p999_ms),
            "max_ms": med(v, |p| p.latency.max_ms),
            "server_cpu_percent": med(v, |p| p.server_cpu_percent.unwrap_or(0.0)),
        })
    };
    let mut j = json!({
        "watchers": o.watchers, "writers": o.writers, "rate": o.rate, "runs": runs,
        "target": summary(&jet),
        "target_runs": jet,
    });
    text += &format!(
        "median of {runs}: target {:.0} deliveries/s, p50 {:.2} ms, p99 {:.2} ms, p999 {:.2} ms\n",
        j["target"]["deliveries_per_sec"].as_f64().unwrap_or(0.0),
        j["target"]["p50_ms"].as_f64().unwrap_or(0.0),
        j["target"]["p99_ms"].as_f64().unwrap_or(0.0),
        j["target"]["p999_ms"].as_f64().unwrap_or(0.0),
    );
    if !bare.is_empty() {
        // ratios per run (same conditions), then their median
        let ratio = |f: fn(&fanout::PhaseResult) -> f64| {
            stats::median(
                jet.iter()
                    .zip(&bare)
                    .map(|(a, b)| f(&a.phases[0]) / f(&b.phases[0]).max(1e-9))
                    .collect(),
            )
        };
        let dr = ratio(|p| p.deliveries_per_sec);
        let pr = ratio(|p| p.latency.p99_ms);
        j["reference"] = summary(&bare);
        j["reference_runs"] = serde_json::to_value(&bare)?;
        j["ratio_deliveries"] = json!(dr);
        j["ratio_p99"] = json!(pr);
        text += &format!(
            "median of {runs}: reference {:.0} deliveries/s, p50 {:.2} ms, p99 {:.2} ms\n\
             jetway/reference: deliveries {:.1}% (target >= 95%), p99 {:.2}x (target <= 1.25x)\n",
            j["reference"]["deliveries_per_sec"].as_f64().unwrap_or(0.0),
            j["reference"]["p50_ms"].as_f64().unwrap_or(0.0),
            j["reference"]["p99_ms"].as_f64().unwrap_or(0.0),
            dr * 100.0,
            pr
        );
    }
    Ok(Report { json: j, text, ok })
}
