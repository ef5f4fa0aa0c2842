//! No password, session token, card data or Stripe key appears in the logs (debug
//! level, both formats) or in plain form anywhere in the data dir after a full flow.

mod common;

use common::*;
use serde_json::json;
use std::path::Path;
use std::process::{Command, Stdio};

const STRIPE_KEY: &str = "sk_test_51SecretKeyThatMustNeverLeak0000";
const WEBHOOK_SECRET: &str = "whsec_SecretThatMustNeverLeak1111";
const ADMIN_PASSWORD: &str = "admin secret passphrase 9";
const CARD: &str = "4242424242424242";

/// Every file under `dir`, as bytes.
fn files(dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            files(&p, out);
        } else if let Ok(b) = std::fs::read(&p) {
            out.push((p.display().to_string(), b));
        }
    }
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

async fn full_flow(log_format: &str) {
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("server.log");
    let data = dir.path().join("data");
    let log = std::fs::File::create(&log_path).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let mut child = Command::new(env!("CARGO_BIN_EXE_jetway"))
        .args(["--listen", &addr, "--log-format", log_format, "--data-dir"])
        .arg(&data)
        // every library at trace too (the server caps those that log frames or
        // headers); sled's trace is only volume
        .env("RUST_LOG", "trace,sled=info")
        .env("STRIPE_SECRET_KEY", STRIPE_KEY)
        .env("STRIPE_WEBHOOK_SECRET", WEBHOOK_SECRET)
        .env("JETWAY_ADMIN_PASSWORD", ADMIN_PASSWORD)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let sock: std::net::SocketAddr = addr.parse().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while http_get(sock, "/readyz")
        .await
        .is_none_or(|(c, _)| c != 200)
    {
        assert!(std::time::Instant::now() < deadline, "server did not start");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let url = format!("ws://{addr}/ws");
    let mut c = Client::connect(&url).await;
    let name = unique_name("secret");
    let reg = c.register(&name).await;
    let mut tokens = vec![reg["token"].as_str().unwrap().to_owned()];
    let mut other = Client::connect(&url).await;
    assert_eq!(
        other
            .reason(
                "auth.login",
                json!({"username": name, "password": "my wrong password 7"})
            )
            .await,
        "bad_credentials"
    );
    let login = other
        .ok(
            "auth.login",
            json!({"username": name, "password": PASSWORD}),
        )
        .await;
    tokens.push(login["token"].as_str().unwrap().to_owned());
    let mut third = Client::connect(&url).await;
    third.ok("auth.resume", json!({"token": tokens[1]})).await;
    let mut adm = Client::connect(&url).await;
    let a = adm
        .ok(
            "auth.login",
            json!({"username": "admin", "password": ADMIN_PASSWORD}),
        )
        .await;
    tokens.push(a["token"].as_str().unwrap().to_owned());
    let f = later_flight(&mut c).await;
    let fid = f["flight_id"].as_str().unwrap();
    let seats = free_seats(&mut c, fid, "economy", 2).await;
    let b1 = hold(&mut c, fid, &seats[..1], "h1").await;
    let b2 = hold(&mut c, fid, &seats[1..], "h2").await;
    // a careless client sends a card number as the payment method
    let r = c
        .call(
            "booking.pay",
            json!({"locator": b2["locator"], "payment_method": CARD, "request_id": "pc"}),
        )
        .await;
    assert_eq!(r["error"]["data"]["reason"], "invalid_params", "{r}");
    c.ok(
        "booking.pay",
        json!({"locator": b1["locator"], "payment_method": "pm_card_visa", "request_id": "p1"}),
    )
    .await;
    c.ok(
        "booking.cancel",
        json!({"locator": b1["locator"], "request_id": "c1"}),
    )
    .await;
    other.ok("auth.logout", json!({})).await;
    assert_eq!(
        third.reason("bookings.list", json!({})).await,
        "invalid_token"
    );
    let _ = http_get(sock, "/metrics").await;
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    assert!(child.wait().unwrap().success());

    let logs = std::fs::read(&log_path).unwrap();
    assert!(logs.len() > 1000, "debug logs were written");
    // a log file gets plain text, not a terminal's colour codes
    assert!(
        !logs.contains(&0x1b),
        "escape codes in the {log_format} log file"
    );
    let mut all = vec![("server.log".to_owned(), logs)];
    files(&data, &mut all);
    let mut secrets: Vec<(&str, String)> = vec![
        ("password", PASSWORD.into()),
        ("wrong password", "my wrong password 7".into()),
        ("admin password", ADMIN_PASSWORD.into()),
        ("stripe key", STRIPE_KEY.into()),
        ("webhook secret", WEBHOOK_SECRET.into()),
        ("card number", CARD.into()),
    ];
    for t in &tokens {
        secrets.push(("session token", t.clone()));
    }
    // tungstenite's trace of a frame writes its payload in hex
    let hex = |s: &str| s.bytes().map(|b| format!("{b:02x}")).collect::<String>();
    for (what, s) in secrets.clone() {
        secrets.push((what, hex(&s)));
    }
    for (file, bytes) in &all {
        for (what, s) in &secrets {
            assert!(
                !contains(bytes, s),
                "{what} found in {file} ({log_format} logs)"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secrets_in_plain_logs_or_data() {
    full_flow("plain").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secrets_in_json_logs_or_data() {
    full_flow("json").await;
}

/// A password hashed at the test-only minimum cost (`--insecure-fast-hashing`) is
/// hashed again at the production cost at its first login without the flag.
#[tokio::test]
async fn a_cheap_password_hash_is_made_strong_at_the_next_login() {
    let stored = |s: &Server| {
        let name = jetway::domain::Username::parse("frugal").unwrap();
        s.app()
            .store
            .user_by_name(&name)
            .unwrap()
            .unwrap()
            .password_hash
    };
    let s = Server::start_with(|c| c.insecure_fast_hashing = true).await;
    s.client().await.register("frugal").await;
    let cheap = stored(&s);
    assert!(cheap.contains("m=8,t=1"), "{cheap}");
    let dir = s.stop_keep_dir().await;
    let s = Server::try_start_in(dir, |_| {}).await.expect("restarts");
    let mut c = s.client().await;
    c.ok(
        "auth.login",
        json!({"username": "frugal", "password": PASSWORD}),
    )
    .await;
    let strong = stored(&s);
    assert!(strong.contains("m=19456,t=2"), "{strong}");
    let mut again = s.client().await;
    again
        .ok(
            "auth.login",
            json!({"username": "frugal", "password": PASSWORD}),
        )
        .await;
    assert_eq!(stored(&s), strong, "made once");
    s.stop().await;
}

/// A password changed while a login with the old one is being checked (on a
/// cluster, an operator restarting a node with a new admin password while a login
/// runs through another): the login opens no session, since the old password's
/// sessions are being revoked. Its write expects the user as checked, conflicts, and
/// the login is checked again against the new password, which the old one fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_checked_against_a_password_changed_meanwhile_opens_no_session() {
    use common::faulty::{faulty_app, register};
    use jetway::store::{Batch, Store};
    let dir = tempfile::tempdir().unwrap();
    let (app, _faulty) = faulty_app(dir.path(), |_| {}).await;
    let ada = register(&app, "ada").await.unwrap();
    let name = jetway::domain::Username::parse("ada").unwrap();
    let mut changed = app.store.user_by_name(&name).unwrap().unwrap();
    changed.password_hash = "$argon2id$v=19$m=8,t=1,p=1$changed".into();
    let sessions = |store: &dyn Store| {
        let all = store.sessions().unwrap();
        all.into_iter().filter(|s| s.user_id == ada.user_id).count()
    };
    let before = sessions(&*app.store);

    let (o, _rx) = jetway::fanout::outbox(jetway::fanout::QueueLimits::default());
    let mut conn = None;
    let p = jetway::protocol::params::decode(json!({"username": "ada", "password": PASSWORD}));
    let store = app.store.clone();
    let mut told = Vec::new();
    let login = app.login(p.unwrap(), &o, &mut conn, |ok| {
        if told.is_empty() {
            let change = Batch {
                users: vec![changed.clone()],
                ..Default::default()
            };
            store.write(&change).unwrap();
        }
        told.push(ok);
    });
    let r = login.await;
    // the old password matched when first checked; the front counts the second check
    // as a failure
    assert_eq!(told, [true, false]);
    assert!(
        matches!(r, Err(jetway::app::AppError::BadCredentials)),
        "{:?}",
        r.map(|_| ())
    );
    assert!(conn.is_none(), "logged in");
    assert_eq!(sessions(&*app.store), before, "a session was opened");
}
