//! The `on_*`, `once_*` and `wait_for_*` methods of [`Client`], one set per event of [`ClientEvent`].

use std::future::Future;
use std::sync::Arc;

use emitter_core::Message;
use emitter_listeners::{fire_once, wait as waited, Subscription};
use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use tokio::sync::oneshot;

use crate::client::Client;
use crate::event::ClientEvent;

/// The future behind every `wait_for_*`: it keeps the client (and so its listener) alive, and removes the listener
/// if it is dropped before the event.
fn wait<T: Send + 'static>(
    client: &Client,
    subscription: Subscription,
    rx: oneshot::Receiver<T>,
) -> impl Future<Output = T> + Send + 'static {
    let client = client.clone();
    let waiting = waited(subscription, rx);
    async move {
        let _client = client;
        match waiting.await {
            Ok(value) => value,
            // The sender lives in the listener, which the client we hold keeps; it is never dropped unsent.
            Err(_) => std::future::pending().await,
        }
    }
}

/// `on_*`, `once_*` and `wait_for_*` for an event without arguments.
macro_rules! unit_event {
    ($list:ident, $on:ident, $once:ident, $wait:ident, $what:literal) => {
        #[doc = concat!("Calls `listener` every time ", $what, ".")]
        ///
        /// ```
        /// let client = emitter_client::Client::new();
        #[doc = concat!("let subscription = client.", stringify!($on), "(|| tracing::info!(\"", stringify!($list), "\"));")]
        /// subscription.unsubscribe();
        /// ```
        pub fn $on(&self, listener: impl Fn() + Send + Sync + 'static) -> Subscription {
            self.inner.events.$list.add(Arc::new(listener))
        }

        #[doc = concat!("Calls `listener` the next time ", $what, ", then removes it.")]
        ///
        /// ```
        /// let client = emitter_client::Client::new();
        #[doc = concat!("let _ = client.", stringify!($once), "(|| tracing::info!(\"", stringify!($list), "\"));")]
        /// ```
        pub fn $once(&self, listener: impl FnOnce() + Send + 'static) -> Subscription {
            let slot = Mutex::new(Some(listener));
            self.inner.events.$list.add_with(|alive| Arc::new(move || fire_once(&alive, true, &slot, |l| l())))
        }

        #[doc = concat!("Resolves the next time ", $what, ". The listener is registered when this is called.")]
        ///
        /// ```
        /// # async fn demo(client: emitter_client::Client) {
        #[doc = concat!("client.", stringify!($wait), "().await;")]
        /// # }
        /// ```
        pub fn $wait(&self) -> impl Future<Output = ()> + Send + 'static {
            let (tx, rx) = oneshot::channel();
            let subscription = self.$once(move || {
                let _ = tx.send(());
            });
            wait(self, subscription, rx)
        }
    };
}

/// `on_*`, `once_*`, `once_*_when`, `wait_for_*` and `wait_for_*_when` for an event with one string argument.
macro_rules! named_event {
    ($list:ident, $on:ident, $once:ident, $once_when:ident, $wait:ident, $wait_when:ident, $arg:literal, $what:literal) => {
        #[doc = concat!("Calls `listener` with the ", $arg, " every time ", $what, ".")]
        ///
        /// ```
        /// let client = emitter_client::Client::new();
        #[doc = concat!("let _ = client.", stringify!($on), "(|value| tracing::info!(value, \"", stringify!($list), "\"));")]
        /// ```
        pub fn $on(&self, listener: impl Fn(&str) + Send + Sync + 'static) -> Subscription {
            self.inner.events.$list.add(Arc::new(listener))
        }

        #[doc = concat!("Calls `listener` with the ", $arg, " the next time ", $what, ", then removes it.")]
        ///
        /// ```
        /// let client = emitter_client::Client::new();
        #[doc = concat!("let _ = client.", stringify!($once), "(|value| tracing::info!(value, \"", stringify!($list), "\"));")]
        /// ```
        pub fn $once(&self, listener: impl FnOnce(&str) + Send + 'static) -> Subscription {
            self.$once_when(|_| true, listener)
        }

        #[doc = concat!("Calls `listener` with the ", $arg, " the next time ", $what, " and `predicate` holds for it, then removes it.")]
        ///
        /// ```
        /// let client = emitter_client::Client::new();
        #[doc = concat!("let _ = client.", stringify!($once_when), "(|value| value == \"lisa\", |value| tracing::info!(value));")]
        /// ```
        pub fn $once_when(
            &self,
            predicate: impl Fn(&str) -> bool + Send + Sync + 'static,
            listener: impl FnOnce(&str) + Send + 'static,
        ) -> Subscription {
            let slot = Mutex::new(Some(listener));
            self.inner.events.$list.add_with(|alive| {
                Arc::new(move |value: &str| fire_once(&alive, predicate(value), &slot, |l| l(value)))
            })
        }

        #[doc = concat!("Resolves with the ", $arg, " the next time ", $what, ". The listener is registered when this is called.")]
        ///
        /// ```
        /// # async fn demo(client: emitter_client::Client) {
        #[doc = concat!("let value: String = client.", stringify!($wait), "().await;")]
        /// # }
        /// ```
        pub fn $wait(&self) -> impl Future<Output = String> + Send + 'static {
            self.$wait_when(|_| true)
        }

        #[doc = concat!("Resolves with the ", $arg, " the next time ", $what, " and `predicate` holds for it.")]
        ///
        /// ```
        /// # async fn demo(client: emitter_client::Client) {
        #[doc = concat!("let value = client.", stringify!($wait_when), "(|value| value.starts_with(\"bot\")).await;")]
        /// # }
        /// ```
        pub fn $wait_when(
            &self,
            predicate: impl Fn(&str) -> bool + Send + Sync + 'static,
        ) -> impl Future<Output = String> + Send + 'static {
            let (tx, rx) = oneshot::channel();
            let subscription = self.$once_when(predicate, move |value| {
                let _ = tx.send(value.to_owned());
            });
            wait(self, subscription, rx)
        }
    };
}

