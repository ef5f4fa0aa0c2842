//! The `jetway` binary: set the allocator's options, parse flags, start the server,
//! wait for SIGINT/SIGTERM, shut down gracefully.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

use clap::Parser;
use jetway::Config;
use tracing_subscriber::EnvFilter;

#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's options that keep its memory at glibc's level (docs/benchmarks.md,
/// "Allocator"): no transparent huge pages (one byte touched would make 2 MiB
/// resident), arenas committed as they are used, freed pages returned at once. They
/// are defaults: `MIMALLOC_ALLOW_THP`, `MIMALLOC_ARENA_EAGER_COMMIT` (or its older
/// name `MIMALLOC_EAGER_REGION_COMMIT`) and `MIMALLOC_PURGE_DELAY` (or
/// `MIMALLOC_RESET_DELAY`) in the environment still win. They must be in place before
/// mimalloc initializes (it decides on transparent huge pages once, then) and before
/// the first allocation reserves its first arena, so this runs as an ELF constructor
/// of priority 100: before mimalloc's own (priority 101 when clang builds it, where
/// 101 would leave the order to the linker; none, so later, with gcc), after only
/// std's argv set-up (99, which allocates nothing), before `main`;
/// `mi_option_set_default` only writes mimalloc's static table of options. Written by hand: the crates that
/// register constructors are not among the build's dependencies, and libmimalloc-sys
/// declares the function only under its `extended` feature, whose extra dependency
/// the build cannot fetch; the declaration is `mimalloc.h`'s C API, and the numbers
/// are its `mi_option_e` (v3, the version libmimalloc-sys builds;
/// `tests/memory.rs` `the_allocator_options_are_in_effect` checks them).
#[cfg(all(feature = "mimalloc", target_os = "linux"))]
mod tune_allocator {
    extern "C" {
        fn mi_option_set_default(option: libc::c_int, value: libc::c_long);
    }

    const ARENA_EAGER_COMMIT: libc::c_int = 4;
    const PURGE_DELAY: libc::c_int = 15;
    const ALLOW_THP: libc::c_int = 43;

    extern "C" fn tune() {
        for option in [ARENA_EAGER_COMMIT, PURGE_DELAY, ALLOW_THP] {
            // SAFETY: a plain store into mimalloc's static options table; only one
            // thread runs this early.
            unsafe { mi_option_set_default(option, 0) };
        }
    }

    #[used]
    #[link_section = ".init_array.00100"]
    static TUNE: extern "C" fn() = tune;
}

/// glibc's malloc raises its mmap threshold to the size of each large block freed
/// (up to 32 MiB), so after the first login Argon2's 19 MiB block comes from an
/// arena, and every arena a blocking thread used keeps one: hundreds of MiB of RSS
/// after a few dozen logins (docs/benchmarks.md, "Memory under churn"). A fixed
/// threshold keeps blocks of 1 MiB and more in their own mappings, returned on free.
/// Free pages inside the arenas (sled's churn of node copies leaves many) are given
/// back every [`TRIM_EVERY`] too.
#[cfg(all(target_os = "linux", target_env = "gnu", not(feature = "mimalloc")))]
fn return_large_blocks() {
    const THRESHOLD: libc::c_int = 1 << 20;
    // SAFETY: mallopt only sets a parameter of the allocator, under its own lock.
    if unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, THRESHOLD) } != 1 {
        tracing::warn!("could not fix malloc's mmap threshold");
    }
    tokio::spawn(async {
        let mut every = tokio::time::interval(TRIM_EVERY);
        loop {
            every.tick().await;
            // SAFETY: malloc_trim only returns free memory, under the arenas' locks.
            let _ = tokio::task::spawn_blocking(|| unsafe { libc::malloc_trim(0) }).await;
        }
    });
}

#[cfg(all(target_os = "linux", target_env = "gnu", not(feature = "mimalloc")))]
const TRIM_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

#[cfg(not(all(target_os = "linux", target_env = "gnu", not(feature = "mimalloc"))))]
fn return_large_blocks() {}

/// The runtime is built by hand rather than by `#[tokio::main]`, whose generated code
/// panics (an `expect`) when it cannot be.
fn main() -> std::process::ExitCode {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(serve()),
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn serve() -> std::process::ExitCode {
    let config = Config::parse();
    use tracing_subscriber::filter::{LevelFilter, Targets};
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // below debug these libraries log whole frames and headers: passwords, tokens, the
    // Stripe key (docs/security.md, "Request params are never logged"). A second
    // filter, which every event must pass as well as RUST_LOG's: it lowers no level
    // RUST_LOG sets at debug or below, and raises none.
    let caps = Targets::new()
        .with_default(LevelFilter::TRACE)
        .with_targets(
            [
                "tungstenite",
                "tokio_tungstenite",
                "hyper",
                "hyper_util",
                "h2",
                "reqwest",
            ]
            .map(|lib| (lib, LevelFilter::DEBUG)),
        );
    // colour codes only for a terminal: a log file or journal gets plain text
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if config.log_format == jetway::config::LogFormat::Json {
        logs.json().finish().with(caps).init();
    } else {
        logs.finish().with(caps).init();
    }
    return_large_blocks();

    if let Some(jetway::config::Command::Backup(args)) = config.command.clone() {
        let dir = args.dir.clone();
        return match jetway::backup::run(args, config.admin_password.clone()).await {
            Ok(n) => {
                println!("backup of {n} records written to {}", dir.display());
                std::process::ExitCode::SUCCESS
            }
            Err(e) => {
                tracing::error!("backup failed: {e}");
                std::process::ExitCode::FAILURE
            }
        };
    }

    // before the line scripts wait for: a SIGTERM right after it must stop the server
    // gracefully, not kill it with the default action
    let mut signals = Signals::install();
    let started = tokio::select! {
        started = jetway::start(config) => started,
        _ = signals.wait() => {
            // nothing was served yet; whatever the start wrote is crash-safe
            tracing::warn!("interrupted while starting");
            std::process::exit(1);
        }
    };
    let server = match started {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("{e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    // a stable line for scripts and tests that start jetway on port 0
    println!("jetway listening on {}", server.addr);
    tracing::info!(
        "open http://{} in a browser; WebSocket at ws://{}/ws",
        server.addr,
        server.addr
    );
    signals.wait().await;
    tracing::info!("shutting down");
    server.shutdown().await;
    std::process::ExitCode::SUCCESS
}

/// SIGINT and SIGTERM, listened for from the moment they are installed.
struct Signals {
    #[cfg(unix)]
    streams: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl Signals {
    fn install() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let streams = signal(SignalKind::interrupt())
                .and_then(|i| Ok((i, signal(SignalKind::terminate())?)))
                .inspect_err(|e| {
                    tracing::warn!(
                        "cannot listen for SIGTERM ({e}): only Ctrl-C stops the server gracefully"
                    )
                })
                .ok();
            Signals { streams }
        }
        #[cfg(not(unix))]
        Signals {}
    }

    async fn wait(&mut self) {
        #[cfg(unix)]
        if let Some((int, term)) = &mut self.streams {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            return;
        }
        let _ = tokio::signal::ctrl_c().await;
    }
}
