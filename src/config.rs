//! Command-line flags; each also reads `JETWAY_<NAME>` from the environment.

use clap::{Parser, ValueEnum};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

/// Where durable state lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StoreKind {
    /// One node, in --data-dir.
    Sled,
    /// A cluster of nodes sharing --etcd-endpoints.
    Etcd,
}

/// The payment gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PaymentsKind {
    /// The built-in sandbox (test cards, no money).
    Sandbox,
    /// Stripe's API.
    Stripe,
}

/// The header a trusted proxy writes the client's address into. Only that one is
/// read: a proxy passes the other through as the client sent it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum ForwardedHeader {
    /// `X-Forwarded-For` (nginx's `$proxy_add_x_forwarded_for`, Caddy, HAProxy's
    /// `option forwardfor`, Traefik).
    #[default]
    XForwardedFor,
    /// RFC 7239 `Forwarded` (its `for=`).
    Forwarded,
}

/// The log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Plain,
    Json,
}

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

    /// sled's page cache, in MiB, counted by the pages' size on disk (in memory they
    /// take more); sled's own default, 1 GiB, would let the resident size grow
    /// further than that.
    #[arg(long, env = "JETWAY_CACHE_MB", default_value_t = crate::store::sled_store::DEFAULT_CACHE_MB, value_parser = clap::value_parser!(u64).range(1..=1 << 20))]
    pub cache_mb: u64,

    /// Under concurrent writes, how long (in microseconds) a group commit may wait for
    /// more writes before it syncs, so that one fsync covers more of them; a lone
    /// write never waits. Off (0) by default: it pays with hundreds of concurrent
    /// writers and costs with a handful (docs/benchmarks.md, "The twentieth session").
    #[arg(long, env = "JETWAY_COMMIT_DELAY_US", default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=100_000))]
    pub commit_delay_us: u64,

    /// Where durable state lives: `sled` (one node, in --data-dir) or `etcd` (a
    /// cluster of nodes sharing --etcd-endpoints).
    #[arg(long, env = "JETWAY_STORE", value_enum, default_value_t = StoreKind::Sled)]
    pub store: StoreKind,

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

    /// Sessions a single node keeps in memory for lookups; past it a session is read
    /// from the store (slower, never wrong). A cluster node always reads the store.
    #[arg(long, env = "JETWAY_SESSION_CACHE", default_value_t = 65_536)]
    pub session_cache: usize,

    /// Sessions one account may hold (expired ones not yet swept count): a login past
    /// it ends the account's oldest session (its connections are logged out). Bounds
    /// what a login loop stores.
    #[arg(long, env = "JETWAY_MAX_SESSIONS_PER_USER", default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub max_sessions_per_user: u64,

    /// Logins and logouts kept in one account's history, and failed logins apart
    /// (which others can cause): each new one past it deletes the oldest of its kind.
    /// Booking and payment events are all kept.
    #[arg(long, env = "JETWAY_MAX_ACCOUNT_EVENTS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub max_account_events: u64,

    /// Serve the browser app from this directory instead of the copy built into the
    /// binary (for working on the app without rebuilding).
    #[arg(long, env = "JETWAY_STATIC_DIR")]
    pub static_dir: Option<PathBuf>,

    /// Recent changes kept per flight for `seats.subscribe {since}` (1 to 16384: a
    /// longer replay costs every flight its memory and a resume more than a snapshot).
    #[arg(long, env = "JETWAY_REPLAY_BUFFER", default_value_t = crate::inventory::DEFAULT_REPLAY, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=16_384))]
    pub replay_buffer: usize,

    /// Outbound queue bound per connection, in messages.
    #[arg(long, env = "JETWAY_QUEUE_MESSAGES", default_value_t = 1024)]
    pub queue_messages: u32,

    /// Outbound queue bound per connection, in bytes.
    #[arg(long, env = "JETWAY_QUEUE_BYTES", default_value_t = 4 << 20)]
    pub queue_bytes: u32,

    /// Seconds of silence from a client before the server pings it (at most a day: a
    /// ping also keeps the connection's reply budget current, see
    /// [`crate::server::limits::PaidUntil`]).
    #[arg(long, env = "JETWAY_PING_INTERVAL", default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub ping_interval: u64,

    /// Seconds without any frame (a pong included) before a connection is closed as dead.
    #[arg(long, env = "JETWAY_IDLE_TIMEOUT", default_value_t = 60)]
    pub idle_timeout: u64,

    /// Log format: plain or json.
    #[arg(long, env = "JETWAY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Plain)]
    pub log_format: LogFormat,

    /// Do not add the demo schedule (today's and the next 13 days' made-up flights,
    /// those missing) at start. Required with a live Stripe key.
    #[arg(long, env = "JETWAY_NO_SEED", default_value_t = false)]
    pub no_seed: bool,

    /// With a live Stripe key, start even though the store (the data dir, or the
    /// cluster's etcd) still has flights of the demo schedule on sale (seeded by an
    /// earlier start), to cancel them: until then their made-up seats are sold for
    /// real money. Without it such a start is refused.
    #[arg(long, env = "JETWAY_KEEP_DEMO_FLIGHTS", default_value_t = false)]
    pub keep_demo_flights: bool,

    /// Abuse limits and the WebSocket Origin allowlist (docs/security.md).
    #[command(flatten)]
    pub limits: LimitsConfig,

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
    #[arg(long, env = "JETWAY_PAYMENTS", value_enum, default_value_t = PaymentsKind::Sandbox)]
    pub payments: PaymentsKind,

    /// Base URL of Stripe's API (point it at localstripe for tests).
    #[arg(long, env = "JETWAY_STRIPE_API_BASE", default_value = crate::payments::stripe::DEFAULT_API_BASE)]
    pub stripe_api_base: String,

    /// Stripe secret key; set it in the environment, never on the command line.
    #[arg(skip = std::env::var("STRIPE_SECRET_KEY").ok())]
    pub stripe_secret_key: Option<String>,

    /// Stripe publishable key (`pk_...`), handed to browsers at `/client.json` so that
    /// the app can complete 3-D Secure with Stripe.js. Public by design.
    #[arg(long, env = "JETWAY_STRIPE_PUBLISHABLE_KEY")]
    pub stripe_publishable_key: Option<String>,

    /// Secret that signs Stripe webhooks; set it in the environment.
    #[arg(skip = std::env::var("STRIPE_WEBHOOK_SECRET").ok())]
    pub stripe_webhook_secret: Option<String>,

    /// A command other than serving (`jetway backup DIR`).
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Timeout of one payment-gateway call, in seconds.
    #[arg(long, env = "JETWAY_GATEWAY_TIMEOUT", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=120))]
    pub gateway_timeout: u64,

    /// How often unfinished payment attempts are reconciled with the gateway, in seconds
    /// (at most an hour: an orphaned charge waits that long for its refund).
    #[arg(long, env = "JETWAY_RECONCILE_INTERVAL", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
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

    /// Whether payments take real money: Stripe with a live key.
    pub fn live_payments(&self) -> bool {
        let live_key = self
            .stripe_secret_key
            .as_deref()
            .is_some_and(|k| k.starts_with("sk_live_") || k.starts_with("rk_live_"));
        self.payments == PaymentsKind::Stripe && live_key
    }

    /// Settings each valid alone that together make no sense.
    pub fn check(&self) -> Result<(), String> {
        if self.checkin_opens * 60 <= self.checkin_closes {
            return Err(format!(
                "--checkin-opens ({} hours before departure) must be earlier than \
                 --checkin-closes ({} minutes before departure): check-in would never open",
                self.checkin_opens, self.checkin_closes
            ));
        }
        if self.idle_timeout <= self.ping_interval {
            return Err(format!(
                "--idle-timeout ({} s) must be longer than --ping-interval ({} s): every quiet \
                 client would be closed before it is pinged",
                self.idle_timeout, self.ping_interval
            ));
        }
        if self.live_payments() && !self.no_seed {
            return Err(
                "the demo schedule (made-up flights) is added at every start \
                 unless --no-seed (JETWAY_NO_SEED=true) is given; with a live Stripe key \
                 its seats would be sold for real money: start with --no-seed"
                    .into(),
            );
        }
        Ok(())
    }
}

