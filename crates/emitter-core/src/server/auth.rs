//! What an `authenticate` listener gets: the request's facts and the context to reject or defer it.

use std::fmt::{self, Display};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::transport::handshake::Handshake;

/// What the server knows of a link request when it asks the `authenticate` listeners. Its `Debug` never prints the
/// credential.
///
/// ```
/// use emitter_core::Server;
///
/// let server = Server::new();
/// server.on_authenticate(|_, info, auth| {
///     // A cookie session set by the app's login page, or a token sent in the link request.
///     let session = info.handshake().cookie("session").or(info.auth.as_deref());
///     if session.is_none() {
///         auth.reject("log in first");
///     }
/// });
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct AuthInfo {
    /// `true` when no user of this name exists yet: it joins if the link is accepted.
    pub is_new_user: bool,
    /// The credential the client sent in its link request, if any.
    pub auth: Option<String>,
    /// The request that opened the connection; shared by every link attempt on it.
    pub(crate) handshake: Arc<Handshake>,
}

impl AuthInfo {
    /// The request that opened the connection: its headers (cookies included), its peer's address, its path and
    /// query. Empty where the transport tells nothing of it.
    pub fn handshake(&self) -> &Handshake {
        &self.handshake
    }
}

impl fmt::Debug for AuthInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthInfo")
            .field("is_new_user", &self.is_new_user)
            .field("auth", &self.auth.as_ref().map(|_| "<redacted>"))
            .field("handshake", &self.handshake)
            .finish()
    }
}

pub(crate) type AuthFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'static>>;

#[derive(Default)]
struct Decision {
    rejection: Option<String>,
    decided: bool,
    marking_closed: bool,
    pending: Vec<AuthFuture>,
}

#[derive(Default)]
struct Shared {
    decision: Mutex<Decision>,
    rejected: Notify,
}

/// Lets `authenticate` listeners refuse a link request or defer the decision to async work.
///
/// It is cheap to clone; move a clone into a [`mark_async`](AuthContext::mark_async) future to reject from there.
///
/// ```
/// use emitter_core::Server;
/// use std::time::Duration;
///
/// let server = Server::new();
/// server.on_authenticate(|u, info, auth| {
///     if info.auth.as_deref() != Some("letmein") {
///         auth.reject("wrong password");
///         return;
///     }
///     let ctx2 = auth.clone();
///     let name = u.username().to_owned();
///     auth.mark_async(async move {
///         tokio::time::sleep(Duration::from_millis(10)).await; // a database lookup, say
///         if name == "mallory" {
///             ctx2.reject("banned");
///         }
///         Ok::<(), String>(())
///     });
/// });
/// ```
#[derive(Clone, Default)]
pub struct AuthContext {
    shared: Arc<Shared>,
}

impl fmt::Debug for AuthContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let decision = self.shared.decision.lock();
        f.debug_struct("AuthContext")
            .field("rejection", &decision.rejection)
            .field("decided", &decision.decided)
            .finish()
    }
}

impl AuthContext {
    /// Refuses the link with `reason`, which the client receives in `krmx/rejected`. The first reason wins; calls after
    /// it, or after the request was decided, are ignored. A rejection made while async work is pending answers the
    /// client at once and cancels that work.
    pub fn reject(&self, reason: impl Into<String>) {
        let mut decision = self.shared.decision.lock();
        if decision.decided || decision.rejection.is_some() {
            return;
        }
        decision.rejection = Some(reason.into());
        drop(decision);
        self.shared.rejected.notify_one();
    }

    /// Whether the request has been rejected so far.
    pub fn is_rejected(&self) -> bool {
        self.shared.decision.lock().rejection.is_some()
    }

    /// Defers the decision until `work` finishes. Every marked future must finish with `Ok` for the link to be
    /// accepted; an `Err` rejects with its message, a panic with `authentication failed` (its text is logged, not sent), and the server's auth timeout
    /// with `authentication timeout`. When the request is decided, futures still running are dropped.
    ///
    /// Only calls made while the `authenticate` listeners run count; a later call is logged and ignored.
    pub fn mark_async<F, E>(&self, work: F)
    where
        F: Future<Output = Result<(), E>> + Send + 'static,
        E: Display,
    {
        let mut decision = self.shared.decision.lock();
        if decision.marking_closed {
            tracing::warn!("mark_async called after the authenticate listeners returned; ignored");
            return;
        }
        decision
            .pending
            .push(Box::pin(async move { work.await.map_err(|error| error.to_string()) }));
    }

    /// Ends the listeners' turn: no more futures can be marked. Returns those that were.
    pub(crate) fn take_pending(&self) -> Vec<AuthFuture> {
        let mut decision = self.shared.decision.lock();
        decision.marking_closed = true;
        std::mem::take(&mut decision.pending)
    }

    /// Resolves once [`reject`](AuthContext::reject) has been called.
    pub(crate) async fn rejected(&self) {
        loop {
            let notified = self.shared.rejected.notified();
            if self.is_rejected() {
                return;
            }
            notified.await;
        }
    }

    /// Decides the request: after this, nothing changes it. Returns the rejection, if any.
    pub(crate) fn decide(&self) -> Option<String> {
        let mut decision = self.shared.decision.lock();
        decision.decided = true;
        decision.pending.clear();
        decision.rejection.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_prints_the_credential() {
        let info = AuthInfo {
            is_new_user: true,
            auth: Some("s3cret".to_owned()),
            handshake: Arc::new(Handshake::new("/", Some("t=s3cret")).with_header("cookie", "s=s3cret")),
        };
        let event = crate::Event::Authenticate {
            username: "simon",
            info: &info,
        };
        for printed in [format!("{info:?}"), format!("{event:?}"), format!("{info:#?}")] {
            assert!(!printed.contains("s3cret"), "{printed}");
            assert!(printed.contains("<redacted>"), "{printed}");
        }
    }

    #[test]
    fn first_reason_wins_and_decided_is_final() {
        let ctx = AuthContext::default();
        ctx.reject("first");
        ctx.reject("second");
        assert_eq!(ctx.decide().as_deref(), Some("first"));

        let ctx = AuthContext::default();
        assert_eq!(ctx.decide(), None);
        ctx.reject("too late");
        assert!(!ctx.is_rejected());
    }

    #[test]
    fn marking_closes_when_the_listeners_are_done() {
        let ctx = AuthContext::default();
        ctx.mark_async(async { Ok::<(), String>(()) });
        assert_eq!(ctx.take_pending().len(), 1);
        ctx.mark_async(async { Ok::<(), String>(()) });
        assert_eq!(ctx.take_pending().len(), 0);
    }
}