/// Listeners run in registration order, the any-event listeners before an event's own, on the task that read the
/// message (or the caller's, for events a method emits). A listener may call any client method; it should return
/// quickly (spawn anything slow). A panicking listener is logged and the others still run. Every registration returns
/// a [`Subscription`] that removes the listener; dropping it keeps the listener.
impl Client {
    /// Calls `listener` with every event, before the event's own listeners.
    ///
    /// ```
    /// let client = emitter_client::Client::new();
    /// client.on_any(|event| tracing::debug!(event = event.name()));
    /// ```
    pub fn on_any(&self, listener: impl Fn(&ClientEvent<'_>) + Send + Sync + 'static) -> Subscription {
        self.inner.events.any.add(Arc::new(listener))
    }

    /// Resolves with what `pick` returns for the first event for which it returns `Some`.
    ///
    /// ```
    /// use emitter_client::ClientEvent;
    /// # async fn demo(client: emitter_client::Client) {
    /// let reason = client
    ///     .wait_for_event(|event| match event {
    ///         ClientEvent::Reject { reason } => Some(reason.to_string()),
    ///         _ => None,
    ///     })
    ///     .await;
    /// # }
    /// ```
    pub fn wait_for_event<T: Send + 'static>(
        &self,
        pick: impl Fn(&ClientEvent<'_>) -> Option<T> + Send + Sync + 'static,
    ) -> impl Future<Output = T> + Send + 'static {
        let (tx, rx) = oneshot::channel();
        let tx = Mutex::new(Some(tx));
        let subscription = self.inner.events.any.add_with(|alive| {
            Arc::new(move |event: &ClientEvent<'_>| {
                if let Some(value) = pick(event) {
                    fire_once(&alive, true, &tx, |tx| {
                        let _ = tx.send(value);
                    });
                }
            })
        });
        wait(self, subscription, rx)
    }

    unit_event!(
        connecting,
        on_connecting,
        once_connecting,
        wait_for_connecting,
        "the client starts connecting"
    );
    unit_event!(connect, on_connect, once_connect, wait_for_connect, "the socket opened");
    unit_event!(
        closing,
        on_closing,
        once_closing,
        wait_for_closing,
        "the client starts disconnecting"
    );
    unit_event!(
        close,
        on_close,
        once_close,
        wait_for_close,
        "the socket closed or failed to open"
    );
    unit_event!(
        linking,
        on_linking,
        once_linking,
        wait_for_linking,
        "the client sends a link request"
    );
    unit_event!(
        accept,
        on_accept,
        once_accept,
        wait_for_accept,
        "the server accepted a link request"
    );
    unit_event!(
        unlinking,
        on_unlinking,
        once_unlinking,
        wait_for_unlinking,
        "the client sends an unlink or leave request"
    );

    named_event!(
        reject,
        on_reject,
        once_reject,
        once_reject_when,
        wait_for_reject,
        wait_for_reject_when,
        "reason",
        "the server rejected a link request"
    );
    named_event!(
        join,
        on_join,
        once_join,
        once_join_when,
        wait_for_join,
        wait_for_join_when,
        "username",
        "a user joined (or was there when this client linked)"
    );
    named_event!(
        link,
        on_link,
        once_link,
        once_link_when,
        wait_for_link,
        wait_for_link_when,
        "username",
        "a connection linked to a user (or was linked when this client linked)"
    );
    named_event!(
        unlink,
        on_unlink,
        once_unlink,
        once_unlink_when,
        wait_for_unlink,
        wait_for_unlink_when,
        "username",
        "a user's connection unlinked"
    );
    named_event!(
        leave,
        on_leave,
        once_leave,
        once_leave_when,
        wait_for_leave,
        wait_for_leave_when,
        "username",
        "a user left"
    );

    /// Calls `listener` with every application message the server sends while this client is linked.
    ///
    /// ```
    /// let client = emitter_client::Client::new();
    /// client.on_message(|message| tracing::info!(kind = message.kind, "message"));
    /// ```
    pub fn on_message(&self, listener: impl Fn(&Message) + Send + Sync + 'static) -> Subscription {
        self.inner.events.message.add(Arc::new(listener))
    }

    /// Calls `listener` with the next application message, then removes it.
    ///
    /// ```
    /// let client = emitter_client::Client::new();
    /// client.once_message(|message| tracing::info!(kind = message.kind, "first message"));
    /// ```
    pub fn once_message(&self, listener: impl FnOnce(&Message) + Send + 'static) -> Subscription {
        self.once_message_when(|_| true, listener)
    }

    /// Calls `listener` with the next application message for which `predicate` holds, then removes it.
    ///
    /// ```
    /// let client = emitter_client::Client::new();
    /// client.once_message_when(|m| m.kind == "game/over", |_| tracing::info!("game over"));
    /// ```
    pub fn once_message_when(
        &self,
        predicate: impl Fn(&Message) -> bool + Send + Sync + 'static,
        listener: impl FnOnce(&Message) + Send + 'static,
    ) -> Subscription {
        let slot = Mutex::new(Some(listener));
        self.inner.events.message.add_with(|alive| {
            Arc::new(move |message: &Message| fire_once(&alive, predicate(message), &slot, |l| l(message)))
        })
    }

    /// Resolves with the next application message.
    ///
    /// ```
    /// # async fn demo(client: emitter_client::Client) {
    /// let message = client.wait_for_message().await;
    /// # }
    /// ```
    pub fn wait_for_message(&self) -> impl Future<Output = Message> + Send + 'static {
        self.wait_for_message_when(|_| true)
    }

    /// Resolves with the next application message for which `predicate` holds.
    ///
    /// ```
    /// # async fn demo(client: emitter_client::Client) {
    /// let message = client.wait_for_message_when(|m| m.kind == "chat/said").await;
    /// # }
    /// ```
    pub fn wait_for_message_when(
        &self,
        predicate: impl Fn(&Message) -> bool + Send + Sync + 'static,
    ) -> impl Future<Output = Message> + Send + 'static {
        let (tx, rx) = oneshot::channel();
        let subscription = self.once_message_when(predicate, move |message| {
            let _ = tx.send(message.clone());
        });
        wait(self, subscription, rx)
    }

    /// Calls `listener` with the payload of every message of type `kind`, read as a `T`. A payload that does not read
    /// as a `T` is logged (warn) and skipped; a message without a payload reads as JSON `null`.
    ///
    /// ```
    /// #[derive(serde::Deserialize)]
    /// struct Said { username: String, text: String }
    ///
    /// let client = emitter_client::Client::new();
    /// client.on_payload("chat/said", |said: Said| tracing::info!(said.username, said.text));
    /// ```
    pub fn on_payload<T: DeserializeOwned>(
        &self,
        kind: impl Into<String>,
        listener: impl Fn(T) + Send + Sync + 'static,
    ) -> Subscription {
        let kind = kind.into();
        self.on_message(move |message| {
            if message.kind != kind {
                return;
            }
            match message.payload_as::<T>() {
                Ok(payload) => listener(payload),
                Err(error) => tracing::warn!(kind, %error, "a payload of an unexpected shape; skipped"),
            }
        })
    }

    /// Resolves with the payload of the next message of type `kind`, read as a `T`, or the error that reading it gave.
    ///
    /// ```
    /// # async fn demo(client: emitter_client::Client) -> Result<(), serde_json::Error> {
    /// let score: u32 = client.wait_for_payload("game/score").await?;
    /// # Ok(()) }
    /// ```
    pub fn wait_for_payload<T: DeserializeOwned + Send + 'static>(
        &self,
        kind: impl Into<String>,
    ) -> impl Future<Output = Result<T, serde_json::Error>> + Send + 'static {
        let kind = kind.into();
        let message = self.wait_for_message_when(move |message| message.kind == kind);
        async move { message.await.payload_as::<T>() }
    }
}
