//! Registering listeners: `on_*`, `once_*`, `wait_for_*` and the any-event listener.

use std::future::Future;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::oneshot;

use crate::auth::{AuthContext, AuthInfo};
use crate::events::{fire_once, Event, Listeners, Subscription, UnsubscribeOnDrop};
use crate::protocol::Message;
use crate::Server;

type UserListener = dyn Fn(&str) + Send + Sync;
type AnyListener = dyn Fn(&Event<'_>) + Send + Sync;
type AuthListener = dyn Fn(&str, &AuthInfo, &AuthContext) + Send + Sync;
type MessageListener = dyn Fn(&str, &Message) + Send + Sync;

/// One listener list per event.
#[derive(Default)]
pub(crate) struct Events {
    pub(crate) any: Listeners<AnyListener>,
    pub(crate) listen: Listeners<dyn Fn(u16) + Send + Sync>,
    pub(crate) close: Listeners<dyn Fn() + Send + Sync>,
    pub(crate) authenticate: Listeners<AuthListener>,
    pub(crate) join: Listeners<UserListener>,
    pub(crate) link: Listeners<UserListener>,
    pub(crate) unlink: Listeners<UserListener>,
    pub(crate) leave: Listeners<UserListener>,
    pub(crate) message: Listeners<MessageListener>,
}

impl Events {
    /// Drops every listener.
    pub(crate) fn clear(&self) {
        self.any.clear();
        self.listen.clear();
        self.close.clear();
        self.authenticate.clear();
        self.join.clear();
        self.link.clear();
        self.unlink.clear();
        self.leave.clear();
        self.message.clear();
    }
}

/// Listeners run in registration order, any-event listeners before an event's own. A listener may call any server
/// method. A panic in a listener is logged and the other listeners still run (in `on_authenticate`, it also rejects
/// the link with the panic's message). Each registration returns a [`Subscription`] that removes the listener.
impl Server {
    /// Calls `listener` with every event, before the event's own listeners.
    ///
    /// ```
    /// let server = emitter_core::Server::new();
    /// let _ = server.on_any(|event| tracing::debug!(event = event.name()));
    /// ```
    pub fn on_any(&self, listener: impl Fn(&Event<'_>) + Send + Sync + 'static) -> Subscription {
        self.inner.events.any.add(Arc::new(listener))
    }

    /// Resolves with what `pick` returns for the first event for which it returns `Some`.
    ///
    /// ```
    /// use emitter_core::Event;
    /// # async fn demo(server: emitter_core::Server) {
    /// let who = server
    ///     .wait_for_event(|event| match event {
    ///         Event::Message { username, message } if message.kind == "game/ready" => Some(username.to_string()),
    ///         _ => None,
    ///     })
    ///     .await;
    /// # }
    /// ```
    pub fn wait_for_event<T: Send + 'static>(
        &self,
        pick: impl Fn(&Event<'_>) -> Option<T> + Send + Sync + 'static,
    ) -> impl Future<Output = T> + Send + 'static {
        let (tx, rx) = oneshot::channel();
        let tx = Mutex::new(Some(tx));
        let subscription = self.inner.events.any.add_with(|alive| {
            Arc::new(move |event: &Event<'_>| {
                if let Some(value) = pick(event) {
                    fire_once(&alive, true, &tx, |tx| {
                        let _ = tx.send(value);
                    });
                }
            })
        });
        self.wait(subscription, rx)
    }

    /// Calls `listener` with the port once the server listens. It runs before the transport accepts its first
    /// connection, so users joined here with [`Server::join`] are in place for every client.
    ///
    /// ```
    /// let server = emitter_core::Server::new();
    /// let _ = server.on_listen(|port| tracing::info!(port, "up"));
    /// ```
    pub fn on_listen(&self, listener: impl Fn(u16) + Send + Sync + 'static) -> Subscription {
        self.inner.events.listen.add(Arc::new(listener))
    }

    /// Resolves with the port once the server listens.
    pub fn wait_for_listen(&self) -> impl Future<Output = u16> + Send + 'static {
        let (tx, rx) = oneshot::channel();
        let tx = Mutex::new(Some(tx));
        let subscription = self.inner.events.listen.add_with(|alive| {
            Arc::new(move |port| {
                fire_once(&alive, true, &tx, |tx| {
                    let _ = tx.send(port);
                })
            })
        });
        self.wait(subscription, rx)
    }

    /// Calls `listener` once the server has closed.
    ///
    /// ```
    /// let server = emitter_core::Server::new();
    /// let _ = server.on_close(|| tracing::info!("closed"));
    /// ```
    pub fn on_close(&self, listener: impl Fn() + Send + Sync + 'static) -> Subscription {
        self.inner.events.close.add(Arc::new(listener))
    }

    /// Resolves once the server has closed.
    pub fn wait_for_close(&self) -> impl Future<Output = ()> + Send + 'static {
        let (tx, rx) = oneshot::channel();
        let tx = Mutex::new(Some(tx));
        let subscription = self.inner.events.close.add_with(|alive| {
            Arc::new(move || {
                fire_once(&alive, true, &tx, |tx| {
                    let _ = tx.send(());
                })
            })
        });
        self.wait(subscription, rx)
    }

    /// Calls `listener` before a connection links to a user, after the protocol's own checks passed (well-formed
    /// request, version, username rule, accepting new users, not already linked).
    ///
    /// The listener gets the username, [`AuthInfo`] and an [`AuthContext`] to [`reject`](AuthContext::reject) the
    /// request or defer the decision with [`mark_async`](AuthContext::mark_async). Without either, the link is
    /// accepted when the listeners return.
    ///
    /// ```
    /// let server = emitter_core::Server::new();
    /// let s = server.clone();
    /// let _ = server.on_authenticate(move |_username, info, ctx| {
    ///     if info.is_new_user && s.users().len() >= 10 {
    ///         ctx.reject("server is full");
    ///     }
    /// });
    /// ```
    pub fn on_authenticate(
        &self,
        listener: impl Fn(&str, &AuthInfo, &AuthContext) + Send + Sync + 'static,
    ) -> Subscription {
        self.inner.events.authenticate.add(Arc::new(listener))
    }

    /// Calls `listener` with the sender and the message every time a linked user sends an application message (any
    /// type outside `krmx/`).
    ///
    /// ```
    /// #[derive(serde::Deserialize)]
    /// struct Move { x: u8, y: u8 }
    ///
    /// let server = emitter_core::Server::new();
    /// let _ = server.on_message(|username, message| {
    ///     if message.kind == "game/move" {
    ///         if let Ok(Move { x, y }) = message.payload_as::<Move>() {
    ///             tracing::info!(username, x, y, "moved");
    ///         }
    ///     }
    /// });
    /// ```
    pub fn on_message(&self, listener: impl Fn(&str, &Message) + Send + Sync + 'static) -> Subscription {
        self.inner.events.message.add(Arc::new(listener))
    }

    /// Calls `listener` for the first message, then removes it.
    pub fn once_message(&self, listener: impl FnOnce(&str, &Message) + Send + 'static) -> Subscription {
        self.once_message_when(|_, _| true, listener)
    }

    /// Calls `listener` for the first message for which `predicate` holds, then removes it.
    pub fn once_message_when(
        &self,
        predicate: impl Fn(&str, &Message) -> bool + Send + Sync + 'static,
        listener: impl FnOnce(&str, &Message) + Send + 'static,
    ) -> Subscription {
        let slot = Mutex::new(Some(listener));
        self.inner.events.message.add_with(|alive| {
            Arc::new(move |username: &str, message: &Message| {
                fire_once(&alive, predicate(username, message), &slot, |l| l(username, message))
            })
        })
    }

    /// Resolves with the sender and the message of the next application message.
    pub fn wait_for_message(&self) -> impl Future<Output = (String, Message)> + Send + 'static {
        self.wait_for_message_when(|_, _| true)
    }

    /// Resolves with the sender and the message of the next application message for which `predicate` holds.
    ///
    /// ```
    /// # async fn demo(server: emitter_core::Server) {
    /// let (from, message) = server.wait_for_message_when(|_, m| m.kind == "chat/say").await;
    /// # }
    /// ```
    pub fn wait_for_message_when(
        &self,
        predicate: impl Fn(&str, &Message) -> bool + Send + Sync + 'static,
    ) -> impl Future<Output = (String, Message)> + Send + 'static {
        let (tx, rx) = oneshot::channel();
        let subscription = self.once_message_when(predicate, move |username, message| {
            let _ = tx.send((username.to_owned(), message.clone()));
        });
        self.wait(subscription, rx)
    }

    /// Calls `listener` with the username every time a user joined. At this point the user exists but no connection is linked to it yet, so `send` to it fails; it succeeds from `on_link`.
    ///
    /// ```
    /// let server = emitter_core::Server::new();
    /// let _subscription = server.on_join(|username| println!("join: {username}"));
    /// ```
    pub fn on_join(&self, listener: impl Fn(&str) + Send + Sync + 'static) -> Subscription {
        self.inner.events.join.add(Arc::new(listener))
    }

    /// Calls `listener` the first time a user joined, then removes it.
    pub fn once_join(&self, listener: impl FnOnce(&str) + Send + 'static) -> Subscription {
        self.once_join_when(|_| true, listener)
    }

    /// Calls `listener` the first time a user joined and `predicate` holds for the username, then removes it.
    ///
    /// ```
    /// let server = emitter_core::Server::new();
    /// let _ = server.once_join_when(|username| username == "simon", |_| println!("there he is"));
    /// ```
    pub fn once_join_when(
        &self,
        predicate: impl Fn(&str) -> bool + Send + Sync + 'static,
        listener: impl FnOnce(&str) + Send + 'static,
    ) -> Subscription {
        let slot = Mutex::new(Some(listener));
        self.inner.events.join.add_with(|alive| {
            Arc::new(move |username: &str| fire_once(&alive, predicate(username), &slot, |l| l(username)))
        })
    }

    /// Resolves with the username the next time a user joined. The listener is registered when this is called, so an event
    /// that happens before the future is first polled still counts.
    pub fn wait_for_join(&self) -> impl Future<Output = String> + Send + 'static {
        self.wait_for_join_when(|_| true)
    }

    /// Resolves with the username the next time a user joined and `predicate` holds for it.
    ///
    /// ```
    /// # async fn demo(server: emitter_core::Server) {
    /// let username = server.wait_for_join_when(|username| username.starts_with("bot")).await;
    /// # }
    /// ```
    pub fn wait_for_join_when(
        &self,
        predicate: impl Fn(&str) -> bool + Send + Sync + 'static,
    ) -> impl Future<Output = String> + Send + 'static {
        let (tx, rx) = oneshot::channel();
        let subscription = self.once_join_when(predicate, move |username| {
            let _ = tx.send(username.to_owned());
        });
        self.wait(subscription, rx)
    }

    /// Calls `listener` with the username every time a connection was linked to a user. The user has received its snapshot of all users by now, so `send` to it works.
    ///
    /// ```
    /// let server = emitter_core::Server::new();
    /// let _subscription = server.on_link(|username| println!("link: {username}"));
    /// ```
    pub fn on_link(&self, listener: impl Fn(&str) + Send + Sync + 'static) -> Subscription {
        self.inner.events.link.add(Arc::new(listener))
    }

    /// Calls `listener` the first time a connection was linked to a user, then removes it.
    pub fn once_link(&self, listener: impl FnOnce(&str) + Send + 'static) -> Subscription {
        self.once_link_when(|_| true, listener)
    }

    /// Calls `listener` the first time a connection was linked to a user and `predicate` holds for the username, then removes it.
    ///
    /// ```
    /// let server = emitter_core::Server::new();
    /// let _ = server.once_link_when(|username| username == "simon", |_| println!("there he is"));
    /// ```
    pub fn once_link_when(
        &self,
        predicate: impl Fn(&str) -> bool + Send + Sync + 'static,
        listener: impl FnOnce(&str) + Send + 'static,
    ) -> Subscription {
        let slot = Mutex::new(Some(listener));
        self.inner.events.link.add_with(|alive| {
            Arc::new(move |username: &str| fire_once(&alive, predicate(username), &slot, |l| l(username)))
        })
    }

    /// Resolves with the username the next time a connection was linked to a user. The listener is registered when this is called, so an event
    /// that happens before the future is first polled still counts.
    pub fn wait_for_link(&self) -> impl Future<Output = String> + Send + 'static {
        self.wait_for_link_when(|_| true)
    }

    /// Resolves with the username the next time a connection was linked to a user and `predicate` holds for it.
    ///
    /// ```
    /// # async fn demo(server: emitter_core::Server) {
    /// let username = server.wait_for_link_when(|username| username.starts_with("bot")).await;
    /// # }
    /// ```
    pub fn wait_for_link_when(
        &self,
        predicate: impl Fn(&str) -> bool + Send + Sync + 'static,
    ) -> impl Future<Output = String> + Send + 'static {
        let (tx, rx) = oneshot::channel();
        let subscription = self.once_link_when(predicate, move |username| {
            let _ = tx.send(username.to_owned());
        });
        self.wait(subscription, rx)
    }

    /// Calls `listener` with the username every time a connection was unlinked from a user. The connection may still be open; it can link again.
    ///
    /// ```
    /// let server = emitter_core::Server::new();
    /// let _subscription = server.on_unlink(|username| println!("unlink: {username}"));
    /// ```
    pub fn on_unlink(&self, listener: impl Fn(&str) + Send + Sync + 'static) -> Subscription {
        self.inner.events.unlink.add(Arc::new(listener))
    }

    /// Calls `listener` the first time a connection was unlinked from a user, then removes it.
    pub fn once_unlink(&self, listener: impl FnOnce(&str) + Send + 'static) -> Subscription {
        self.once_unlink_when(|_| true, listener)
    }

    /// Calls `listener` the first time a connection was unlinked from a user and `predicate` holds for the username, then removes it.
    ///
    /// ```
    /// let server = emitter_core::Server::new();
    /// let _ = server.once_unlink_when(|username| username == "simon", |_| println!("there he is"));
    /// ```
    pub fn once_unlink_when(
        &self,
        predicate: impl Fn(&str) -> bool + Send + Sync + 'static,
        listener: impl FnOnce(&str) + Send + 'static,
    ) -> Subscription {
        let slot = Mutex::new(Some(listener));
        self.inner.events.unlink.add_with(|alive| {
            Arc::new(move |username: &str| fire_once(&alive, predicate(username), &slot, |l| l(username)))
        })
    }

    /// Resolves with the username the next time a connection was unlinked from a user. The listener is registered when this is called, so an event
    /// that happens before the future is first polled still counts.
    pub fn wait_for_unlink(&self) -> impl Future<Output = String> + Send + 'static {
        self.wait_for_unlink_when(|_| true)
    }

    /// Resolves with the username the next time a connection was unlinked from a user and `predicate` holds for it.
    ///
    /// ```
    /// # async fn demo(server: emitter_core::Server) {
    /// let username = server.wait_for_unlink_when(|username| username.starts_with("bot")).await;
    /// # }
    /// ```
    pub fn wait_for_unlink_when(
        &self,
        predicate: impl Fn(&str) -> bool + Send + Sync + 'static,
    ) -> impl Future<Output = String> + Send + 'static {
        let (tx, rx) = oneshot::channel();
        let subscription = self.once_unlink_when(predicate, move |username| {
            let _ = tx.send(username.to_owned());
        });
        self.wait(subscription, rx)
    }

    /// Calls `listener` with the username every time a user left. The user is gone from `users()` by now.
    ///
    /// ```
    /// let server = emitter_core::Server::new();
    /// let _subscription = server.on_leave(|username| println!("leave: {username}"));
    /// ```
    pub fn on_leave(&self, listener: impl Fn(&str) + Send + Sync + 'static) -> Subscription {
        self.inner.events.leave.add(Arc::new(listener))
    }

    /// Calls `listener` the first time a user left, then removes it.
    pub fn once_leave(&self, listener: impl FnOnce(&str) + Send + 'static) -> Subscription {
        self.once_leave_when(|_| true, listener)
    }

    /// Calls `listener` the first time a user left and `predicate` holds for the username, then removes it.
    ///
    /// ```
    /// let server = emitter_core::Server::new();
    /// let _ = server.once_leave_when(|username| username == "simon", |_| println!("there he is"));
    /// ```
    pub fn once_leave_when(
        &self,
        predicate: impl Fn(&str) -> bool + Send + Sync + 'static,
        listener: impl FnOnce(&str) + Send + 'static,
    ) -> Subscription {
        let slot = Mutex::new(Some(listener));
        self.inner.events.leave.add_with(|alive| {
            Arc::new(move |username: &str| fire_once(&alive, predicate(username), &slot, |l| l(username)))
        })
    }

    /// Resolves with the username the next time a user left. The listener is registered when this is called, so an event
    /// that happens before the future is first polled still counts.
    pub fn wait_for_leave(&self) -> impl Future<Output = String> + Send + 'static {
        self.wait_for_leave_when(|_| true)
    }

    /// Resolves with the username the next time a user left and `predicate` holds for it.
    ///
    /// ```
    /// # async fn demo(server: emitter_core::Server) {
    /// let username = server.wait_for_leave_when(|username| username.starts_with("bot")).await;
    /// # }
    /// ```
    pub fn wait_for_leave_when(
        &self,
        predicate: impl Fn(&str) -> bool + Send + Sync + 'static,
    ) -> impl Future<Output = String> + Send + 'static {
        let (tx, rx) = oneshot::channel();
        let subscription = self.once_leave_when(predicate, move |username| {
            let _ = tx.send(username.to_owned());
        });
        self.wait(subscription, rx)
    }

    /// The future behind every `wait_for_*`: it keeps the server (and so its listener) alive, and removes the listener
    /// if it is dropped before the event.
    fn wait<T: Send + 'static>(
        &self,
        subscription: Subscription,
        rx: oneshot::Receiver<T>,
    ) -> impl Future<Output = T> + Send + 'static {
        let server = self.clone();
        async move {
            let _unsubscribe = UnsubscribeOnDrop(subscription);
            let _server = server;
            match rx.await {
                Ok(value) => value,
                // The sender lives in the listener, which the server we hold keeps; it is never dropped unsent.
                Err(_) => std::future::pending().await,
            }
        }
    }
}
