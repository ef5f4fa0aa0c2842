//! Accounts and sessions: register, login, resume, logout, the `admin` account, and
//! sweeping expired sessions. Passwords are hashed with Argon2id (OWASP: m=19 MiB,
//! t=2, p=1) on the blocking pool; tokens are 256 random bits, stored only as their
//! SHA-256.

use argon2::password_hash::{
    rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString,
};
use argon2::{Algorithm, Argon2, Params, Version};
use hmac::{Hmac, Mac};
use rand::RngCore;
use serde_json::json;
use sha2::{Digest, Sha256};
use std::sync::Arc;

use super::{event, App};
use crate::app::AppError;
use crate::domain::{self, rfc3339, Millis, UserId, Username};
use crate::fanout::Outbox;
use crate::protocol::params;
use crate::protocol::results::{Done, LoggedIn, UserView};
use crate::store::{
    AccountEvent, AccountLine, Batch, Role, SessionKey, SessionRecord, StoreError, UserRecord,
};

pub const MIN_PASSWORD: usize = 8;
pub const MAX_PASSWORD: usize = 128;
/// The account `JETWAY_ADMIN_PASSWORD` manages; nobody can register it.
pub const ADMIN_NAME: &str = "admin";
/// Sessions revoked per write: two deletes each (the session and its entry in its
/// user's index) stay within etcd's default limit of 128 operations per transaction.
const REVOKE_CHUNK: usize = 50;
/// The oldest of `count` held (`oldest`: the oldest of them, oldest first) to end so
/// that at most `keep` are left: [`ENDED_PER_LOGIN`] at most.
fn oldest_past<T>(count: usize, mut oldest: Vec<T>, keep: usize) -> Vec<T> {
    let past = count.saturating_sub(keep);
    oldest.truncate(past.min(ENDED_PER_LOGIN));
    oldest
}

/// A cap as a count.
fn cap_count(cap: u64) -> usize {
    usize::try_from(cap).unwrap_or(usize::MAX)
}

/// The user's oldest sessions to end so that at most `keep` are left, by
/// `(created_at, token_hash)` as the user's index orders them. With `unwritten` (a
/// login's session about to be written), it is counted as held, and first made
/// newer than every session of the user this node has (its `created_at` at least
/// 1 ms past the newest), so that a login is newer than every login before it
/// whatever the clocks of the nodes that made them: it is kept, and logins at once
/// agree, before their writes and after, on which sessions are the oldest.
fn sessions_past(
    store: &dyn crate::store::Store,
    user: UserId,
    keep: usize,
    unwritten: Option<&mut SessionRecord>,
) -> Result<Vec<SessionKey>, StoreError> {
    // the newest is read too: the scan counts every entry anyway
    let n = match unwritten {
        Some(_) => usize::MAX,
        None => ENDED_PER_LOGIN,
    };
    let (mut count, mut oldest) = store.oldest_sessions(user, n)?;
    if let Some(own) = unwritten {
        if let Some(newest) = oldest.last() {
            own.created_at = own.created_at.max(newest.created_at.saturating_add(1));
        }
        count += 1;
        oldest.truncate(ENDED_PER_LOGIN);
    }
    Ok(oldest_past(count, oldest, keep))
}

/// Sessions one login ends, and account events one account event deletes, at most
/// past their caps (the rest by the next ones: a cap may have been lowered): its
/// write stays one etcd transaction.
const ENDED_PER_LOGIN: usize = 16;
/// Expired sessions are swept at least this often.
const MAX_SWEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(600);

/// Who a connection is logged in as.
#[derive(Debug, Clone)]
pub struct AuthSession {
    pub user_id: UserId,
    pub username: Username,
    pub role: Role,
    pub token_hash: String,
}

/// A connection's session, if it is logged in: boxed, so that a connection's state
/// keeps 8 bytes for it (64 unboxed) while it is anonymous.
pub type ConnSession = Option<Box<AuthSession>>;

/// Argon2id with the production cost, or with Argon2's minimum cost when `fast` (the
/// hidden test-only flag `--insecure-fast-hashing`). Verifying takes the cost from
/// the stored hash.
fn argon2(fast: bool) -> Argon2<'static> {
    let params = match fast {
        false => Params::new(19 * 1024, 2, 1, None),
        true => Params::new(Params::MIN_M_COST, Params::MIN_T_COST, 1, None),
    };
    Argon2::new(
        Algorithm::Argon2id,
        Version::V0x13,
        params.unwrap_or_default(),
    )
}

pub fn hash_password(password: &str, fast: bool) -> Result<String, argon2::password_hash::Error> {
    let salt = SaltString::generate(&mut OsRng);
    Ok(argon2(fast)
        .hash_password(password.as_bytes(), &salt)?
        .to_string())
}

