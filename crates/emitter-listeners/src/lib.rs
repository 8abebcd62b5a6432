//! Listener lists, as the emitter Krmx server and client use them: listeners registered in order, emitted to without a
//! lock, each isolated from the others' panics, removable through a [`Subscription`], with one-shot listeners and
//! futures that resolve at the next matching event.
//!
//! ```
//! use std::sync::Arc;
//! use emitter_listeners::Listeners;
//!
//! let greetings: Listeners<dyn Fn(&str) + Send + Sync> = Listeners::default();
//! let subscription = greetings.add(Arc::new(|name: &str| assert_eq!(name, "simon")));
//! let panics = greetings.emit("greet", |listener| listener("simon"));
//! assert!(panics.is_empty());
//! subscription.unsubscribe();
//! ```
//!
//! # Feature flags
//!
//! This crate has no optional features.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

use std::fmt;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use tokio::sync::oneshot;

/// A handle on a registered listener. Listeners live as long as the list they are in: dropping this handle keeps the
/// listener; [`unsubscribe`](Subscription::unsubscribe) removes it.
#[derive(Debug, Clone)]
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

/// Shows how many listeners are registered (the listeners themselves are closures).
impl<F: ?Sized> fmt::Debug for Listeners<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Listeners")
            .field("len", &self.entries.load().len())
            .finish()
    }
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

/// Runs a one-shot listener if `holds` and it has not run yet: the flag [`Listeners::add_with`] hands out makes it run
/// at most once, and the listener is taken out of `slot` to run.
pub fn fire_once<L>(alive: &AtomicBool, holds: bool, slot: &Mutex<Option<L>>, call: impl FnOnce(L)) {
    if holds && alive.swap(false, Ordering::SeqCst) {
        if let Some(listener) = slot.lock().take() {
            call(listener);
        }
    }
}

/// The listeners a [`wait`] was waiting on were dropped (their owner closed) before the event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dropped;

impl fmt::Display for Dropped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the listeners were dropped before the event")
    }
}

impl std::error::Error for Dropped {}

/// The future behind a `wait_for_*`: resolves with what the one-shot listener behind `subscription` sends on `rx`, or
/// with [`Dropped`] once the listener is dropped unsent (its list was cleared or dropped). Dropping the future
/// unsubscribes the listener. It holds nothing but the subscription and the receiver, so it keeps nothing alive.
pub fn wait<T: Send + 'static>(
    subscription: Subscription,
    rx: oneshot::Receiver<T>,
) -> impl Future<Output = Result<T, Dropped>> + Send + 'static {
    struct UnsubscribeOnDrop(Subscription);
    impl Drop for UnsubscribeOnDrop {
        fn drop(&mut self) {
            self.0.unsubscribe();
        }
    }
    let guard = UnsubscribeOnDrop(subscription);
    async move {
        let _guard = guard;
        rx.await.map_err(|_| Dropped)
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

    type Waited = dyn Fn(u32) + Send + Sync;

    fn waiter(list: &Listeners<Waited>) -> impl Future<Output = Result<u32, Dropped>> {
        let (tx, rx) = oneshot::channel();
        let tx = Mutex::new(Some(tx));
        let subscription = list.add_with(|alive| {
            Arc::new(move |n: u32| {
                fire_once(&alive, n > 1, &tx, |tx| {
                    let _ = tx.send(n);
                })
            })
        });
        wait(subscription, rx)
    }

    #[tokio::test]
    async fn a_wait_resolves_at_the_first_match_or_when_its_list_is_cleared() {
        let list: Listeners<Waited> = Listeners::default();
        let first = waiter(&list);
        list.emit("n", |f| f(1));
        list.emit("n", |f| f(2));
        list.emit("n", |f| f(3));
        assert_eq!(first.await, Ok(2));

        let second = waiter(&list);
        list.clear();
        assert_eq!(second.await, Err(Dropped));
    }

    #[test]
    fn a_dropped_wait_leaves_nothing_behind() {
        let list: Listeners<Waited> = Listeners::default();
        drop(waiter(&list));
        let _other = list.add(Arc::new(|_: u32| {}));
        assert_eq!(list.entries.load().len(), 1, "the dropped wait's listener was pruned");
    }
}
