//! Links authenticated with JSON Web Tokens.
//!
//! A client sends its token as `auth` in `krmx/link`. The `authenticate` listener rejects a link without one at once,
//! and hands the rest to [`AuthContext::mark_async`](emitter_core::AuthContext::mark_async): the token must be an HS256
//! JWT signed with the server's secret, unexpired, whose `sub` is the username asked for, and the user must not be
//! banned, which is an async lookup (a database, in a real app). [`recipes`] has the simpler recipes of the book's
//! authentication chapter.

pub mod recipes;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use emitter_core::Server;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use tokio::sync::RwLock;

/// What the tokens say: who the bearer is and until when (seconds since the Unix epoch).
#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    /// The username the token is for.
    pub sub: String,
    /// When the token expires.
    pub exp: u64,
}

/// Signs a token for `username` that expires at `exp` (seconds since the Unix epoch). In a real app, your login
/// endpoint does this.
pub fn issue(secret: &[u8], username: &str, exp: u64) -> Result<String, jsonwebtoken::errors::Error> {
    let claims = Claims {
        sub: username.to_owned(),
        exp,
    };
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret),
    )
}

/// Seconds since the Unix epoch, `from_now` from now.
pub fn expires_in(from_now: Duration) -> u64 {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    (now + from_now).as_secs()
}

/// A stand-in for a database of banned users, behind an async API.
#[derive(Debug, Clone, Default)]
pub struct Bans(Arc<RwLock<HashSet<String>>>);

impl Bans {
    /// Bans `username`: its next link attempts are rejected.
    pub async fn ban(&self, username: &str) {
        self.0.write().await.insert(username.to_owned());
    }

    /// Whether `username` is banned.
    pub async fn is_banned(&self, username: &str) -> bool {
        self.0.read().await.contains(username)
    }
}

/// Builds a server whose links need a valid token for the username, and whose users must not be banned.
pub fn build(secret: &[u8], bans: Bans) -> Server {
    // Async authentication that takes longer than this is rejected with `authentication timeout`.
    let server = Server::builder().auth_timeout(Duration::from_secs(5)).build();
    let key = DecodingKey::from_secret(secret);
    server.on_authenticate(move |u, info, auth| {
        // Checks that need no waiting reject at once.
        let Some(token) = info.auth.clone() else {
            auth.reject("a token is required");
            return;
        };
        // The rest runs on a task; an `Err` rejects the link with its message.
        let (key, bans, username) = (key.clone(), bans.clone(), u.to_string());
        auth.mark_async(async move { check(&key, &bans, &username, &token).await });
    });
    server
}

/// Accepts `token` for `username`, or says why not.
async fn check(key: &DecodingKey, bans: &Bans, username: &str, token: &str) -> Result<(), String> {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.set_required_spec_claims(&["exp", "sub"]);
    validation.sub = Some(username.to_owned());
    if let Err(error) = decode::<Claims>(token, key, &validation) {
        tracing::info!(username, %error, "token refused");
        return Err(match error.kind() {
            ErrorKind::ExpiredSignature => "token expired",
            ErrorKind::InvalidSubject => "the token is for another user",
            _ => "invalid token",
        }
        .to_owned());
    }
    if bans.is_banned(username).await {
        return Err(format!("{username} is banned"));
    }
    Ok(())
}