/// Whether `phc` was made at less than the production cost (by a server running with
/// `--insecure-fast-hashing`): it is then made again at the next login.
fn weaker_than_production(phc: &str) -> bool {
    let Ok(h) = PasswordHash::new(phc) else {
        return false;
    };
    let cost = |name: &str| h.params.get_decimal(name).unwrap_or(0);
    cost("m") < 19 * 1024 || cost("t") < 2
}

/// Whether `password` matches `phc`. A stored hash asking for more than four times
/// the production cost was not written by Jetway and is refused unverified: argon2
/// allocates `m` KiB up front, and a failed allocation aborts the process.
fn verify_password(password: &str, phc: &str) -> bool {
    PasswordHash::new(phc).is_ok_and(|h| {
        let cost = |name: &str| h.params.get_decimal(name).unwrap_or(u32::MAX);
        if cost("m") > 4 * 19 * 1024 || cost("t") > 8 || cost("p") > 4 {
            tracing::error!(
                "a stored password hash asks for more than this server would ever use; refused"
            );
            return false;
        }
        argon2(false)
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    })
}

pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

const DEVICE_PREFIX: &str = "d1.";
const DEVICE_NONCE: usize = 16;
const DEVICE_TAG: usize = 16;

/// The MAC of a device token: the account and the token's nonce, keyed by the
/// account's password hash (random per password and never shown), so that any node
/// checks a token from the user record alone, and a new password ends every token
/// given before it.
fn device_mac(user: &UserRecord, nonce: &[u8]) -> Option<Hmac<Sha256>> {
    // HMAC takes a key of any length: this never fails
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(user.password_hash.as_bytes()).ok()?;
    mac.update(b"jetway device token v1\0");
    mac.update(&user.id.0.to_be_bytes());
    mac.update(nonce);
    Some(mac)
}

/// A fresh device token for a client that has just proven `user`'s password:
/// `d1.` + 16 random bytes + the first 16 bytes of their [`device_mac`], in hex.
fn new_device_token(user: &UserRecord) -> Option<String> {
    let mut nonce = [0u8; DEVICE_NONCE];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let tag = device_mac(user, &nonce)?.finalize().into_bytes();
    Some(format!(
        "{DEVICE_PREFIX}{}{}",
        hex::encode(nonce),
        hex::encode(&tag[..DEVICE_TAG])
    ))
}

/// The device `token` names (its nonce, in hex), if `user`'s current password gave it.
fn device_of(user: &UserRecord, token: &str) -> Option<String> {
    let body = token.strip_prefix(DEVICE_PREFIX)?;
    let lower_hex = |c: u8| c.is_ascii_digit() || (b'a'..=b'f').contains(&c);
    if body.len() != 2 * (DEVICE_NONCE + DEVICE_TAG) || !body.bytes().all(lower_hex) {
        return None;
    }
    let bytes = hex::decode(body).ok()?;
    let (nonce, tag) = bytes.split_at(DEVICE_NONCE);
    device_mac(user, nonce)?.verify_truncated_left(tag).ok()?;
    Some(hex::encode(nonce))
}

fn check_password(password: &str) -> Result<(), AppError> {
    let n = password.chars().count();
    if !(MIN_PASSWORD..=MAX_PASSWORD).contains(&n) {
        return Err(AppError::WeakPassword(format!(
            "password must be {MIN_PASSWORD}-{MAX_PASSWORD} characters"
        )));
    }
    Ok(())
}

fn login_result(
    token: &str,
    s: &SessionRecord,
    user: &UserRecord,
    device_token: Option<String>,
) -> LoggedIn {
    LoggedIn {
        token: token.to_owned(),
        expires_at: s.expires_at,
        user: UserView {
            id: user.id.0,
            username: user.username.clone(),
            role: user.role.as_str(),
        },
        device_token,
    }
}

/// Sweeps expired sessions every quarter of the session TTL (at least every second,
/// at most every [`MAX_SWEEP_INTERVAL`]), so the store and the cache keep only
/// sessions that can still be used, plus at most that much.
pub(super) async fn run_session_sweeper(app: Arc<App>, stop: tokio_util::sync::CancellationToken) {
    let every = std::time::Duration::from_secs(app.config.session_ttl / 4)
        .clamp(std::time::Duration::from_secs(1), MAX_SWEEP_INTERVAL);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => return,
        }
        match app.sweep_sessions().await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(sessions = n, "expired sessions swept"),
            Err(e) => tracing::warn!(error = %e, "sweeping expired sessions failed"),
        }
    }
}

/// A registration whose checks that cost no password hash have passed
/// ([`App::check_registration`]).
pub struct Registration {
    username: Username,
    password: String,
}

