//! The `jetway` binary: parse flags, start the server, wait for SIGINT/SIGTERM,
//! shut down gracefully.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

use clap::Parser;
use jetway::Config;
use tracing_subscriber::EnvFilter;

#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = Config::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if config.log_format == jetway::config::LogFormat::Json {
        logs.json().init();
    } else {
        logs.init();
    }

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

    let server = match jetway::start(config).await {
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
    wait_for_signal().await;
    tracing::info!("shutting down");
    server.shutdown().await;
    std::process::ExitCode::SUCCESS
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