/// The abuse limits (flattened into [`crate::Config`]).
#[derive(Debug, Clone, clap::Args)]
pub struct LimitsConfig {
    /// Requests per second one connection may send, on average (0: no limit); a frame
    /// counts as one request per started 4 KiB.
    #[arg(long, env = "JETWAY_RATE_LIMIT", default_value_t = 100)]
    pub rate_limit: u32,

    /// Requests one connection may send in a burst above the average rate.
    #[arg(long, env = "JETWAY_RATE_BURST", default_value_t = 200)]
    pub rate_burst: u32,

    /// Bytes of replies per second one connection is sent, on average (0: no limit):
    /// past its burst, a connection's next request is read only once its replies so
    /// far are paid for (nothing is refused; large replies cost the server CPU).
    #[arg(long, env = "JETWAY_REPLY_RATE", default_value_t = 1 << 20)]
    pub reply_rate: u32,

    /// Bytes of replies one connection may be sent in a burst above the average rate.
    #[arg(long, env = "JETWAY_REPLY_BURST", default_value_t = 4 << 20)]
    pub reply_burst: u32,

    /// Requests refused with `rate_limited` in a row before the connection is closed (1008).
    #[arg(long, env = "JETWAY_RATE_LIMIT_CLOSE", default_value_t = 200)]
    pub rate_limit_close: u32,

