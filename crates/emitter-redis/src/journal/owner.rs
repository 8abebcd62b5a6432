//! Owning a domain: claim its lease whenever it is free, keep it, and while it is held execute the membership
//! changes and inbox requests in order and commit them in batches.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use emitter_state::journal::Request;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::context::{add, Ctx, Domain, MembershipSeqs};
use super::store::{self, Claim, Commit, Committing, DomainKeys, Place};
use crate::lease::LeaseClock;
use crate::sentinel::Conn;
use crate::shared::millis;

/// How a stint as owner ended.
enum Ended {
    /// The journal is closing: release the lease.
    Closing,
    /// The lease is lost (refused, or not renewed in time), or head moved under the owner.
    Lost,
    /// The model could not take the state: release the lease for another process, and try again later.
    Failed,
}

/// Aborts a task when dropped: the renewals end with the stint, whatever ends it (an abort of the owner's task too).
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How far past a lease's deadline a claim waits before it asks again.
const LAPSE_MARGIN: Duration = Duration::from_millis(20);

pub(super) async fn own(ctx: Arc<Ctx>, domain: Arc<Domain>) {
    let mut conn = ctx.cluster.conn.clone();
    let mut closing = ctx.closing.clone();
    let lease_ms = millis(ctx.options.lease);
    loop {
        if *closing.borrow() {
            return;
        }
        let sent = Instant::now();
        let wait = match store::claim(&mut conn, &domain.keys, &ctx.token, lease_ms).await {
            Ok(Claim::Taken(gen)) => {
                tracing::info!(domain = domain.keys.domain, generation = gen, "took the domain's lease");
                let ended = serve(&ctx, &domain, &mut conn, gen, sent).await;
                match ended {
                    Ended::Closing => {
                        release(&ctx, &domain, &mut conn, gen).await;
                        domain.model.disown();
                        return;
                    }
                    Ended::Lost => {
                        add(&ctx.counters.leases_lost, 1);
                        tracing::warn!(
                            domain = domain.keys.domain,
                            generation = gen,
                            "lost the domain's lease: stopped executing"
                        );
                        domain.model.disown();
                        continue;
                    }
                    Ended::Failed => {
                        release(&ctx, &domain, &mut conn, gen).await;
                        domain.model.disown();
                        ctx.options.poll_interval
                    }
                }
            }
            Ok(Claim::Held(left)) => Duration::from_millis(left) + LAPSE_MARGIN,
            Err(error) => {
                tracing::warn!(domain = domain.keys.domain, %error, "claiming the domain's lease failed");
                ctx.options.poll_interval
            }
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = domain.released.notified() => {}
            _ = closing.wait_for(|closing| *closing) => return,
        }
    }
}

async fn release(ctx: &Ctx, domain: &Domain, conn: &mut Conn, gen: u64) {
    match store::release(conn, &domain.keys, &ctx.token, gen).await {
        Ok(true) => tracing::info!(
            domain = domain.keys.domain,
            generation = gen,
            "released the domain's lease"
        ),
        Ok(false) => {}
        Err(error) => {
            tracing::warn!(domain = domain.keys.domain, %error, "releasing the domain's lease failed: it lapses")
        }
    }
}

/// One stint as owner, from a claim made at `sent` until the lease is lost or the journal closes.
async fn serve(ctx: &Arc<Ctx>, domain: &Arc<Domain>, conn: &mut Conn, gen: u64, sent: Instant) -> Ended {
    let lease = ctx.options.lease;
    let clock = LeaseClock::new();
    let token = clock.install(sent.into_std(), lease);
    let lost = Arc::new(Notify::new());
    let _renewals = AbortOnDrop(tokio::spawn(renew(
        ctx.clone(),
        domain.keys.clone(),
        gen,
        (clock.clone(), token, sent),
        lost.clone(),
    )));
    domain.owning.store(true, Ordering::SeqCst);
    let ended = execute(ctx, domain, conn, gen, &clock, &lost).await;
    domain.owning.store(false, Ordering::SeqCst);
    ended
}

