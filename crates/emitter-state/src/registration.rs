//! How a model hooks into a server: through the public listener API only, like any application.

use std::sync::Arc;

use emitter_core::{Message, Server, Subscription};
use parking_lot::Mutex;

/// What a model does on the server's events.
pub(crate) trait Listeners: Send + Sync + 'static {
    /// A user linked: send it what it needs to catch up, and from then on every change.
    fn link(&self, server: &Server, username: &str);
    /// A user is no longer linked (it unlinked or left): send it nothing more until it links again.
    fn unlink(&self, server: &Server, username: &str);
    /// A user left. By default the same as an unlink (a user who leaves while linked is unlinked first anyway).
    fn leave(&self, server: &Server, username: &str) {
        self.unlink(server, username);
    }
    /// A linked user sent a message, of any type.
    fn message(&self, server: &Server, username: &str, message: &Message);
    /// Whether `username` has had its catch-up since it linked.
    fn caught_up(&self, username: &str) -> bool;
}

/// The listeners of one registered model; [`unregister`](Registration::unregister) removes them.
#[derive(Default)]
pub(crate) struct Registration {
    subscriptions: Mutex<Vec<Subscription>>,
}

impl Registration {
    /// Registers `model`'s listeners on `server`, then catches up the users linked already (a model registered on a
    /// server that is running), under `server.atomically` so that no link slips in between.
    pub(crate) fn new<M: Listeners>(server: &Server, model: Arc<M>) -> Registration {
        let m = model.clone();
        let on_message = server.on_message(move |u, message| m.message(u.server(), &u, message));
        let m = model.clone();
        let on_link = server.on_link(move |u| m.link(u.server(), &u));
        let m = model.clone();
        let on_unlink = server.on_unlink(move |u| m.unlink(u.server(), &u));
        let m = model.clone();
        let on_leave = server.on_leave(move |u| m.leave(u.server(), &u));
        server.atomically(|server| {
            for user in server.users() {
                if user.is_linked && !model.caught_up(&user.username) {
                    model.link(server, &user.username);
                }
            }
        });
        Registration {
            subscriptions: Mutex::new(vec![on_message, on_link, on_unlink, on_leave]),
        }
    }

    /// Removes the listeners. Calling it again does nothing.
    pub(crate) fn unregister(&self) {
        for subscription in self.subscriptions.lock().drain(..) {
            subscription.unsubscribe();
        }
    }
}