    /// Open TCP connections (WebSocket or plain HTTP) from one IP address (0: no limit).
    #[arg(long, env = "JETWAY_MAX_CONNECTIONS_PER_ADDR", default_value_t = 64)]
    pub max_connections_per_addr: usize,

    /// Apply the per-address limits (connections, login backoff by address) to
    /// loopback clients too; by default a local reverse proxy or load tool is exempt.
    #[arg(long, env = "JETWAY_LIMIT_LOOPBACK", default_value_t = false)]
    pub limit_loopback: bool,

    /// Seconds a connection may take to send a complete HTTP request or WebSocket
    /// upgrade; a connection that is not a WebSocket is also closed this long after
    /// its last request started.
    #[arg(long, env = "JETWAY_HANDSHAKE_TIMEOUT", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub handshake_timeout: u64,

    /// Flights one connection may watch at once.
    #[arg(long, env = "JETWAY_MAX_SUBSCRIPTIONS", default_value_t = 64)]
    pub max_subscriptions: usize,

    /// Unexpired holds one user may have open at once (0: no limit).
    #[arg(long, env = "JETWAY_MAX_OPEN_HOLDS", default_value_t = 8)]
    pub max_open_holds: usize,

    /// Failed logins per username, and per address, before each further attempt
    /// has to wait (1 s, doubling).
    #[arg(long, env = "JETWAY_LOGIN_FREE_ATTEMPTS", default_value_t = 5)]
    pub login_free_attempts: u32,

    /// Longest login backoff, in seconds; failures are forgotten after twice this
    /// long without another.
    #[arg(long, env = "JETWAY_LOGIN_BACKOFF_MAX", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub login_backoff_max: u64,

    /// Accounts one client address may register per hour (a bucket of this many,
    /// refilled evenly); each costs a password hash on the one shared hashing queue.
    /// 0: no limit. Loopback is exempt unless --limit-loopback.
    #[arg(long, env = "JETWAY_REGISTRATIONS_PER_HOUR", default_value_t = 60)]
    pub registrations_per_hour: u32,

    /// How many leading bits of an IPv6 client address the per-address limits count
    /// it by (a host is usually given a whole /64); 128 counts every address alone.
    #[arg(long, env = "JETWAY_IPV6_PREFIX", default_value_t = 64, value_parser = clap::value_parser!(u8).range(32..=128))]
    pub ipv6_prefix: u8,

    /// Reverse proxies (CIDRs or addresses, comma-separated) whose
    /// `--forwarded-header` gives the client's address for the per-address limits and
    /// logs; from any other peer it is ignored. A WebSocket upgrade a trusted proxy
    /// forwarded (with that header) may carry a public Host to a loopback server.
    #[arg(long, env = "JETWAY_TRUSTED_PROXIES", value_delimiter = ',', value_parser = parse_cidr)]
    pub trusted_proxies: Vec<ipnet::IpNet>,

    /// Which header the trusted proxies write the client's address into; the other
    /// is ignored (a proxy passes it through as the client sent it).
    #[arg(long, env = "JETWAY_FORWARDED_HEADER", value_enum, default_value_t = ForwardedHeader::XForwardedFor)]
    pub forwarded_header: ForwardedHeader,

