//! Command-line flags; each also reads `JETWAY_<NAME>` from the environment.

use clap::Parser;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Deliberately not `Debug`: it holds the Stripe and admin secrets.
#[derive(Clone, Parser)]
#[command(name = "jetway", version, about = "Real-time air-ticket booking hub")]
pub struct Config {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "JETWAY_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Serve `/metrics` on this address only (e.g. 127.0.0.1:9090), not on --listen.
    #[arg(long, env = "JETWAY_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// Where the sled database lives.
    #[arg(long, env = "JETWAY_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// sled's page cache, in MiB: what the server keeps of the database in memory
    /// (sled's own default, 1 GiB, would let the resident size grow that far).
    #[arg(long, env = "JETWAY_CACHE_MB", default_value_t = crate::store::sled_store::DEFAULT_CACHE_MB, value_parser = clap::value_parser!(u64).range(1..=1 << 20))]
    pub cache_mb: u64,

    /// Where durable state lives: `sled` (one node, in --data-dir) or `etcd` (a
    /// cluster of nodes sharing --etcd-endpoints).
    #[arg(long, env = "JETWAY_STORE", default_value = "sled", value_parser = ["sled", "etcd"])]
    pub store: String,

    /// etcd client URLs, comma-separated (with --store etcd).
    #[arg(
        long,
        env = "JETWAY_ETCD_ENDPOINTS",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:2379"
    )]
    pub etcd_endpoints: Vec<String>,

    /// Key prefix of this Jetway cluster's records in etcd.
    #[arg(long, env = "JETWAY_ETCD_PREFIX", default_value = "jetway/")]
    pub etcd_prefix: String,

    /// How long a seat hold lasts unpaid, in seconds.
    #[arg(long, env = "JETWAY_HOLD_TTL", default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub hold_ttl: u64,

    /// Online check-in opens this many hours before departure.
    #[arg(long, env = "JETWAY_CHECKIN_OPENS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=720))]
    pub checkin_opens: u64,

    /// Online check-in closes this many minutes before departure.
    #[arg(long, env = "JETWAY_CHECKIN_CLOSES", default_value_t = 45, value_parser = clap::value_parser!(u64).range(0..=1440))]
    pub checkin_closes: u64,

    /// How long a session token lasts, in seconds (default 7 days).
    #[arg(long, env = "JETWAY_SESSION_TTL", default_value_t = 7 * 86_400, value_parser = clap::value_parser!(u64).range(60..))]
    pub session_ttl: u64,

    /// Serve the browser app from this directory instead of the copy built into the
    /// binary (for working on the app without rebuilding).
    #[arg(long, env = "JETWAY_STATIC_DIR")]
    pub static_dir: Option<PathBuf>,

    /// Recent changes kept per flight for `seats.subscribe {since}`.
    #[arg(long, env = "JETWAY_REPLAY_BUFFER", default_value_t = crate::inventory::DEFAULT_REPLAY)]
    pub replay_buffer: usize,

    /// Outbound queue bound per connection, in messages.
    #[arg(long, env = "JETWAY_QUEUE_MESSAGES", default_value_t = 1024)]
    pub queue_messages: usize,

    /// Outbound queue bound per connection, in bytes.
    #[arg(long, env = "JETWAY_QUEUE_BYTES", default_value_t = 4 << 20)]
    pub queue_bytes: usize,

    /// Seconds of silence from a client before the server pings it.
    #[arg(long, env = "JETWAY_PING_INTERVAL", default_value_t = 20)]
    pub ping_interval: u64,

    /// Seconds without any frame (a pong included) before a connection is closed as dead.
    #[arg(long, env = "JETWAY_IDLE_TIMEOUT", default_value_t = 60)]
    pub idle_timeout: u64,

    /// Log format: plain or json.
    #[arg(long, env = "JETWAY_LOG_FORMAT", default_value = "plain", value_parser = ["plain", "json"])]
    pub log_format: String,

    /// Do not seed the demo schedule into an empty database.
    #[arg(long, env = "JETWAY_NO_SEED", default_value_t = false)]
    pub no_seed: bool,

    /// Abuse limits and the WebSocket Origin allowlist (docs/security.md).
    #[command(flatten)]
    pub limits: crate::server::limits::LimitsConfig,

    /// Creates or updates the user `admin` (role admin) with this password at start.
    /// Prefer the environment variable: a flag shows in the process list.
    #[arg(long, env = "JETWAY_ADMIN_PASSWORD", hide_env_values = true)]
    pub admin_password: Option<String>,

    /// Renames a passenger account at start, `OLD=NEW` (e.g. `admin=admin-2019`), keeping
    /// its id, bookings, orders and sessions. The way out when a passenger holds the
    /// reserved name `admin` (docs/security.md); does nothing if OLD is no passenger.
    #[arg(long, env = "JETWAY_RENAME_PASSENGER", value_name = "OLD=NEW")]
    pub rename_passenger: Option<String>,

    /// Tests only: hash passwords with Argon2's minimum cost (m=8 KiB, t=1) so that a
    /// test can make 100,000 logins. Never set it in production.
    #[arg(
        long,
        env = "JETWAY_INSECURE_FAST_HASHING",
        hide = true,
        default_value_t = false
    )]
    pub insecure_fast_hashing: bool,

    /// Payment gateway: the built-in sandbox, or Stripe's API.
    #[arg(long, env = "JETWAY_PAYMENTS", default_value = "sandbox", value_parser = ["sandbox", "stripe"])]
    pub payments: String,

    /// Base URL of Stripe's API (point it at localstripe for tests).
    #[arg(long, env = "JETWAY_STRIPE_API_BASE", default_value = crate::payments::stripe::DEFAULT_API_BASE)]
    pub stripe_api_base: String,

    /// Stripe secret key; set it in the environment, never on the command line.
    #[arg(skip = std::env::var("STRIPE_SECRET_KEY").ok())]
    pub stripe_secret_key: Option<String>,

    /// Secret that signs Stripe webhooks; set it in the environment.
    #[arg(skip = std::env::var("STRIPE_WEBHOOK_SECRET").ok())]
    pub stripe_webhook_secret: Option<String>,

    /// A command other than serving (`jetway backup DIR`).
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Timeout of one payment-gateway call, in seconds.
    #[arg(long, env = "JETWAY_GATEWAY_TIMEOUT", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=120))]
    pub gateway_timeout: u64,

    /// How often unfinished payment attempts are reconciled with the gateway, in seconds.
    #[arg(long, env = "JETWAY_RECONCILE_INTERVAL", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub reconcile_interval: u64,

    /// A refund still unfinished this many seconds after it was opened first looks
    /// for itself at the gateway before asking again (Stripe forgets idempotency keys
    /// after 24 hours; the refund's own id in its metadata stays).
    #[arg(long, env = "JETWAY_REFUND_LOOKUP_AFTER", default_value_t = 3600, value_parser = clap::value_parser!(u64).range(0..=72_000))]
    pub refund_lookup_after: u64,
}

/// What `jetway` does instead of serving.
#[derive(Clone, clap::Subcommand)]
pub enum Command {
    /// Saves a consistent snapshot of a running server's database into DIR, a new
    /// data dir that a server can be started on (docs/deploy.md, "Backups").
    Backup(crate::backup::BackupArgs),
}

impl Config {
    /// Defaults with a given data dir: what tests start from.
    pub fn for_tests(data_dir: PathBuf) -> Self {
        let mut c = Config::parse_from(["jetway"]);
        c.listen = "127.0.0.1:0".parse().unwrap_or(c.listen);
        c.data_dir = data_dir;
        c
    }
}
