//! Registering listeners: `on_*`, `once_*`, `wait_for_*`, typed payloads and the any-event listener.
//!
//! A listener gets the event's own arguments in the reference's order (`message`: the sender and the message). The
//! user an event is about comes as a [`UserRef`], which reads as the username and reaches the server, so a listener
//! calls back into the server without capturing a clone (which would keep the server alive as long as the listener).
//! Events about no user (`listen`, `close`, any-event) hand the server itself first. A listener lives as long as the server: the
//! [`Subscription`] a registration returns is a handle to remove it, and dropping the handle keeps the listener.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use emitter_listeners::{fire_once, wait, Subscription};
use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use tokio::sync::oneshot;

use crate::error::Error;
use crate::protocol::Message;
use crate::server::auth::{AuthContext, AuthInfo};
use crate::server::events::{Event, MembershipEvent};
use crate::server::UserRef;
use crate::Server;

/// A `wait_for_*` future: the event's value, or [`Error::ServerClosed`] once the server closed (or was dropped) first.
fn waiting<T: Send + 'static>(
    subscription: Subscription,
    rx: oneshot::Receiver<T>,
) -> impl Future<Output = Result<T, Error>> + Send + 'static {
    let waited = wait(subscription, rx);
    async move { waited.await.map_err(|_| Error::ServerClosed) }
}

