//! Listener lists: registration, unsubscription and panic-isolated emission.
//!
//! The server's `on_*`, `once_*` and `wait_for_*` methods are built on [`Listeners`]; a client or another component
//! can build the same kind of API on it.
//!
//! ```
//! use std::sync::Arc;
//! use emitter_core::events::Listeners;
//!
//! let listeners: Listeners<dyn Fn(&str) + Send + Sync> = Listeners::default();
//! let subscription = listeners.add(Arc::new(|name: &str| assert_eq!(name, "simon")));
//! let panics = listeners.emit("greet", |listener| listener("simon"));
//! assert!(panics.is_empty());
//! subscription.unsubscribe();
//! ```

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use parking_lot::Mutex;

use crate::auth::AuthInfo;
use crate::protocol::Message;

/// Any event the server emits, as seen by an [`on_any`](crate::Server::on_any) listener.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum Event<'a> {
    /// The server started listening on `port`.
    Listen {
        /// The port.
        port: u16,
    },
    /// The server closed.
    Close,
    /// A connection asks to link to `username`. (The [`AuthContext`](crate::AuthContext) goes to
    /// [`on_authenticate`](crate::Server::on_authenticate) listeners only.)
    Authenticate {
        /// The username asked for.
        username: &'a str,
        /// What the server knows of the request.
        info: &'a AuthInfo,
    },
    /// A user joined.
    Join {
        /// The user.
        username: &'a str,
    },
    /// A connection was linked to a user.
    Link {
        /// The user.
        username: &'a str,
    },
    /// A connection was unlinked from a user.
    Unlink {
        /// The user.
        username: &'a str,
    },
    /// A user left.
    Leave {
        /// The user.
        username: &'a str,
    },
    /// A linked user sent an application message.
    Message {
        /// The sender.
        username: &'a str,
        /// The message.
        message: &'a Message,
    },
}

impl Event<'_> {
    /// The event's name as the reference spells it: `listen`, `close`, `authenticate`, `join`, `link`, `unlink`,
    /// `leave` or `message`.
    pub fn name(&self) -> &'static str {
        match self {
            Event::Listen { .. } => "listen",
            Event::Close => "close",
            Event::Authenticate { .. } => "authenticate",
            Event::Join { .. } => "join",
            Event::Link { .. } => "link",
            Event::Unlink { .. } => "unlink",
            Event::Leave { .. } => "leave",
            Event::Message { .. } => "message",
        }
    }
}

/// A registered listener. Dropping it keeps the listener; call [`unsubscribe`](Subscription::unsubscribe) to remove it.
#[derive(Debug, Clone)]
#[must_use = "dropping a Subscription keeps the listener registered; bind it to `_` if that is what you want"]
pub struct Subscription {
    alive: Arc<AtomicBool>,
}

impl Subscription {
    /// Removes the listener. It is not called again, not even by an emit that is under way. Calling this twice is
    /// harmless.
    pub fn unsubscribe(&self) {
        self.alive.store(false, Ordering::SeqCst);
    }

    /// Whether the listener is still registered (a `once` listener stops being registered when it fires).
    pub fn is_active(&self) -> bool {
        self.alive.load(Ordering::SeqCst)
    }
}

/// Unsubscribes when dropped; what `wait_for` futures hold so that a dropped future leaves nothing behind.
#[derive(Debug)]
pub struct UnsubscribeOnDrop(pub Subscription);

impl Drop for UnsubscribeOnDrop {
    fn drop(&mut self) {
        self.0.unsubscribe();
    }
}

struct Entry<F: ?Sized> {
    alive: Arc<AtomicBool>,
    listener: Arc<F>,
}

impl<F: ?Sized> Clone for Entry<F> {
    fn clone(&self) -> Self {
        Entry {
            alive: self.alive.clone(),
            listener: self.listener.clone(),
        }
    }
}

/// The listeners of one event, in registration order. `F` is the listener's `dyn Fn(..)` type.
///
/// Emitting reads the list without taking a lock (a read-copy-update snapshot): every core emits `message` events at
/// once, and registrations are rare. Registering copies the list.
pub struct Listeners<F: ?Sized> {
    entries: ArcSwap<Vec<Entry<F>>>,
    /// Serializes registrations, so that two at once do not lose one another's entry.
    writer: Mutex<()>,
}

impl<F: ?Sized> Default for Listeners<F> {
    fn default() -> Self {
        Listeners {
            entries: ArcSwap::from_pointee(Vec::new()),
            writer: Mutex::new(()),
        }
    }
}

impl<F: ?Sized> Listeners<F> {
    /// Registers a listener built around its own liveness flag, so that a `once` listener can switch itself off.
    pub fn add_with(&self, build: impl FnOnce(Arc<AtomicBool>) -> Arc<F>) -> Subscription {
        let alive = Arc::new(AtomicBool::new(true));
        let listener = build(alive.clone());
        let _writer = self.writer.lock();
        let mut entries: Vec<Entry<F>> = self
            .entries
            .load()
            .iter()
            .filter(|entry| entry.alive.load(Ordering::SeqCst))
            .cloned()
            .collect();
        entries.push(Entry {
            alive: alive.clone(),
            listener,
        });
        self.entries.store(Arc::new(entries));
        Subscription { alive }
    }

