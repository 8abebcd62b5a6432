//! The book's other authentication recipes, each a function that registers an `authenticate` listener.

use std::collections::HashMap;
use std::sync::Arc;

use emitter_core::Server;
use tokio::sync::RwLock;

/// Accepts only links whose `auth` is `token`: a shared secret, such as an invite code. It is checked synchronously,
/// so the client is answered at once.
pub fn require_token(server: &Server, token: impl Into<String>) {
    let token = token.into();
    server.on_authenticate(move |u, info, auth| {
        if info.auth.as_deref() != Some(token.as_str()) {
            tracing::info!(username = %u, "wrong or missing token");
            auth.reject("invalid token");
        }
    });
}

/// Lets at most `max` users exist: a link to a new user is rejected when the room is full, while users who are
/// already there can always relink.
pub fn limit_users(server: &Server, max: usize) {
    server.on_authenticate(move |u, info, auth| {
        if info.is_new_user && u.server().users().len() >= max {
            auth.reject("server is full");
        }
    });
}

/// A stand-in for a table of accounts in a database, behind an async API.
#[derive(Debug, Clone, Default)]
pub struct Accounts(Arc<RwLock<HashMap<String, String>>>);

impl Accounts {
    /// Adds or replaces an account.
    pub async fn insert(&self, username: &str, password: &str) {
        self.0.write().await.insert(username.to_owned(), password.to_owned());
    }

    /// Whether `username` exists and has `password`.
    pub async fn verify(&self, username: &str, password: &str) -> bool {
        self.0
            .read()
            .await
            .get(username)
            .is_some_and(|stored| stored == password)
    }
}

/// Accepts a link when `auth` is the user's password in `accounts`, looked up asynchronously.
pub fn check_accounts(server: &Server, accounts: Accounts) {
    server.on_authenticate(move |u, info, auth| {
        let (accounts, username, password) = (accounts.clone(), u.to_string(), info.auth.clone());
        // A clone of the context can reject from inside the future; so can returning `Err`.
        let rejecter = auth.clone();
        auth.mark_async(async move {
            let Some(password) = password else {
                rejecter.reject("a password is required");
                return Ok(());
            };
            if accounts.verify(&username, &password).await {
                Ok(())
            } else {
                Err("unknown user or wrong password")
            }
        });
    });
}
