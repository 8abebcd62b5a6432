//! How a model hooks into a server: through the public listener API only, like any application.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use emitter_core::{MembershipKind, Message, Server, Subscription};
use parking_lot::Mutex;

use crate::journal::{Journal, JournalError, JournalModel, MembershipChange, Request};
use crate::journaled::{change_of, request_text};

/// What names a model, in logs and in a journal.
pub(crate) trait Model: Send + Sync + 'static {
    /// The kind of model, for logs: `atoms`, `stream` or `projection`.
    const KIND: &'static str;
    /// Its domain (with a journal: its domain there).
    fn domain(&self) -> &str;
}

/// What a model does on the server's events.
pub(crate) trait Listeners: Model {
    /// A user linked: send it what it needs to catch up, and from then on every change.
    fn link(&self, server: &Server, username: &str);
    /// A user is no longer linked (it unlinked or left): send it nothing more until it links again.
    fn unlink(&self, server: &Server, username: &str);
    /// A user left. By default the same as an unlink (a user who leaves while linked is unlinked first anyway).
    fn leave(&self, server: &Server, username: &str) {
        self.unlink(server, username);
    }
    /// A linked user sent a message, of any type. Returns whether it was a request for the model, of its protocol's
    /// shape (applied, or turned away by a rule, a bound or a handler), rather than another's message.
    fn message(&self, server: &Server, username: &str, message: &Message) -> bool;
    /// Whether `username` has had its catch-up since it linked.
    fn caught_up(&self, username: &str) -> bool;
}

/// What a journaled model does on the server's events: it forwards its users' requests to the owner and serves the
/// users linked on this node from its replica.
pub(crate) trait Replica: Model {
    /// Whether a linked user's message is a request for the model, of its protocol's shape: those are submitted to
    /// the owner, others dropped here (a malformed one logged and counted).
    fn wants(&self, username: &str, message: &Message) -> bool;
    /// Whether the owner acts on membership changes of `change`'s kind (a projection's `on_leave`, say).
    fn owner_hears(&self, change: MembershipChange) -> bool;
    /// A user linked to a connection of this node: send its catch-up from the replica, and from then on every change.
    fn link_here(&self, server: &Server, username: &str);
    /// A user is no longer linked (here or anywhere): send it nothing more.
    fn unlink_here(&self, username: &str);
}

/// The listeners of one registered model; [`unregister`](Registration::unregister) removes them.
#[derive(Default)]
pub(crate) struct Registration {
    subscriptions: Mutex<Vec<Subscription>>,
}

impl Registration {
    /// Registers `model`'s listeners on `server`, then catches up the users linked already (a model registered on a
    /// server that is running), under `server.atomically` so that no link slips in between. On a node of a cluster it
    /// warns, once, that the model's state is this node's alone (see [`SplitWarning`]).
    pub(crate) fn new<M: Listeners>(server: &Server, model: Arc<M>) -> Registration {
        let split = SplitWarning::default();
        split.check(server, &*model);
        let m = model.clone();
        let on_message = server.on_message(move |u, message| {
            if m.message(u.server(), &u, message) {
                split.check(u.server(), &*m);
            }
        });
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

    /// Registers a journaled `model`'s listeners on `server` (they run on every node: see `Server::on_membership`),
    /// then attaches it to its journal, whose load catches up the users linked on this node already.
    pub(crate) fn journaled<M: Replica + JournalModel>(
        server: &Server,
        model: Arc<M>,
        journal: Arc<dyn Journal>,
    ) -> Result<Registration, JournalError> {
        let (m, j) = (model.clone(), journal.clone());
        let on_message = server.on_message(move |u, message| {
            if !m.wants(&u, message) {
                return;
            }
            let request = Request::Message {
                user: u.username().to_owned(),
                text: request_text(message),
            };
            if let Err(error) = j.submit(m.domain(), request) {
                tracing::warn!(domain = m.domain(), username = %u, %error, "a request was dropped: the journal did not take it");
            }
        });
        let (m, j) = (model.clone(), journal.clone());
        let on_membership = server.on_membership(move |server, change| {
            let kind = change_of(change.kind);
            if m.owner_hears(kind) {
                j.membership(m.domain(), change.seq, kind, change.username);
            }
            match change.kind {
                MembershipKind::Link if server.is_linked_here(change.username) => m.link_here(server, change.username),
                MembershipKind::Unlink | MembershipKind::Leave => m.unlink_here(change.username),
                _ => {}
            }
        });
        let registration = Registration {
            subscriptions: Mutex::new(vec![on_message, on_membership]),
        };
        let domain = model.domain().to_owned();
        if let Err(error) = journal.attach(&domain, model) {
            registration.unregister();
            return Err(error);
        }
        Ok(registration)
    }

    /// Removes the listeners. Calling it again does nothing.
    pub(crate) fn unregister(&self) {
        for subscription in self.subscriptions.lock().drain(..) {
            subscription.unsubscribe();
        }
    }
}

/// Tells, once per model, that a model kept in this process's memory serves a node of a cluster: each node then has a
/// state of its own, which only the users linked to it see, and nothing else would say so. A model is usually
/// registered before its server becomes a node (`emitter-redis`'s `Node::start` comes after the app is built), so it
/// looks at registration and again at each request the model serves, until it has told: from then on a request costs
/// one relaxed load.
#[derive(Default)]
struct SplitWarning {
    told: AtomicBool,
}

impl SplitWarning {
    fn check<M: Model>(&self, server: &Server, model: &M) {
        if self.told.load(Ordering::Relaxed) || !server.is_cluster_node() {
            return;
        }
        if !self.told.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                model = M::KIND,
                domain = model.domain(),
                "a model registered with `register` keeps its state on this node only: each node of the cluster has \
                 its own, seen by the users linked to it; `register_journaled` shares it across the cluster"
            );
        }
    }
}