/// Renews every third of the lease; says when it is lost: refused, or no renewal for as long as the clock allows.
async fn renew(
    ctx: Arc<Ctx>,
    keys: DomainKeys,
    gen: u64,
    (clock, token, claimed): (Arc<LeaseClock>, u64, Instant),
    lost: Arc<Notify>,
) {
    let mut conn = ctx.cluster.conn.clone();
    let lease = ctx.options.lease;
    let lease_ms = millis(lease);
    // As the clock: Redis started the lease no earlier than the claim was sent.
    let mut held_until = claimed + lease - LeaseClock::margin(lease);
    loop {
        tokio::time::sleep((lease / 3).max(Duration::from_millis(1))).await;
        let sent = Instant::now();
        let renewed = tokio::time::timeout_at(held_until, store::renew(&mut conn, &keys, &ctx.token, gen, lease_ms));
        match renewed.await {
            Ok(Ok(true)) => {
                clock.renewed(token, sent.into_std(), lease);
                held_until = sent + lease - LeaseClock::margin(lease);
            }
            Ok(Ok(false)) | Err(_) => break,
            Ok(Err(error)) => {
                tracing::warn!(domain = keys.domain, %error, "renewing the domain's lease failed");
                if Instant::now() >= held_until {
                    break;
                }
            }
        }
    }
    clock.lost(token);
    lost.notify_one();
}

/// Executes and commits until the lease is lost or the journal closes.
async fn execute(ctx: &Ctx, domain: &Domain, conn: &mut Conn, gen: u64, clock: &LeaseClock, lost: &Notify) -> Ended {
    let keys = &domain.keys;
    let mut closing = ctx.closing.clone();
    let poll = ctx.options.poll_interval;
    // The owner's state: head's checkpoint and the log after it.
    let (head, after) = loop {
        if !clock.is_valid() {
            return Ended::Lost;
        }
        match store::load(conn, keys).await {
            Ok(Some(loaded)) => break loaded,
            Ok(None) => tracing::warn!(domain = keys.domain, "the log does not continue from head's checkpoint"),
            Err(error) => tracing::warn!(domain = keys.domain, %error, "loading the domain as its owner failed"),
        }
        tokio::time::sleep(poll).await;
    };
    if let Err(error) = domain.model.own(head.checkpoint.as_ref(), &after) {
        tracing::error!(
            domain = keys.domain,
            error,
            "the model could not take the domain's state as its owner"
        );
        return Ended::Failed;
    }
    let source = match ctx.options.membership {
        MembershipSeqs::Cluster => format!("c:{}", ctx.cluster.epoch()),
        MembershipSeqs::Process => format!("p:{}", ctx.token),
    };
    let mut handled = match &head.membership {
        Some((seq, recorded)) if *recorded == source => *seq,
        _ => 0,
    };
    let mut place = Place {
        n: head.n,
        cursor: head.cursor,
    };
    let batch = ctx.options.batch.max(1);
    // The name this stint gives the history if it makes its first commit (the domain is new, or Redis lost it).
    let history = super::context::random_token();
    loop {
        if *closing.borrow() {
            return Ended::Closing;
        }
        if !clock.is_valid() {
            return Ended::Lost;
        }
        let pending: Vec<_> = domain
            .ring
            .lock()
            .iter()
            .filter(|pending| pending.seq > handled)
            .take(batch)
            .cloned()
            .collect();
        if let Some(first) = pending.first() {
            if handled > 0 && first.seq > handled + 1 && ctx.options.membership == MembershipSeqs::Cluster {
                tracing::warn!(
                    domain = keys.domain,
                    handled,
                    next = first.seq,
                    "membership changes between the last one handled and the oldest this node remembers are not \
                     executed (the ring is too short, or this node started after them)"
                );
            }
        }
        let room = batch - pending.len();
        let inbox = if room == 0 {
            Vec::new()
        } else {
            match store::inbox_after(conn, keys, &place.cursor, room).await {
                Ok(inbox) => inbox,
                Err(error) => {
                    tracing::warn!(domain = keys.domain, %error, "reading the domain's inbox failed");
                    Vec::new()
                }
            }
        };
        if pending.is_empty() && inbox.is_empty() {
            tokio::select! {
                () = domain.work.notified() => {}
                () = tokio::time::sleep(poll) => {}
                () = lost.notified() => return Ended::Lost,
                _ = closing.wait_for(|closing| *closing) => return Ended::Closing,
            }
            continue;
        }
        let mut changes = Vec::new();
        let mut membership = None;
        for pending in pending {
            if !clock.is_valid() {
                return Ended::Lost;
            }
            let request = Request::Membership {
                seq: pending.seq,
                change: pending.change,
                user: pending.user,
            };
            if let Some(change) = domain.model.execute(&request) {
                changes.push(change.to_string());
            }
            membership = Some((pending.seq, source.clone()));
        }
        let mut cursor = place.cursor.clone();
        for (id, request) in inbox {
            if !clock.is_valid() {
                return Ended::Lost;
            }
            match request {
                Some(request) => {
                    if let Some(change) = domain.model.execute(&request) {
                        changes.push(change.to_string());
                    }
                }
                None => tracing::warn!(
                    domain = keys.domain,
                    id,
                    "an inbox entry that is not a request: skipped"
                ),
            }
            cursor = id;
        }
        let checkpoint = if changes.is_empty() {
            None
        } else {
            domain.model.checkpoint().map(|state| state.to_string())
        };
        let commit = Commit {
            token: ctx.token.clone(),
            gen,
            from: place.clone(),
            cursor,
            membership,
            checkpoint,
            retention: ctx.options.log_retention,
            history: history.clone(),
            changes,
        };
        match settle(ctx, domain, conn, &commit, clock).await {
            Committing::Done(n) => {
                add(&ctx.counters.commits, 1);
                place = Place {
                    n,
                    cursor: commit.cursor,
                };
                if let Some((seq, _)) = commit.membership {
                    handled = seq;
                }
            }
            Committing::Fenced | Committing::Moved => return Ended::Lost,
        }
    }
}

