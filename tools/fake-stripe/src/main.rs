//! `fake-stripe`: the fake Stripe as a process, for soaks. Prints `listening on
//! http://ADDR` once it serves; faults come from `--fault` and from `/_fake/faults`.

use clap::Parser;
use fake_stripe::{FakeStripe, FaultRule};
use std::io::Write;
use std::net::SocketAddr;

#[derive(Parser)]
#[command(about = "A fake Stripe (PaymentIntents, refunds, idempotency keys) with fault injection")]
struct Args {
    /// Address to serve on.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// STEP=FAULT[@RATE], repeatable. STEP: create, confirm, retrieve, cancel, refund,
    /// list_refunds, retrieve_refund. FAULT: fail, refuse, timeout, lose_reply, slow:MS,
    /// process_late:MS (confirm, refund), refund_fails, refund_pending (refund only),
    /// answer_held, foreign_not_found. RATE: 0..1 (default 1).
    #[arg(long = "fault")]
    faults: Vec<FaultRule>,
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let fake = FakeStripe::start_on(args.listen).await?;
    for rule in args.faults {
        fake.set_fault(rule);
    }
    let mut out = std::io::stdout();
    writeln!(out, "listening on {}", fake.base())?;
    out.flush()?;
    tokio::signal::ctrl_c().await?;
    Ok(())
}
