//! Accounts and sessions: register, login, resume, logout. Passwords are hashed with
//! Argon2id (OWASP: m=19 MiB, t=2, p=1) on the blocking pool; tokens are 256 random
//! bits, stored only as their SHA-256.

use argon2::password_hash::{
    rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString,
};
use argon2::{Algorithm, Argon2, Params, Version};
use rand::RngCore;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::sync::Arc;

use super::{event, App};
use crate::domain::{self, rfc3339, Millis, UserId, Username};
use crate::fanout::Outbox;
use crate::protocol::{params, ApiError};
use crate::store::{Batch, Role, SessionRecord, StoreError, UserRecord};

pub const MIN_PASSWORD: usize = 8;
pub const MAX_PASSWORD: usize = 128;

/// Who a connection is logged in as.
#[derive(Debug, Clone)]
pub struct AuthSession {
    pub user_id: UserId,
    pub username: Username,
    pub role: Role,
    pub token_hash: String,
}

fn argon2() -> Argon2<'static> {
    let params = Params::new(19 * 1024, 2, 1, None).unwrap_or_default();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

pub fn hash_password(password: &str) -> Result<String, argon2::password_hash::Error> {
    let salt = SaltString::generate(&mut OsRng);
    Ok(argon2()
        .hash_password(password.as_bytes(), &salt)?
        .to_string())
}

fn verify_password(password: &str, phc: &str) -> bool {
    PasswordHash::new(phc).is_ok_and(|h| argon2().verify_password(password.as_bytes(), &h).is_ok())
}

pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn check_password(password: &str) -> Result<(), ApiError> {
    let n = password.chars().count();
    if !(MIN_PASSWORD..=MAX_PASSWORD).contains(&n) {
        return Err(ApiError::WeakPassword(format!(
            "password must be {MIN_PASSWORD}-{MAX_PASSWORD} characters"
        )));
    }
    if password
        .chars()
        .all(|c| c == password.chars().next().unwrap_or(' '))
    {
        return Err(ApiError::WeakPassword(
            "password must not be one repeated character".into(),
        ));
    }
    Ok(())
}

fn login_result(token: &str, s: &SessionRecord, user: &UserRecord) -> Value {
    json!({
        "token": token,
        "expires_at": rfc3339(s.expires_at),
        "user": { "id": user.id.0, "username": user.username, "role": user.role.as_str() },
    })
}