    /// Removes every listener; their subscriptions report inactive.
    pub fn clear(&self) {
        let _writer = self.writer.lock();
        for entry in self.entries.swap(Arc::new(Vec::new())).iter() {
            entry.alive.store(false, Ordering::SeqCst);
        }
    }

    /// Registers a listener.
    pub fn add(&self, listener: Arc<F>) -> Subscription {
        self.add_with(|_| listener)
    }

    /// Calls every live listener in registration order. A listener registered during the emit is not called by it; one
    /// unsubscribed during the emit is skipped. A panicking listener is logged and skipped; the panic messages are
    /// returned in order.
    pub fn emit(&self, event: &'static str, call: impl Fn(&F)) -> Vec<String> {
        // The snapshot as of now: a listener registered by a listener of this emit is not in it.
        let snapshot = self.entries.load();
        let mut panics = Vec::new();
        for entry in snapshot.iter() {
            if !entry.alive.load(Ordering::SeqCst) {
                continue;
            }
            if let Err(payload) = catch_unwind(AssertUnwindSafe(|| call(&entry.listener))) {
                let message = panic_message(payload.as_ref());
                tracing::error!(event, panic = %message, "a listener panicked; the server carries on");
                panics.push(message);
            }
        }
        panics
    }
}

/// Runs a `once` listener if its predicate holds and it has not fired yet; the flag makes it fire at most once.
///
/// `alive` is the flag [`Listeners::add_with`] hands out, `slot` holds the `FnOnce` listener, and `call` runs it.
pub fn fire_once<L>(alive: &AtomicBool, holds: bool, slot: &Mutex<Option<L>>, call: impl FnOnce(L)) {
    if holds && alive.swap(false, Ordering::SeqCst) {
        if let Some(listener) = slot.lock().take() {
            call(listener);
        }
    }
}

/// The text of a panic payload: the `&str` or `String` given to `panic!`, or `authentication failed` for anything
/// else (the reference's wording for an authenticate listener that throws a non-error).
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "authentication failed".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    type Listener = dyn Fn(&str) + Send + Sync;

    #[test]
    fn registration_order_and_unsubscribe_during_emit() {
        let list: Arc<Listeners<Listener>> = Arc::default();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let second: Arc<Mutex<Option<Subscription>>> = Arc::default();
        let (s, second2) = (seen.clone(), second.clone());
        let _first = list.add(Arc::new(move |v: &str| {
            s.lock().push(format!("first {v}"));
            if let Some(sub) = second2.lock().as_ref() {
                sub.unsubscribe();
            }
        }));
        let s = seen.clone();
        *second.lock() = Some(list.add(Arc::new(move |v: &str| s.lock().push(format!("second {v}")))));
        let s = seen.clone();
        let _third = list.add(Arc::new(move |v: &str| s.lock().push(format!("third {v}"))));
        list.emit("test", |f| f("a"));
        list.emit("test", |f| f("b"));
        assert_eq!(*seen.lock(), ["first a", "third a", "first b", "third b"]);
    }

    #[test]
    fn listener_added_during_emit_runs_from_the_next_emit() {
        let list: Arc<Listeners<Listener>> = Arc::default();
        let count = Arc::new(AtomicUsize::new(0));
        let (l, c) = (list.clone(), count.clone());
        let _sub = list.add(Arc::new(move |_: &str| {
            let c = c.clone();
            let _ = l.add(Arc::new(move |_: &str| {
                c.fetch_add(1, Ordering::SeqCst);
            }));
        }));
        list.emit("test", |f| f("x"));
        assert_eq!(count.load(Ordering::SeqCst), 0);
        list.emit("test", |f| f("x"));
        assert_eq!(count.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_panicking_listener_is_isolated() {
        let list: Listeners<Listener> = Listeners::default();
        let count = Arc::new(AtomicUsize::new(0));
        let _a = list.add(Arc::new(|_: &str| panic!("boom")));
        let c = count.clone();
        let _b = list.add(Arc::new(move |_: &str| {
            c.fetch_add(1, Ordering::SeqCst);
        }));
        let _c = list.add(Arc::new(|v: &str| panic!("{v} went wrong")));
        assert_eq!(list.emit("test", |f| f("it")), ["boom", "it went wrong"]);
        assert_eq!(count.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn unsubscribed_entries_are_pruned() {
        let list: Listeners<Listener> = Listeners::default();
        let a = list.add(Arc::new(|_: &str| {}));
        a.unsubscribe();
        assert!(!a.is_active());
        let _b = list.add(Arc::new(|_: &str| {}));
        assert_eq!(list.entries.load().len(), 1);
    }
}
