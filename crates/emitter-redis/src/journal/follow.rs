//! Following a domain's log on every process: load the replica, then apply each committed change once, in order.

use std::sync::Arc;

use super::context::{add, Ctx, Domain};
use super::store::{self, DomainKeys};

/// Where the follower is.
enum Replica {
    /// Needs loading (at attach, or when the log does not continue from it).
    Unloaded,
    /// At this n of the history of this name (`None`: not named yet, nothing committed when it was loaded).
    At(u64, Option<String>),
}

pub(super) async fn follow(ctx: Arc<Ctx>, domain: Arc<Domain>) {
    let mut conn = ctx.cluster.conn.clone();
    let keys: &DomainKeys = &domain.keys;
    let mut closing = ctx.closing.clone();
    let mut replica = Replica::Unloaded;
    loop {
        if *closing.borrow() {
            return;
        }
        let mut more = false;
        match replica {
            Replica::Unloaded => match store::load(&mut conn, keys).await {
                Ok(Some((head, after))) => match domain.model.load(head.checkpoint.as_ref(), &after) {
                    Ok(()) => {
                        replica = Replica::At(head.n, head.history);
                        domain.applied.send_replace(Some(head.n));
                        tracing::debug!(domain = keys.domain, n = head.n, "replica loaded");
                    }
                    Err(error) => {
                        tracing::error!(
                            domain = keys.domain,
                            error,
                            "the model could not load the domain's state"
                        )
                    }
                },
                // Trimmed under the read (a new checkpoint): again, after a pause in case it lasts.
                Ok(None) => tracing::debug!(domain = keys.domain, "the log moved while loading: loading again"),
                Err(error) => tracing::warn!(domain = keys.domain, %error, "loading the domain failed"),
            },
            Replica::At(n, ref history) => match store::follow(&mut conn, keys, n).await {
                Ok(store::Followed {
                    head,
                    history: theirs,
                    changes,
                }) => {
                    let lost = history.is_some() && *history != theirs;
                    if lost || head < n || (head > n && changes.first().is_none_or(|first| first.n != n + 1)) {
                        // Redis lost the history (restarted empty, failed over to a replica that lagged), or trimmed
                        // past this replica: start again from what it has.
                        tracing::warn!(
                            domain = keys.domain,
                            n,
                            head,
                            "the log does not continue from the replica: loading it again"
                        );
                        add(&ctx.counters.reloads, 1);
                        replica = Replica::Unloaded;
                        more = true;
                    } else {
                        more = changes.len() >= store::READ_COUNT;
                        let mut at = n;
                        for committed in changes {
                            if committed.n != at + 1 {
                                break;
                            }
                            domain.model.apply(&committed);
                            at = committed.n;
                        }
                        replica = Replica::At(at, theirs);
                        domain.applied.send_replace(Some(at));
                    }
                }
                Err(error) => tracing::warn!(domain = keys.domain, %error, "reading the domain's log failed"),
            },
        }
        if more {
            continue;
        }
        tokio::select! {
            () = domain.committed.notified() => {}
            () = tokio::time::sleep(ctx.options.poll_interval) => {}
            _ = closing.wait_for(|closing| *closing) => return,
        }
    }
}