impl App {
    /// Runs password hashing on the blocking pool, at most `cores - 1` at a time, so
    /// that a login storm queues instead of starving the reactor and using 19 MiB per
    /// concurrent login.
    async fn password_work<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        let _slot = self
            .password_slots
            .acquire()
            .await
            .map_err(|_| ApiError::Internal)?;
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|_| ApiError::Internal)
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
        conn: &mut Option<AuthSession>,
    ) {
        if let Some(old) = conn.take() {
            self.users.detach(old.user_id, outbox.id());
        }
        self.sessions.insert(rec.token_hash.clone(), rec.clone());
        self.users.attach(user.id, &rec.token_hash, outbox);
        *conn = Some(AuthSession {
            user_id: user.id,
            username: user.username.clone(),
            role: user.role,
            token_hash: rec.token_hash.clone(),
        });
    }

    pub async fn register(
        &self,
        p: params::Credentials,
        outbox: &Outbox,
        conn: &mut Option<AuthSession>,
    ) -> Result<Value, ApiError> {
        let username = Username::parse(&p.username)?;
        check_password(&p.password)?;
        self.committer.catch_up().await?;
        if self.store.user_by_name(&username)?.is_some() {
            return Err(ApiError::UsernameTaken);
        }
        let password = p.password;
        let hash = self
            .password_work(move || hash_password(&password))
            .await?
            .map_err(|_| ApiError::Internal)?;
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
            Err(StoreError::Conflict) => return Err(ApiError::UsernameTaken),
            r => r?,
        }
        self.attach(&user, &session, outbox, conn);
        Ok(login_result(&token, &session, &user))
    }

    pub async fn login(
        &self,
        p: params::Credentials,
        outbox: &Outbox,
        conn: &mut Option<AuthSession>,
    ) -> Result<Value, ApiError> {
        // the user may have registered through another node a moment ago
        self.committer.catch_up().await?;
        let user = match Username::parse(&p.username) {
            Ok(name) => self.store.user_by_name(&name)?,
            Err(_) => None,
        };
        // an unknown user costs the same hash as a wrong password
        let phc = user
            .as_ref()
            .map_or_else(|| self.dummy_hash.clone(), |u| u.password_hash.clone());
        let password = p.password;
        let ok = self
            .password_work(move || verify_password(&password, &phc))
            .await?;
        let user = match user {
            Some(u) if ok => u,
            Some(u) => {
                let now = domain::now_ms();
                self.write_soon(Batch {
                    events: vec![(u.id, event("login_failed", None, now, json!({})))],
                    ..Default::default()
                })
                .await?;
                return Err(ApiError::BadCredentials);
            }
            None => return Err(ApiError::BadCredentials),
        };
        let now = domain::now_ms();
        let (token, session) = self.new_session(user.id, now);
        self.commit(Batch {
            sessions: vec![session.clone()],
            events: vec![(user.id, event("login", None, now, json!({})))],
            ..Default::default()
        })
        .await?;
        self.attach(&user, &session, outbox, conn);
        Ok(login_result(&token, &session, &user))
    }

    pub async fn resume(
        &self,
        p: params::Resume,
        outbox: &Outbox,
        conn: &mut Option<AuthSession>,
    ) -> Result<Value, ApiError> {
        let hash = token_hash(&p.token);
        let session = match self.live_session(&hash)? {
            Some(s) => s,
            None => {
                // made through another node a moment ago?
                self.committer.catch_up().await?;
                self.live_session(&hash)?.ok_or(ApiError::InvalidToken)?
            }
        };
        let user = self
            .store
            .user(session.user_id)?
            .ok_or(ApiError::InvalidToken)?;
        self.attach(&user, &session, outbox, conn);
        Ok(login_result(&p.token, &session, &user))
    }

    pub async fn logout(
        &self,
        outbox: &Outbox,
        conn: &mut Option<AuthSession>,
    ) -> Result<Value, ApiError> {
        let s = self.authenticate(conn)?;
        let now = domain::now_ms();
        self.commit(Batch {
            revoke_sessions: vec![s.token_hash.clone()],
            events: vec![(s.user_id, event("logout", None, now, json!({})))],
            ..Default::default()
        })
        .await?;
        self.sessions.remove(&s.token_hash);
        self.users.revoke(s.user_id, &s.token_hash);
        self.users.detach(s.user_id, outbox.id());
        *conn = None;
        Ok(json!({}))
    }

    /// The session behind a token hash, if it exists and has not expired.
    fn live_session(&self, hash: &str) -> Result<Option<SessionRecord>, StoreError> {
        let now = domain::now_ms();
        // on a cluster the local copy of the store is the truth (a logout through
        // another node may land between a lookup here and the cache insert)
        let cached = match self.committer.is_replicated() {
            true => None,
            false => self.sessions.get(hash).map(|s| s.clone()),
        };
        let rec = match cached {
            Some(s) => Some(s),
            None => self.store.session(hash)?,
        };
        Ok(rec.filter(|s| s.expires_at > now))
    }

    /// The connection's session, checked again: a token logged out elsewhere or
    /// expired since stops working at once.
    pub fn authenticate(&self, conn: &mut Option<AuthSession>) -> Result<AuthSession, ApiError> {
        let s = conn.as_ref().ok_or(ApiError::Unauthenticated)?;
        if self.live_session(&s.token_hash)?.is_none() {
            let s = conn.take();
            if let Some(s) = s {
                self.users.revoke(s.user_id, &s.token_hash);
            }
            return Err(ApiError::InvalidToken);
        }
        Ok(s.clone())
    }

    /// Creates or updates the `admin` user from `JETWAY_ADMIN_PASSWORD`
    /// (`Config::admin_password`).
    pub(super) async fn ensure_admin(self: &Arc<Self>) -> Result<(), super::StartError> {
        let Some(password) = self.config.admin_password.clone() else {
            return Ok(());
        };
        let start = |e: String| super::StartError::Other(format!("JETWAY_ADMIN_PASSWORD: {e}"));
        check_password(&password).map_err(|e| start(e.to_string()))?;
        let name = Username::parse("admin").map_err(|e| start(e.to_string()))?;
        let existing = self
            .store
            .user_by_name(&name)
            .map_err(|e| start(e.to_string()))?;
        if existing
            .as_ref()
            .is_some_and(|u| u.role == Role::Admin && verify_password(&password, &u.password_hash))
        {
            return Ok(());
        }
        let hash = tokio::task::spawn_blocking(move || hash_password(&password))
            .await
            .map_err(|e| start(e.to_string()))?
            .map_err(|e| start(e.to_string()))?;
        let user = UserRecord {
            id: match &existing {
                Some(u) => u.id,
                None => UserId(self.store.next_id().map_err(|e| start(e.to_string()))?),
            },
            username: name,
            password_hash: hash,
            role: Role::Admin,
            created_at: existing
                .as_ref()
                .map_or_else(domain::now_ms, |u| u.created_at),
        };
        self.write_soon(Batch {
            users: vec![user],
            ..Default::default()
        })
        .await
        .map_err(|e| start(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_hash_and_verify() {
        let h = hash_password("correct horse 42").unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert!(verify_password("correct horse 42", &h));
        assert!(!verify_password("wrong horse 42", &h));
        assert!(!verify_password("x", "not a hash"));
    }

    #[test]
    fn password_rules() {
        assert!(check_password("short").is_err());
        assert!(check_password("aaaaaaaaaa").is_err());
        assert!(check_password(&"ab".repeat(65)).is_err());
        assert!(check_password("correct horse").is_ok());
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