/// Listeners run in registration order, any-event listeners before an event's own. A listener may call any server
/// method. A panic in a listener is logged and the other listeners still run (in `on_authenticate`, it also rejects
/// the link with `authentication failed`: the panic's text is logged, never sent to the client).
impl Server {
    /// Calls `listener` with the server and every event, before the event's own listeners.
    ///
    /// ```
    /// let server = emitter_core::Server::new();
    /// server.on_any(|_, event| tracing::debug!(event = event.name()));
    /// ```
    pub fn on_any(&self, listener: impl Fn(&Server, &Event<'_>) + Send + Sync + 'static) -> Subscription {
        self.inner.events.any.add(Arc::new(listener))
    }

    /// Resolves with what `pick` returns for the first event for which it returns `Some`.
    ///
    /// ```
    /// use emitter_core::Event;
    /// # async fn demo(server: emitter_core::Server) -> Result<(), emitter_core::Error> {
    /// let who = server
    ///     .wait_for_event(|event| match event {
    ///         Event::Message { username, message } if message.kind == "game/ready" => Some(username.to_string()),
    ///         _ => None,
    ///     })
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn wait_for_event<T: Send + 'static>(
        &self,
        pick: impl Fn(&Event<'_>) -> Option<T> + Send + Sync + 'static,
    ) -> impl Future<Output = Result<T, Error>> + Send + 'static {
        let (tx, rx) = oneshot::channel();
        let tx = Mutex::new(Some(tx));
        let subscription = self.inner.events.any.add_with(|alive| {
            Arc::new(move |_: &Server, event: &Event<'_>| {
                if let Some(value) = pick(event) {
                    fire_once(&alive, true, &tx, |tx| {
                        let _ = tx.send(value);
                    });
                }
            })
        });
        waiting(subscription, rx)
    }

    /// Calls `listener` with the server and every membership change (join, link, unlink, leave) this node applies,
    /// in the order applied, each once, with its place in that order ([`MembershipEvent::seq`]).
    ///
    /// It runs on every node of a cluster, once per change each, wherever the change was made; `on_join`, `on_link`,
    /// `on_unlink` and `on_leave` run only on the node that made the change (on one process both kinds run for every
    /// change, this one first). Use it for what a node does for its own users (with [`Server::is_linked_here`] and
    /// [`Server::send_here`]: a catch-up on a link to this node's connection), or for what one owner of a thing does
    /// once per cluster (free a seat when a user leaves, on the node that owns the game); use today's listeners for
    /// what the node that made the change does (a welcome broadcast, sent once).
    ///
    /// It runs on the membership path, under its turn, like the others: keep it quick, and make no membership
    /// change from it (`join`, `kick`, `unlink`): on one process that change's events would reach the listeners
    /// registered after this one before this change's. A node of a cluster that rebuilds from a snapshot (it fell
    /// behind a trimmed log) emits the changes it applies to catch up, all with the snapshot's seq; one that starts
    /// over ([`ClusterHost::restart`](crate::cluster::ClusterHost::restart)) emits none.
    ///
    /// ```
    /// use emitter_core::{MembershipKind, Server};
    ///
    /// let server = Server::new();
    /// server.on_membership(|server, change| {
    ///     if change.kind == MembershipKind::Link && server.is_linked_here(change.username) {
    ///         let _ = server.send_payload_here(change.username, "lobby/welcome", &change.seq);
    ///     }
    /// });
    /// ```
    pub fn on_membership(
        &self,
        listener: impl Fn(&Server, &MembershipEvent<'_>) + Send + Sync + 'static,
    ) -> Subscription {
        self.inner.events.membership.add(Arc::new(listener))
    }

    /// Calls `listener` with the server and the port once the server listens. It runs before the transport accepts its first
    /// connection, so users joined here with [`Server::join`] are in place for every client.
    ///
    /// ```
    /// let server = emitter_core::Server::new();
    /// server.on_listen(|server, _port| {
    ///     let _ = server.join("bot");
    /// });
    /// ```
    pub fn on_listen(&self, listener: impl Fn(&Server, u16) + Send + Sync + 'static) -> Subscription {
        self.inner.events.listen.add(Arc::new(listener))
    }

    /// Resolves with the port once the server listens.
    pub fn wait_for_listen(&self) -> impl Future<Output = Result<u16, Error>> + Send + 'static {
        let (tx, rx) = oneshot::channel();
        let tx = Mutex::new(Some(tx));
        let subscription = self.inner.events.listen.add_with(|alive| {
            Arc::new(move |_: &Server, port| {
                fire_once(&alive, true, &tx, |tx| {
                    let _ = tx.send(port);
                })
            })
        });
        waiting(subscription, rx)
    }

    /// Calls `listener` with the server once it has closed.
    ///
    /// ```
    /// let server = emitter_core::Server::new();
    /// server.on_close(|_| tracing::info!("closed"));
    /// ```
    pub fn on_close(&self, listener: impl Fn(&Server) + Send + Sync + 'static) -> Subscription {
        self.inner.events.close.add(Arc::new(listener))
    }

    /// Resolves once the server has closed.
    pub fn wait_for_close(&self) -> impl Future<Output = Result<(), Error>> + Send + 'static {
        let (tx, rx) = oneshot::channel();
        let tx = Mutex::new(Some(tx));
        let subscription = self.inner.events.close.add_with(|alive| {
            Arc::new(move |_: &Server| {
                fire_once(&alive, true, &tx, |tx| {
                    let _ = tx.send(());
                })
            })
        });
        waiting(subscription, rx)
    }

    /// Calls `listener` before a connection links to a user, after the protocol's own checks passed (well-formed
    /// request, version, username rule, accepting new users, not already linked).
    ///
    /// The listener gets the user asked for (a [`UserRef`]; the user may not exist yet, and no connection is linked
    /// to it), [`AuthInfo`] and an [`AuthContext`] to [`reject`](AuthContext::reject) the request or defer the
    /// decision with [`mark_async`](AuthContext::mark_async). Without either, the link is accepted when the listeners
    /// return.
    ///
    /// ```
    /// let server = emitter_core::Server::new();
    /// server.on_authenticate(|u, info, auth| {
    ///     if info.is_new_user && u.server().users().len() >= 10 {
    ///         auth.reject("server is full");
    ///     }
    /// });
    /// ```
    pub fn on_authenticate(
        &self,
        listener: impl Fn(UserRef<'_>, &AuthInfo, &AuthContext) + Send + Sync + 'static,
    ) -> Subscription {
        self.inner.events.authenticate.add(Arc::new(listener))
    }

    /// Calls `listener` with the sender and the message every time a linked user sends an application message (any
    /// type outside `krmx/`). For messages of one type with a payload of your own type, [`on_payload`] reads it for
    /// you.
    ///
    /// [`on_payload`]: Server::on_payload
    ///
    /// ```
    /// let server = emitter_core::Server::new();
    /// server.on_message(|u, m| {
    ///     let _ = u.server().broadcast(m, Some(u.username())); // relay to everyone else
    /// });
    /// ```
    pub fn on_message(&self, listener: impl Fn(UserRef<'_>, &Message) + Send + Sync + 'static) -> Subscription {
        self.inner.events.message.add(Arc::new(listener))
    }

    /// Calls `listener` with the sender and the payload, read as a `T`, every time a linked user sends a message of
    /// type `kind`. A payload that does not fit `T` does not reach the listener: it is logged (at warn) and counted
    /// in [`Stats::payload_mismatches`](crate::Stats::payload_mismatches). A message without a payload reads as
    /// described in [`Message::payload_as`].
    ///
    /// ```
    /// #[derive(serde::Deserialize)]
    /// struct Move { x: u8, y: u8 }
    ///
    /// let server = emitter_core::Server::new();
    /// server.on_payload("game/move", |u, Move { x, y }| {
    ///     tracing::info!(username = %u, x, y, "moved");
    ///     let _ = u.server().broadcast_payload("game/moved", &(u.username(), x, y), None);
    /// });
    /// ```
    pub fn on_payload<T: DeserializeOwned + 'static>(
        &self,
        kind: impl Into<String>,
        listener: impl Fn(UserRef<'_>, T) + Send + Sync + 'static,
    ) -> Subscription {
        let kind = kind.into();
        self.on_message(move |user, message| {
            if message.kind != kind {
                return;
            }
            match message.payload_as::<T>() {
                Ok(payload) => listener(user, payload),
                Err(error) => {
                    // A client can cause this with every message it sends: within its connection's allowance.
                    let server = user.server();
                    if let Some(left_out) = server.client_warning() {
                        let username = user.username();
                        tracing::warn!(username, kind, %error, left_out, "a message whose payload does not fit was dropped");
                    }
                    server.inner.payload_mismatches.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    }

    /// Calls `listener` for the first message, then removes it.
    pub fn once_message(&self, listener: impl FnOnce(UserRef<'_>, &Message) + Send + 'static) -> Subscription {
        self.once_message_when(|_, _| true, listener)
    }

    /// Calls `listener` for the first message for which `predicate` holds, then removes it.
    pub fn once_message_when(
        &self,
        predicate: impl Fn(&str, &Message) -> bool + Send + Sync + 'static,
        listener: impl FnOnce(UserRef<'_>, &Message) + Send + 'static,
    ) -> Subscription {
        let slot = Mutex::new(Some(listener));
        self.inner.events.message.add_with(|alive| {
            Arc::new(move |user: UserRef<'_>, message: &Message| {
                fire_once(&alive, predicate(&user, message), &slot, |l| l(user, message))
            })
        })
    }

    /// Resolves with the sender and the message of the next application message.
    pub fn wait_for_message(&self) -> impl Future<Output = Result<(String, Message), Error>> + Send + 'static {
        self.wait_for_message_when(|_, _| true)
    }

    /// Resolves with the sender and the message of the next application message for which `predicate` holds.
    ///
    /// ```
    /// # async fn demo(server: emitter_core::Server) -> Result<(), emitter_core::Error> {
    /// let (from, message) = server.wait_for_message_when(|_, m| m.kind == "chat/say").await?;
    /// # Ok(()) }
    /// ```
    pub fn wait_for_message_when(
        &self,
        predicate: impl Fn(&str, &Message) -> bool + Send + Sync + 'static,
    ) -> impl Future<Output = Result<(String, Message), Error>> + Send + 'static {
        let (tx, rx) = oneshot::channel();
        let subscription = self.once_message_when(predicate, move |user, message| {
            let _ = tx.send((user.username().to_owned(), message.clone()));
        });
        waiting(subscription, rx)
    }
}

/// The five registration methods of an event whose listeners get the user (a [`UserRef`]): `on_*`, `once_*`, `once_*_when`,
/// `wait_for_*` and `wait_for_*_when`, for `join`, `link`, `unlink` and `leave`.
macro_rules! user_events {
    ($(
        $list:ident: $on:ident, $once:ident, $once_when:ident, $wait:ident, $wait_when:ident;
        $what:literal, $when:literal;
    )*) => {
        impl Server {$(
            #[doc = concat!("Calls `listener` with the user every time ", $what, ". ", $when)]
            ///
            /// ```
            /// let server = emitter_core::Server::new();
            #[doc = concat!("server.", stringify!($on), r#"(|u| tracing::info!(username = %u));"#)]
            /// ```
            pub fn $on(&self, listener: impl Fn(UserRef<'_>) + Send + Sync + 'static) -> Subscription {
                self.inner.events.$list.add(Arc::new(listener))
            }

            #[doc = concat!("Calls `listener` the first time ", $what, ", then removes it.")]
            pub fn $once(&self, listener: impl FnOnce(UserRef<'_>) + Send + 'static) -> Subscription {
                self.$once_when(|_| true, listener)
            }

            #[doc = concat!(
                "Calls `listener` the first time ", $what, " and `predicate` holds for the username, then removes it."
            )]
            pub fn $once_when(
                &self,
                predicate: impl Fn(&str) -> bool + Send + Sync + 'static,
                listener: impl FnOnce(UserRef<'_>) + Send + 'static,
            ) -> Subscription {
                let slot = Mutex::new(Some(listener));
                self.inner.events.$list.add_with(|alive| {
                    Arc::new(move |user: UserRef<'_>| fire_once(&alive, predicate(&user), &slot, |l| l(user)))
                })
            }

            #[doc = concat!(
                "Resolves with the username the next time ", $what, ". The listener is registered when this is ",
                "called, so an event before the future is first polled still counts."
            )]
            pub fn $wait(&self) -> impl Future<Output = Result<String, Error>> + Send + 'static {
                self.$wait_when(|_| true)
            }

            #[doc = concat!(
                "Resolves with the username the next time ", $what, " and `predicate` holds for it, or with ",
                "[`Error::ServerClosed`] if the server closes first."
            )]
            ///
            /// ```
            /// # async fn demo(server: emitter_core::Server) -> Result<(), emitter_core::Error> {
            #[doc = concat!("let bot = server.", stringify!($wait_when), r#"(|username| username.starts_with("bot")).await?;"#)]
            /// # Ok(()) }
            /// ```
            pub fn $wait_when(
                &self,
                predicate: impl Fn(&str) -> bool + Send + Sync + 'static,
            ) -> impl Future<Output = Result<String, Error>> + Send + 'static {
                let (tx, rx) = oneshot::channel();
                let subscription = self.$once_when(predicate, move |user| {
                    let _ = tx.send(user.username().to_owned());
                });
                waiting(subscription, rx)
            }
        )*}
    };
}

user_events! {
    join: on_join, once_join, once_join_when, wait_for_join, wait_for_join_when;
    "a user joined",
    "The user exists but no connection is linked to it yet, so `send` to it fails; it succeeds from `on_link`.";
    link: on_link, once_link, once_link_when, wait_for_link, wait_for_link_when;
    "a connection was linked to a user",
    "The user has received its snapshot of all users by now, so `send` to it works.";
    unlink: on_unlink, once_unlink, once_unlink_when, wait_for_unlink, wait_for_unlink_when;
    "a connection was unlinked from a user",
    "The connection may still be open; it can link again.";
    leave: on_leave, once_leave, once_leave_when, wait_for_leave, wait_for_leave_when;
    "a user left",
    "The user is gone from `users()` by now.";
}