    /// Origins (scheme://host[:port], comma-separated) allowed to open a WebSocket
    /// besides the server's own; `*` allows any. Requests without `Origin` are allowed.
    #[arg(long, env = "JETWAY_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,
}

/// A `--trusted-proxies` entry: a CIDR, or one address.
pub fn parse_cidr(s: &str) -> Result<ipnet::IpNet, String> {
    let s = s.trim();
    s.parse::<ipnet::IpNet>()
        .or_else(|_| s.parse::<IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("`{s}` is not an address or CIDR (e.g. 10.0.0.0/8)"))
}

impl LimitsConfig {
    /// Whether per-address limits apply to this peer.
    pub fn limits_addr(&self, ip: IpAddr) -> bool {
        self.limit_loopback || !is_loopback(ip)
    }
}

/// Whether `ip` is a loopback address, an IPv4-mapped IPv6 one included.
pub fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_check_in_window_that_could_never_open_is_refused() {
        let c = |opens: &str, closes: &str| {
            Config::parse_from([
                "jetway",
                "--checkin-opens",
                opens,
                "--checkin-closes",
                closes,
            ])
            .check()
        };
        assert!(c("30", "45").is_ok());
        assert!(c("1", "59").is_ok());
        let e = c("1", "120").unwrap_err();
        assert!(
            e.contains("--checkin-opens") && e.contains("never open"),
            "{e}"
        );
        assert!(c("1", "60").is_err());
    }

    #[test]
    fn an_idle_timeout_not_past_the_ping_interval_is_refused() {
        let c = |ping: &str, idle: &str| {
            Config::parse_from(["jetway", "--ping-interval", ping, "--idle-timeout", idle]).check()
        };
        assert!(c("20", "60").is_ok());
        assert!(c("20", "21").is_ok());
        for idle in ["20", "15", "0"] {
            let e = c("20", idle).unwrap_err();
            assert!(e.contains("--idle-timeout"), "{e}");
        }
    }

    /// Made-up flights are never put on sale for real money: a live Stripe key
    /// needs --no-seed (test keys, and the sandbox, seed as before).
    #[test]
    fn a_live_stripe_key_needs_no_seed() {
        let c = |key: &str, no_seed: bool| {
            let mut c = Config::parse_from(["jetway", "--payments", "stripe"]);
            c.stripe_secret_key = Some(key.into());
            c.no_seed = no_seed;
            c.check()
        };
        for live in ["sk_live_abc", "rk_live_abc"] {
            let e = c(live, false).unwrap_err();
            assert!(e.contains("--no-seed"), "{e}");
            assert!(c(live, true).is_ok());
        }
        assert!(c("sk_test_abc", false).is_ok());
        let mut sandbox = Config::parse_from(["jetway"]);
        sandbox.stripe_secret_key = Some("sk_live_abc".into());
        assert!(sandbox.check().is_ok());
    }

    #[test]
    fn bounded_options_refuse_values_outside_their_range() {
        let parse = |flag: &str, v: &str| Config::try_parse_from(["jetway", flag, v]);
        let top = parse("--replay-buffer", "16384").unwrap();
        assert_eq!(top.replay_buffer, 16_384);
        let top = parse("--reconcile-interval", "3600").unwrap();
        assert_eq!(top.reconcile_interval, 3600);
        for (flag, over) in [
            ("--replay-buffer", "16385"),
            ("--reconcile-interval", "3601"),
        ] {
            for v in ["0", over, "18446744073709551615"] {
                assert!(parse(flag, v).is_err(), "{flag} {v}");
            }
        }
    }

    #[test]
    fn loopback_is_exempt_unless_configured() {
        let mut cfg = Config::parse_from(["jetway"]).limits;
        assert!(!cfg.limits_addr("127.0.0.1".parse().unwrap()));
        assert!(!cfg.limits_addr("::1".parse().unwrap()));
        assert!(!cfg.limits_addr("::ffff:127.0.0.1".parse().unwrap()));
        assert!(cfg.limits_addr("203.0.113.9".parse().unwrap()));
        cfg.limit_loopback = true;
        assert!(cfg.limits_addr("127.0.0.1".parse().unwrap()));
    }
}
