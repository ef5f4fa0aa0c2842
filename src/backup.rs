//! `jetway backup DIR`: asks a running server for a consistent snapshot of its
//! database (`POST /admin/backup`, admin only) and writes it into DIR as a data dir
//! that a server can be started on. sled locks its files while the server runs, so
//! the server itself reads the snapshot (see `App::backup`).

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::path::PathBuf;
use tokio_tungstenite::tungstenite::Message;

/// Flags of `jetway backup`.
#[derive(Clone, clap::Args)]
pub struct BackupArgs {
    /// New (or empty) directory to write the backup into.
    pub dir: PathBuf,

    /// Base URL of the running server.
    #[arg(
        long,
        env = "JETWAY_BACKUP_SERVER",
        default_value = "http://127.0.0.1:8080"
    )]
    pub server: String,

    /// An admin session token, from the environment only; without it the command
    /// logs in as `admin` with JETWAY_ADMIN_PASSWORD (and logs out after).
    #[arg(skip = std::env::var("JETWAY_ADMIN_TOKEN").ok())]
    pub token: Option<String>,

    /// A file keeping the `device_token` the server gives this command's password
    /// logins (written 0600, read at the next run). A login that sends it is counted
    /// apart from `admin`'s other failed logins, so wrong passwords sent for `admin`
    /// from anywhere cannot hold up scheduled backups (docs/security.md, "Known
    /// devices"). Give it for every scheduled backup.
    #[arg(long, env = "JETWAY_BACKUP_DEVICE_FILE", value_name = "PATH")]
    pub device_file: Option<PathBuf>,
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Saves the backup; returns how many records it holds.
pub async fn run(args: BackupArgs, admin_password: Option<String>) -> Result<usize, String> {
    let dir = args.dir.clone();
    crate::store::snapshot::ensure_new(&dir).map_err(|e| e.to_string())?;
    let base = args.server.trim_end_matches('/').to_owned();
    let (token, mut session) = match args.token {
        Some(t) => (t, None),
        None => {
            let password = admin_password.ok_or(
                "set JETWAY_ADMIN_TOKEN (an admin session token) or JETWAY_ADMIN_PASSWORD",
            )?;
            let (token, ws) = login(&base, &password, args.device_file.as_deref()).await?;
            (token, Some(ws))
        }
    };
    let downloaded = download(&base, &token).await;
    if let Some(ws) = session.as_mut() {
        let _ = call(ws, "auth.logout", json!({})).await;
    }
    let bytes = downloaded?;
    tokio::task::spawn_blocking(move || crate::store::snapshot::restore(&bytes, &dir))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
}

async fn download(base: &str, token: &str) -> Result<Vec<u8>, String> {
    let resp = reqwest::Client::new()
        .post(format!("{base}/admin/backup"))
        .bearer_auth(token)
        .send()
        .await
        .map_err(|e| format!("cannot reach {base}: {e}"))?;
    let status = resp.status();
    let body = resp.bytes().await.map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(format!(
            "the server refused the backup ({status}): {}",
            String::from_utf8_lossy(&body)
        ));
    }
    Ok(body.to_vec())
}

async fn login(
    base: &str,
    password: &str,
    device_file: Option<&std::path::Path>,
) -> Result<(String, Ws), String> {
    let url = match base.split_once("://") {
        Some(("https", rest)) => format!("wss://{rest}/ws"),
        Some((_, rest)) => format!("ws://{rest}/ws"),
        None => format!("ws://{base}/ws"),
    };
    let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .map_err(|e| format!("cannot reach {url}: {e}"))?;
    let mut params = json!({"username": "admin", "password": password});
    // the device file only spares the login the username's backoff: a file that
    // cannot be read or written is warned about, and the backup goes on
    let known = match device_file {
        Some(path) => match tokio::fs::read_to_string(path).await {
            Ok(t) => Some(t.trim().to_owned()).filter(|t| !t.is_empty()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read the device file; logging in without it");
                None
            }
        },
        None => None,
    };
    if let Some(t) = &known {
        params["device_token"] = json!(t);
    }
    let reply = call(&mut ws, "auth.login", params).await?;
    let token = reply["token"]
        .as_str()
        .ok_or("auth.login returned no token")?;
    if let (Some(path), Some(device)) = (device_file, reply["device_token"].as_str()) {
        if known.as_deref() != Some(device) {
            if let Err(e) = write_private(path, device).await {
                tracing::warn!(error = %e, "the device token was not kept; the next backup logs in as a new device");
            }
        }
    }
    Ok((token.to_owned(), ws))
}

/// Writes `text` to `path`, readable by its owner only.
async fn write_private(path: &std::path::Path, text: &str) -> Result<(), String> {
    use tokio::io::AsyncWriteExt;
    let mut open = tokio::fs::OpenOptions::new();
    open.write(true).create(true).truncate(true);
    #[cfg(unix)]
    open.mode(0o600);
    let fail = |e: std::io::Error| format!("cannot write {}: {e}", path.display());
    let mut f = open.open(path).await.map_err(fail)?;
    // a file made earlier with a wider mode is narrowed too
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))
            .await
            .map_err(fail)?;
    }
    f.write_all(text.as_bytes()).await.map_err(fail)?;
    f.sync_all().await.map_err(fail)
}

/// One JSON-RPC call; pushes before its reply are skipped.
async fn call(ws: &mut Ws, method: &str, params: Value) -> Result<Value, String> {
    let request = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
    ws.send(Message::text(request.to_string()))
        .await
        .map_err(|e| e.to_string())?;
    while let Some(msg) = ws.next().await {
        let Message::Text(text) = msg.map_err(|e| e.to_string())? else {
            continue;
        };
        let v: Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
        if v["id"] != 1 {
            continue;
        }
        return match v.get("result") {
            Some(r) => Ok(r.clone()),
            None => Err(format!("{method}: {}", v["error"]["message"])),
        };
    }
    Err(format!("{method}: the connection closed"))
}