impl App {
    /// Runs password hashing on the blocking pool, at most `cores - 1` at a time, so
    /// that a login storm queues instead of starving the reactor and using 19 MiB per
    /// concurrent login.
    async fn password_work<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, AppError> {
        let _slot = self
            .password_slots
            .acquire()
            .await
            .map_err(|_| AppError::Internal)?;
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|_| AppError::Internal)
    }

    fn new_session(&self, user: UserId, now: Millis) -> (String, SessionRecord) {
        let token = random_token();
        let rec = SessionRecord {
            token_hash: token_hash(&token),
            user_id: user,
            created_at: now,
            expires_at: now + self.config.session_ttl as Millis * 1000,
        };
        (token, rec)
    }

    fn attach(
        &self,
        user: &UserRecord,
        rec: &SessionRecord,
        outbox: &Outbox,
        conn: &mut ConnSession,
    ) {
        if let Some(old) = conn.take() {
            self.users.detach(old.user_id, outbox.id());
        }
        if self.sessions.len() < self.config.session_cache {
            self.sessions.insert(rec.token_hash.clone(), rec.clone());
        }
        self.users
            .attach(user.id, &rec.token_hash, rec.expires_at, outbox);
        *conn = Some(Box::new(AuthSession {
            user_id: user.id,
            username: user.username.clone(),
            role: user.role,
            token_hash: rec.token_hash.clone(),
        }));
    }

    /// The checks of a registration that cost no password hash: the name's and the
    /// password's form, and that the name is free. The server front runs them before
    /// it counts a registration against its address, then [`App::register`]s it.
    pub async fn check_registration(
        &self,
        p: params::Credentials,
    ) -> Result<Registration, AppError> {
        let username = Username::parse(&p.username)?;
        check_password(&p.password)?;
        if username.as_str() == ADMIN_NAME {
            return Err(AppError::UsernameTaken);
        }
        self.committer.catch_up().await?;
        if self.store.user_by_name(&username)?.is_some() {
            return Err(AppError::UsernameTaken);
        }
        Ok(Registration {
            username,
            password: p.password,
        })
    }

    pub async fn register(
        &self,
        r: Registration,
        outbox: &Outbox,
        conn: &mut ConnSession,
    ) -> Result<LoggedIn, AppError> {
        let Registration { username, password } = r;
        let fast = self.config.insecure_fast_hashing;
        let hash = self
            .password_work(move || hash_password(&password, fast))
            .await?
            .map_err(|_| AppError::Internal)?;
        let now = domain::now_ms();
        let user = UserRecord {
            id: UserId(self.store.next_id()?),
            username,
            password_hash: hash,
            role: Role::Passenger,
            created_at: now,
        };
        let (token, session) = self.new_session(user.id, now);
        let batch = Batch {
            new_users: vec![user.clone()],
            sessions: vec![session.clone()],
            events: vec![(user.id, event("registered", None, now, json!({})))],
            ..Default::default()
        };
        match self.commit(batch).await {
            Err(StoreError::Conflict) => return Err(AppError::UsernameTaken),
            r => r?,
        }
        self.attach(&user, &session, outbox, conn);
        self.forget_if_ended(&session);
        let device = new_device_token(&user);
        Ok(login_result(&token, &session, &user, device))
    }

    /// `auth.login`. `checked` is told whether the password matched each time it has
    /// been checked, before anything is written (the server front counts a failure
    /// and lets the next login from the address have its turn): once, or twice when
    /// the user's record changed before the session was written (the second check is
    /// the one that counts). The reply carries the client's device token: the one it
    /// sent, while the account's password still vouches for it, or a fresh one.
    pub async fn login(
        &self,
        p: params::Login,
        outbox: &Outbox,
        conn: &mut ConnSession,
        mut checked: impl FnMut(bool),
    ) -> Result<LoggedIn, AppError> {
        let name = Username::parse(&p.username).ok();
        let mut tries = 0;
        loop {
            // the user may have registered, or its password changed, through another
            // node a moment ago
            self.committer.catch_up().await?;
            let user = match &name {
                Some(name) => self.store.user_by_name(name)?,
                None => None,
            };
            // an unknown user costs the same hash as a wrong password
            let phc = user
                .as_ref()
                .map_or_else(|| self.dummy_hash.clone(), |u| u.password_hash.clone());
            let password = p.password.clone();
            let fast = self.config.insecure_fast_hashing;
            let (ok, stronger) = self
                .password_work(move || {
                    let ok = verify_password(&password, &phc);
                    let stronger = (ok && !fast && weaker_than_production(&phc))
                        .then(|| hash_password(&password, false).ok())
                        .flatten();
                    (ok, stronger)
                })
                .await?;
            checked(ok && user.is_some());
            let user = match user {
                Some(u) if ok => u,
                Some(u) => {
                    let (_, pruned, _) = self.past_caps(u.id, "login_failed", None).await?;
                    let now = domain::now_ms();
                    self.write_soon(Batch {
                        events: vec![(u.id, event("login_failed", None, now, json!({})))],
                        pruned_events: pruned,
                        ..Default::default()
                    })
                    .await?;
                    return Err(AppError::BadCredentials);
                }
                None => return Err(AppError::BadCredentials),
            };
            let now = domain::now_ms();
            let (token, session) = self.new_session(user.id, now);
            let rehashed = stronger.map(|password_hash| UserRecord {
                password_hash,
                ..user.clone()
            });
            let stored = rehashed.as_ref().unwrap_or(&user);
            let device = match p.device_token.as_deref() {
                Some(t) if device_of(stored, t).is_some() => Some(t.to_owned()),
                _ => new_device_token(stored),
            };
            let (ended, pruned, placed) = self.past_caps(user.id, "login", Some(session)).await?;
            let session = placed.ok_or(AppError::Internal)?;
            // the session only for the password as checked: one changed meanwhile
            // (its old sessions revoked) must not let this login through
            let written = self
                .commit(Batch {
                    sessions: vec![session.clone()],
                    revoke_sessions: ended.clone(),
                    events: vec![(user.id, event("login", None, now, json!({})))],
                    pruned_events: pruned,
                    users: rehashed.into_iter().collect(),
                    users_read: vec![user.clone()],
                    ..Default::default()
                })
                .await;
            match written {
                Err(StoreError::Conflict) if tries == 0 => tries += 1,
                written => {
                    written?;
                    self.forget_sessions(&ended);
                    self.attach(&user, &session, outbox, conn);
                    self.end_sessions_past_cap(user.id, ended.len()).await;
                    self.forget_if_ended(&session);
                    return Ok(login_result(&token, &session, &user, device));
                }
            }
        }
    }

    pub async fn resume(
        &self,
        p: params::Resume,
        outbox: &Outbox,
        conn: &mut ConnSession,
    ) -> Result<LoggedIn, AppError> {
        let hash = token_hash(&p.token);
        // made or ended through another node a moment ago?
        self.committer.catch_up().await?;
        let session = self.live_session(&hash)?.ok_or(AppError::InvalidToken)?;
        let user = self
            .store
            .user(session.user_id)?
            .ok_or(AppError::InvalidToken)?;
        self.attach(&user, &session, outbox, conn);
        // A logout (here, or through another node) may have landed after the look
        // above and before the attach, and found no connection to detach (and here,
        // had its cache entry put back). It deletes the stored session before it
        // detaches, so one of the two sees the other. Refused, the connection is
        // left logged out (its earlier login was detached by the attach).
        let still = self.stored_session(&hash);
        if !matches!(still, Ok(Some(_))) {
            conn.take();
            self.sessions.remove(&hash);
            self.users.revoke(user.id, &hash);
            still?;
            return Err(AppError::InvalidToken);
        }
        Ok(login_result(&p.token, &session, &user, None))
    }

    /// The device a login of `username` sending `device_token` comes from (see
    /// [`LoggedIn::device_token`]), if that token was given to a client that proved the
    /// account's current password: the server front counts its failed logins apart
    /// from the username's, so that wrong passwords sent from elsewhere do not hold up
    /// the account's own devices.
    pub fn trusted_device(&self, username: &str, device_token: &str) -> Option<String> {
        let name = Username::parse(username).ok()?;
        let user = self.store.user_by_name(&name).ok()??;
        device_of(&user, device_token)
    }

    /// `auth.logout` of session `s`, checked by [`App::authenticate`] (the request's
    /// token check).
    pub async fn logout(
        &self,
        s: &AuthSession,
        outbox: &Outbox,
        conn: &mut ConnSession,
    ) -> Result<Done, AppError> {
        // as stored, expired or not; deleted meanwhile (with its index entry): deleting
        // it again is harmless
        let ended = self.store.session(&s.token_hash)?.map_or_else(
            || SessionKey {
                token_hash: s.token_hash.clone(),
                user_id: s.user_id,
                created_at: 0,
            },
            |r| r.key(),
        );
        let (_, pruned, _) = self.past_caps(s.user_id, "logout", None).await?;
        let now = domain::now_ms();
        self.commit(Batch {
            revoke_sessions: vec![ended],
            events: vec![(s.user_id, event("logout", None, now, json!({})))],
            pruned_events: pruned,
            ..Default::default()
        })
        .await?;
        self.sessions.remove(&s.token_hash);
        self.users.revoke(s.user_id, &s.token_hash);
        self.users.detach(s.user_id, outbox.id());
        *conn = None;
        Ok(Done {})
    }

    /// The session behind a token hash, if it exists and has not expired.
    pub(super) fn live_session(&self, hash: &str) -> Result<Option<SessionRecord>, StoreError> {
        // on a cluster the local copy of the store is the truth (a logout through
        // another node may land between a lookup here and the cache insert)
        let cached = match self.committer.is_replicated() {
            true => None,
            false => self.sessions.get(hash).map(|s| s.clone()),
        };
        match cached {
            Some(s) => Ok(Some(s).filter(|s| s.expires_at > domain::now_ms())),
            None => self.stored_session(hash),
        }
    }

    /// The stored session behind a token hash, if it has not expired (the cache is
    /// not looked at).
    fn stored_session(&self, hash: &str) -> Result<Option<SessionRecord>, StoreError> {
        let now = domain::now_ms();
        Ok(self.store.session(hash)?.filter(|s| s.expires_at > now))
    }

    /// Deletes sessions (in the store, the cache, and the connections using them).
    async fn revoke_sessions(&self, sessions: &[SessionRecord]) -> Result<(), StoreError> {
        for chunk in sessions.chunks(REVOKE_CHUNK) {
            let ended: Vec<SessionKey> = chunk.iter().map(SessionRecord::key).collect();
            self.write_soon(Batch {
                revoke_sessions: ended.clone(),
                ..Default::default()
            })
            .await?;
            self.forget_sessions(&ended);
        }
        Ok(())
    }

    /// Drops sessions deleted from the store from the cache and the connections
    /// using them (on a cluster, other nodes learn of it from the change feed).
    fn forget_sessions(&self, ended: &[SessionKey]) {
        for s in ended {
            self.sessions.remove(&s.token_hash);
            self.users.revoke(s.user_id, &s.token_hash);
        }
    }

    /// What a new account event of `kind` (and a login's new `session`) ends past the
    /// caps, so that the user keeps at most `--max-sessions-per-user` sessions and
    /// `--max-account-events` of the event's line ([`AccountLine`]), the new ones
    /// included: the oldest sessions ([`sessions_past`]) and account events; and the
    /// session, made the user's newest. The user's indexes are read on the blocking
    /// pool (a count is as long as its cap).
    async fn past_caps(
        &self,
        user: UserId,
        kind: &'static str,
        mut session: Option<SessionRecord>,
    ) -> Result<(Vec<SessionKey>, Vec<AccountEvent>, Option<SessionRecord>), AppError> {
        let store = self.store.clone();
        let caps = (
            self.config.max_sessions_per_user,
            self.config.max_account_events,
        );
        let read = move || -> Result<_, StoreError> {
            let ended = match kind {
                "login" => sessions_past(&*store, user, cap_count(caps.0), session.as_mut())?,
                _ => Vec::new(),
            };
            let pruned = match AccountLine::of(kind) {
                Some(line) => {
                    let (count, oldest) =
                        store.oldest_account_events(user, line, ENDED_PER_LOGIN)?;
                    // room for the event being added
                    oldest_past(count, oldest, cap_count(caps.1).saturating_sub(1))
                }
                None => Vec::new(),
            };
            Ok((ended, pruned, session))
        };
        let read = tokio::task::spawn_blocking(read).await;
        Ok(read.map_err(|_| AppError::Internal)??)
    }

    /// After session `s` was attached: a login of its user at the same moment may
    /// have ended it (see [`App::end_sessions_past_cap`]) before the attach put it in
    /// the cache, where it must not live on. Its connection is told at its next
    /// request, as after a newer login a moment later. A store that cannot tell
    /// leaves the cache out of it (a lookup falls back to the store).
    fn forget_if_ended(&self, s: &SessionRecord) {
        let stored = self.stored_session(&s.token_hash);
        if !matches!(stored, Ok(Some(_))) {
            self.sessions.remove(&s.token_hash);
        }
        if matches!(stored, Ok(None)) {
            self.users.revoke(s.user_id, &s.token_hash);
        }
    }

    /// After a login of `user` is written (having ended `ended_before` sessions
    /// already): ends the user's oldest sessions still past `--max-sessions-per-user`.
    /// Logins of one user at once (through one node or several) each counted the
    /// sessions before the others' were written, and ended too few; the last of them
    /// to be written sees all (a node applies its own write after every earlier one)
    /// and ends the oldest past the cap, so the cap holds once all are done, and keeps
    /// the newest sessions, as logins one after the other would. That may be a login's
    /// own session when it is the oldest: the login is answered, and its connection is
    /// told at its next request, as if a newer login had come a moment later. Ending a
    /// session twice is harmless. The login is done whatever this does: a failure is
    /// logged, and the next login ends what is left.
    async fn end_sessions_past_cap(&self, user: UserId, ended_before: usize) {
        let store = self.store.clone();
        let keep = cap_count(self.config.max_sessions_per_user);
        let read = move || -> Result<_, StoreError> {
            let mut past = sessions_past(&*store, user, keep, None)?;
            past.truncate(ENDED_PER_LOGIN.saturating_sub(ended_before));
            Ok(past)
        };
        let read = tokio::task::spawn_blocking(read)
            .await
            .unwrap_or_else(|e| Err(StoreError::Io(e.to_string())));
        let ended = match read {
            Ok(ended) if ended.is_empty() => return,
            Ok(ended) => ended,
            Err(e) => {
                return tracing::warn!(%user, error = %e, "cannot count sessions after a login")
            }
        };
        let revoked = self.commit(Batch {
            revoke_sessions: ended.clone(),
            ..Default::default()
        });
        match revoked.await {
            Ok(()) => self.forget_sessions(&ended),
            Err(e) => {
                tracing::warn!(%user, error = %e, "cannot end sessions past the cap after a login")
            }
        }
    }

    /// Deletes every expired session from the store and the cache; returns how many
    /// records it deleted. On a cluster every node sweeps (deleting twice is harmless).
    pub async fn sweep_sessions(&self) -> Result<usize, StoreError> {
        let now = domain::now_ms();
        self.sessions.retain(|_, s| s.expires_at > now);
        let store = self.store.clone();
        let expired: Vec<SessionRecord> = tokio::task::spawn_blocking(move || {
            store
                .sessions()
                .map(|all| all.into_iter().filter(|s| s.expires_at <= now).collect())
        })
        .await
        .map_err(|e| StoreError::Io(e.to_string()))??;
        self.revoke_sessions(&expired).await?;
        Ok(expired.len())
    }

    /// The connection's session, checked again: a token logged out elsewhere or
    /// expired since stops working at once. On a cluster the node's copy of the store
    /// first catches up with every write acknowledged before now, so a logout through
    /// another node counts here even while this node's etcd member lags.
    pub async fn authenticate(&self, conn: &mut ConnSession) -> Result<AuthSession, AppError> {
        if conn.is_none() {
            return Err(AppError::Unauthenticated);
        }
        self.committer.catch_up_for_request().await?;
        let s = conn.as_ref().ok_or(AppError::Unauthenticated)?;
        if self.live_session(&s.token_hash)?.is_none() {
            let s = conn.take();
            if let Some(s) = s {
                self.users.revoke(s.user_id, &s.token_hash);
            }
            return Err(AppError::InvalidToken);
        }
        Ok(AuthSession::clone(s))
    }

    /// Creates the `admin` user from `JETWAY_ADMIN_PASSWORD` (`Config::admin_password`),
    /// or gives it the new password and revokes its sessions. A passenger called
    /// `admin` (registered before the name was reserved) is never promoted: start-up
    /// stops and names the way out, `--rename-passenger`.
    pub(super) async fn ensure_admin(self: &Arc<Self>) -> Result<(), super::StartError> {
        let start = |e: String| super::StartError::Other(format!("JETWAY_ADMIN_PASSWORD: {e}"));
        let name = Username::parse(ADMIN_NAME).map_err(|e| start(e.to_string()))?;
        let existing = self
            .store
            .user_by_name(&name)
            .map_err(|e| start(e.to_string()))?;
        if let Some(u) = existing.as_ref().filter(|u| u.role != Role::Admin) {
            let msg = format!(
                "a passenger account is named `{ADMIN_NAME}` (user id {}, registered {}), and \
                 it will not be made an admin. Rename it, keeping its bookings, orders and \
                 sessions: start once with --rename-passenger {ADMIN_NAME}=NEW-NAME (or \
                 JETWAY_RENAME_PASSENGER) and tell its owner the new name; see docs/security.md",
                u.id.0,
                rfc3339(u.created_at),
            );
            match self.config.admin_password {
                Some(_) => return Err(start(msg)),
                None => tracing::warn!("{msg}"),
            }
        }
        let Some(password) = self.config.admin_password.clone() else {
            return Ok(());
        };
        check_password(&password).map_err(|e| start(e.to_string()))?;
        let fast = self.config.insecure_fast_hashing;
        let current = existing.as_ref().map(|u| u.password_hash.clone());
        let hash = self
            .password_work(move || match current {
                Some(h) if verify_password(&password, &h) => Ok(None),
                _ => hash_password(&password, fast).map(Some),
            })
            .await
            .map_err(|e| start(e.to_string()))?
            .map_err(|e| start(e.to_string()))?;
        let Some(hash) = hash else {
            return Ok(());
        };
        let user = match existing {
            Some(u) => {
                // the old password's sessions end with it: before the new one is
                // written (a crash after the write leaves none), and again after it, for
                // a login checked against the old one through another node meanwhile
                // (one committing later expects the old record, and is refused)
                self.revoke_user_sessions(u.id)
                    .await
                    .map_err(|e| start(e.to_string()))?;
                UserRecord {
                    password_hash: hash,
                    ..u
                }
            }
            None => UserRecord {
                id: UserId(self.store.next_id().map_err(|e| start(e.to_string()))?),
                username: name,
                password_hash: hash,
                role: Role::Admin,
                created_at: domain::now_ms(),
            },
        };
        let id = user.id;
        self.write_soon(Batch {
            users: vec![user],
            ..Default::default()
        })
        .await
        .map_err(|e| start(e.to_string()))?;
        let later = self
            .revoke_user_sessions(id)
            .await
            .map_err(|e| start(e.to_string()))?;
        if later > 0 {
            tracing::warn!(
                revoked = later,
                "admin sessions opened with the old password while it changed, revoked"
            );
        }
        Ok(())
    }

    /// Revokes every session of user `id` the store holds once this node has every
    /// write committed so far; returns how many.
    async fn revoke_user_sessions(&self, id: UserId) -> Result<usize, AppError> {
        self.committer.catch_up().await?;
        let sessions: Vec<SessionRecord> = self
            .store
            .sessions()?
            .into_iter()
            .filter(|s| s.user_id == id)
            .collect();
        self.revoke_sessions(&sessions).await?;
        if !sessions.is_empty() {
            tracing::info!(revoked = sessions.len(), user = id.0, "sessions revoked");
        }
        Ok(sessions.len())
    }

    /// Renames a passenger from `--rename-passenger OLD=NEW` (see [`ensure_admin`]).
    /// Nothing happens if OLD is not a passenger (already renamed, or the admin) or
    /// NEW is taken (renamed before).
    ///
    /// [`ensure_admin`]: App::ensure_admin
    pub(super) async fn rename_passenger(&self) -> Result<(), super::StartError> {
        let Some(spec) = self.config.rename_passenger.as_deref() else {
            return Ok(());
        };
        let fail = |e: String| super::StartError::Other(format!("--rename-passenger {spec}: {e}"));
        let (old, new) = spec
            .split_once('=')
            .ok_or_else(|| fail("expected OLD=NEW".into()))?;
        let old = Username::parse(old).map_err(|e| fail(e.to_string()))?;
        let new = Username::parse(new).map_err(|e| fail(e.to_string()))?;
        if new.as_str() == ADMIN_NAME {
            return Err(fail(format!("`{ADMIN_NAME}` is reserved")));
        }
        self.committer
            .catch_up()
            .await
            .map_err(|e| fail(e.to_string()))?;
        if self
            .store
            .user_by_name(&new)
            .map_err(|e| fail(e.to_string()))?
            .is_some()
        {
            // renamed at an earlier start, the flag left set: a passenger who took
            // the old name since is left alone
            tracing::info!(%new, "the new name is taken; nothing to rename");
            return Ok(());
        }
        let user = match self.store.user_by_name(&old) {
            Ok(Some(u)) if u.role == Role::Passenger => u,
            Ok(_) => {
                tracing::info!(%old, "no passenger by that name; nothing to rename");
                return Ok(());
            }
            Err(e) => return Err(fail(e.to_string())),
        };
        let renamed = UserRecord {
            username: new.clone(),
            ..user
        };
        let batch = Batch {
            new_users: vec![renamed.clone()],
            retired_names: vec![old.clone()],
            events: vec![(
                renamed.id,
                event(
                    "renamed",
                    None,
                    domain::now_ms(),
                    json!({ "from": old.as_str(), "to": new.as_str() }),
                ),
            )],
            ..Default::default()
        };
        match self.commit(batch).await {
            Err(StoreError::Conflict) => Err(fail(format!("`{new}` is taken"))),
            r => r.map_err(|e| fail(e.to_string())),
        }?;
        tracing::warn!(user = renamed.id.0, %old, %new, "passenger renamed");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A login's session is made newer than every session of the user the node has,
    /// whatever its node's clock says, and counted as the newest before its write, as
    /// the user's index will order it after: with a cap of 2, sessions made at 10 and
    /// 30 and a login's made at 20 or 5 (its node's clock behind), the login's is
    /// moved to 31 and the one made at 10 goes. Before, a login on a node whose clock
    /// was behind counted its own as the newest before its write while the index put
    /// it among the oldest, and logins at once could end every session between them.
    #[test]
    fn a_logins_session_is_made_the_users_newest() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::SledStore::open(dir.path()).unwrap();
        let user = UserId(9);
        let session = |hash: &str, at: Millis| SessionRecord {
            token_hash: hash.into(),
            user_id: user,
            created_at: at,
            expires_at: i64::MAX / 2,
        };
        let held = [session("a", 10), session("b", 30)];
        crate::store::Store::write(
            &store,
            &Batch {
                sessions: held.to_vec(),
                ..Default::default()
            },
        )
        .unwrap();
        let ends = |at: Millis| -> (Vec<String>, Millis) {
            let mut own = session("c", at);
            let ended = sessions_past(&store, user, 2, Some(&mut own)).unwrap();
            (
                ended.into_iter().map(|k| k.token_hash).collect(),
                own.created_at,
            )
        };
        assert_eq!(ends(20), (vec!["a".to_owned()], 31));
        assert_eq!(ends(5), (vec!["a".to_owned()], 31));
        assert_eq!(ends(40), (vec!["a".to_owned()], 40));
        let after = sessions_past(&store, user, 1, None).unwrap();
        assert_eq!(after.len(), 1);
        assert_eq!(after[0].token_hash, "a");
    }

    #[test]
    fn passwords_hash_and_verify() {
        let h = hash_password("correct horse 42", false).unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert!(verify_password("correct horse 42", &h));
        assert!(!verify_password("wrong horse 42", &h));
        assert!(!verify_password("x", "not a hash"));
    }

    #[test]
    fn a_stored_hash_of_absurd_cost_is_refused_without_trying_it() {
        let h = hash_password("correct horse 42", false).unwrap();
        let huge = h.replace("m=19456", &format!("m={}", u32::MAX));
        assert!(!verify_password("correct horse 42", &huge));
        let slow = h.replace("t=2", "t=4000000");
        assert!(!verify_password("correct horse 42", &slow));
    }

    #[test]
    fn only_hashes_below_the_production_cost_are_made_again() {
        assert!(weaker_than_production(
            &hash_password("correct horse 42", true).unwrap()
        ));
        assert!(!weaker_than_production(
            &hash_password("correct horse 42", false).unwrap()
        ));
        assert!(!weaker_than_production("not a hash"));
    }

    #[test]
    fn fast_hashing_is_the_minimum_cost_and_still_verifies() {
        let h = hash_password("correct horse 42", true).unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=8,t=1,p=1$"), "{h}");
        assert!(verify_password("correct horse 42", &h));
        assert!(!verify_password("wrong horse 42", &h));
    }

    /// A device token vouches for the account and password it was given under only.
    #[test]
    fn a_device_token_holds_for_its_account_and_password_only() {
        let user = |id, password| UserRecord {
            id: UserId(id),
            username: Username::parse("ann").unwrap(),
            password_hash: hash_password(password, true).unwrap(),
            role: Role::Passenger,
            created_at: 0,
        };
        let ann = user(1, "correct horse 42");
        let token = new_device_token(&ann).unwrap();
        assert!(
            token.starts_with(DEVICE_PREFIX) && token.len() == 3 + 64,
            "{token}"
        );
        let id = device_of(&ann, &token).expect("vouched for");
        assert_eq!(id, token[3..35]);
        assert_ne!(new_device_token(&ann).unwrap(), token, "a fresh nonce each");
        let changed = UserRecord {
            password_hash: hash_password("correct horse 42", true).unwrap(),
            ..ann.clone()
        };
        assert_eq!(device_of(&changed, &token), None, "a new password ends it");
        let other = UserRecord {
            id: UserId(2),
            ..ann.clone()
        };
        assert_eq!(device_of(&other, &token), None, "another account");
        for bad in [
            &token[..token.len() - 2],
            "d1.",
            "",
            &token[1..],
            &token.to_uppercase(),
            &format!("d1.{}", token[3..].to_uppercase()),
        ] {
            assert_eq!(device_of(&ann, bad), None, "{bad}");
        }
        let mut flipped = token.clone().into_bytes();
        flipped[40] = if flipped[40] == b'0' { b'1' } else { b'0' };
        assert_eq!(device_of(&ann, &String::from_utf8(flipped).unwrap()), None);
    }

    #[test]
    fn password_rules() {
        assert!(check_password("short").is_err());
        assert!(check_password(&"ab".repeat(65)).is_err());
        assert!(check_password("correct horse").is_ok());
        // the contract's rule is the length alone: its boundaries are accepted whatever
        // the characters
        assert!(check_password("aaaaaaaa").is_ok());
        assert!(check_password(&"é".repeat(128)).is_ok());
        assert!(check_password(&"é".repeat(129)).is_err());
    }

    #[test]
    fn tokens_are_256_bits_and_hashed() {
        let t = random_token();
        assert_eq!(t.len(), 64);
        assert_ne!(t, random_token());
        assert_eq!(token_hash(&t).len(), 64);
        assert_ne!(token_hash(&t), t);
    }
}