/// Commits, and when the reply is lost, finds out from head whether it happened: committed by this generation at
/// the place it leads to, or not at all (head still where it was: send it again). A copy whose reply was lost may
/// still run later (Redis held it, behind a pause): the script's check of head refuses every copy but the first, and
/// a refusal after a copy was lost is judged by head too. Never commits twice. Gives up (as [`Committing::Moved`]:
/// the caller disowns and reloads, so an unknown outcome does no harm) once the lease is over by the local clock.
async fn settle(ctx: &Ctx, domain: &Domain, conn: &mut Conn, commit: &Commit, clock: &LeaseClock) -> Committing {
    let keys = &domain.keys;
    let mut lost = false;
    loop {
        match store::commit(conn, keys, commit).await {
            Ok(Committing::Done(n)) => return Committing::Done(n),
            Ok(refused) if !lost => return refused,
            Ok(_) => {}
            Err(error) => {
                add(&ctx.counters.lost_replies, 1);
                tracing::warn!(domain = keys.domain, %error, "a commit's reply was lost: reading head");
                lost = true;
            }
        }
        match judge(domain, conn, commit, clock).await {
            Some(outcome) => return outcome,
            None => continue,
        }
    }
}

/// What head says of `commit`: done, moved on by someone else, or not committed (`None`: send it again). Asks again
/// while head cannot be read, until the lease is over by the local clock.
async fn judge(domain: &Domain, conn: &mut Conn, commit: &Commit, clock: &LeaseClock) -> Option<Committing> {
    let mut delay = Duration::from_millis(20);
    loop {
        if !clock.is_valid() {
            return Some(Committing::Moved);
        }
        match store::place(conn, &domain.keys).await {
            Ok((place, gen, seq)) => {
                let n = commit.from.n + commit.changes.len() as u64;
                let membership_done = commit.membership.as_ref().is_none_or(|(m, _)| seq == Some(*m));
                if gen == commit.gen && place.n == n && place.cursor == commit.cursor && membership_done {
                    return Some(Committing::Done(n));
                }
                return (place != commit.from).then_some(Committing::Moved);
            }
            Err(error) => tracing::warn!(domain = domain.keys.domain, %error, "reading head failed"),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(500));
    }
}
