//! Kicks users that stay unlinked too long.
//!
//! A user that is not linked to a connection keeps its place on the server, so that its client can come back. This
//! example puts a limit on that: a countdown starts when a user joins or is unlinked, stops when it is linked or
//! leaves, and kicks the user when it runs out.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use emitter_core::Server;
use parking_lot::Mutex;
use tokio::task::AbortHandle;

/// The running countdowns by username. Each has an id, so that a countdown that runs out can tell whether it is still
/// the current one for its user.
#[derive(Default)]
struct Countdowns {
    next_id: u64,
    running: HashMap<String, (u64, AbortHandle)>,
}

/// Kicks every user that stays unlinked for `after`: right after joining (a user joined by [`Server::join`] that
/// nobody links to) or after its connection dropped or unlinked.
pub fn kick_when_inactive(server: &Server, after: Duration) {
    let countdowns = Arc::new(Mutex::new(Countdowns::default()));
    let c = countdowns.clone();
    server.on_join(move |server, username| start(server, &c, username, after));
    let c = countdowns.clone();
    server.on_unlink(move |server, username| start(server, &c, username, after));
    let c = countdowns.clone();
    server.on_link(move |_, username| stop(&c, username));
    server.on_leave(move |_, username| stop(&countdowns, username));
}

fn start(server: &Server, countdowns: &Arc<Mutex<Countdowns>>, username: &str, after: Duration) {
    // Listeners run on the server's caller: a transport task, or whoever called `join`.
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        tracing::error!(username, "no tokio runtime: cannot start the inactivity countdown");
        return;
    };
    let mut guard = countdowns.lock();
    guard.next_id += 1;
    let id = guard.next_id;
    let (server, countdowns_for_task, name) = (server.clone(), countdowns.clone(), username.to_owned());
    let task = runtime.spawn(async move {
        tokio::time::sleep(after).await;
        // Only the current countdown kicks, and it forgets itself first. The lock is released before the server is
        // called, so that it is never held while waiting for the server's own lock.
        let current = {
            let mut countdowns = countdowns_for_task.lock();
            let current = countdowns.running.get(&name).is_some_and(|(running, _)| *running == id);
            if current {
                countdowns.running.remove(&name);
            }
            current
        };
        if !current {
            return;
        }
        // The check and the kick happen under the server's lock together: a relink cannot slip in between.
        server.atomically(|server| {
            if server.user(&name).is_some_and(|user| !user.is_linked) {
                tracing::info!(username = name, ?after, "kicking: unlinked for too long");
                if let Err(error) = server.kick(&name) {
                    tracing::debug!(username = name, %error, "could not kick");
                }
            }
        });
    });
    if let Some((_, previous)) = guard.running.insert(username.to_owned(), (id, task.abort_handle())) {
        previous.abort();
    }
}

fn stop(countdowns: &Mutex<Countdowns>, username: &str) {
    if let Some((_, task)) = countdowns.lock().running.remove(username) {
        task.abort();
    }
}
