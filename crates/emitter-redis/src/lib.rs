//! Redis as the sequencer of a cluster of emitter nodes.
//!
//! Any number of server processes (*nodes*) attached to one Redis and one cluster name behave, to every client and to
//! `users()` on every node, like one server. The order of membership changes (join, link, unlink, leave) comes from
//! Redis: a node that wants a change runs **one Lua script** that validates it against the cluster-wide state, applies
//! it to that state, gives it the next sequence number (*seq*), appends it to a stream (the *log*) and notifies the
//! nodes. Every node applies the log strictly in seq order to its own replica of the registry, filling gaps from the
//! log, so a lost notification only delays. This crate is the Redis side of that: the scripts, a typed async
//! [`Cluster`] handle, a [`Blocking`] handle for the core's synchronous membership path, a [`Notifications`] stream that
//! survives reconnects, and a reference [`Replica`]. The [`journal`] module keeps Krmx State's models on the same
//! Redis: one owner per domain under a fenced lease, a committed log every node follows, state that outlives a
//! process.
//!
//! ```no_run
//! use emitter_redis::{Cluster, Options};
//! use emitter_redis::wire::{Change, Notification, Replica};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let cluster = Cluster::connect("redis://127.0.0.1/", "chat", Options::default()).await?;
//! let lease = cluster.register_node("node-a").await?;
//! let mut alive = cluster.keep_alive(lease.clone());
//! let mut notifications = cluster.subscribe("node-a").await?;
//! let mut replica = Replica::from_snapshot(cluster.snapshot().await?);
//!
//! // A connection of this node asks to link to alice: the entries come back in order, to apply at once.
//! for entry in cluster.submit(&lease, Change::link("alice", 1, true)).await? {
//!     let _ = replica.apply(&entry);
//! }
//! loop {
//!     tokio::select! {
//!         lost = alive.wait_lost() => return Err(format!("stop serving: {lost:?}").into()),
//!         Some(notification) = notifications.next() => match notification {
//!             // Subscribed (again), or a new seq: read the log from where this node is.
//!             Notification::Subscribed { .. } | Notification::Seq(_) => match cluster.entries_after(replica.seq()).await {
//!                 Ok(entries) => for entry in &entries { replica.apply(entry)?; },
//!                 Err(error) if error.needs_snapshot() => replica = Replica::from_snapshot(cluster.snapshot().await?),
//!                 Err(error) => return Err(error.into()),
//!             },
//!             Notification::Broadcast(message) => { /* deliver to local users but `message.user` */ }
//!             Notification::Send(message) => { /* deliver to the local user `message.user` */ }
//!             Notification::EpochChanged { .. } => { /* reopen, register again, rebuild from a snapshot */ }
//!         },
//!     }
//! }
//! # }
//! ```
//!
//! # Key layout
//!
//! Every key of a cluster named `N` is `emitter:{N}:<what>`. The braces are a hash tag: on Redis Cluster all of a
//! cluster's keys hash to one slot, so the scripts (which declare all of them in `KEYS`) run there too. Cluster names
//! and node ids are 1–64 of `A-Z a-z 0-9 . _ : -` ([`is_valid_name`]): no braces, so two cluster names never share a
//! key (`emitter:{a}:…` can never be a key of cluster `b`).
//!
//! | key | type | holds |
//! |---|---|---|
//! | `epoch` | string | a random id made when the cluster state is created; missing = Redis lost the state |
//! | `seq` | string (integer) | the last seq given out; 0 or missing before the first change |
//! | `log` | stream | one entry per change, with the explicit ID `<seq>-0`; fields `s` seq, `k` kind (`join`, `link`, `unlink`, `leave`), `u` user, `n` node, `g` generation, `c` connection (link and unlink), `r` reason (unlink: `request`, `leave`, `expired`, `restarted`, `released`), `b` the node that caused it |
//! | `users` | hash | username → `<join seq>` when unlinked, `<join seq> <generation> <connection> <node>` when linked |
//! | `order` | sorted set | no longer written (a snapshot sorts `users` by their join seq); deleted when the state is created |
//! | `links` | sorted set | `<node>/<username>` for every linked user, all scored 0: one node's users are one lex range |
//! | `nodes` | hash | node id → `<generation> <deadline> <instance>`: the node's lease, the deadline in ms of Redis's clock (`TIME`), and the random token of the process (cluster handle) that holds it |
//! | `generation` | string (integer) | the generation counter; never reset, not even by a new epoch |
//! | `connections` | hash | `<node>/<generation>/<connection>` → the user it is linked to: a connection links one user at most |
//! | `out/<node>/<generation>` | stream | the *window* of one node generation: its newest [`Options::message_window`] messages to other nodes, broadcasts and sends alike, entry ID `<order>-0` ([`NodeMessage::order`]), field `m` the frame as published, field `t` (sends only) the node it is for; expires an hour after its last message |
//! | `state/<D>/owner` | string | the [`journal`]'s lease of domain `D`: `<token> <generation> <deadline>`, the token of the journal that holds it, its fencing generation, the deadline in ms of Redis's clock; claimed when missing or past its deadline |
//! | `state/<D>/generation` | string (integer) | `D`'s lease generation counter; never reset |
//! | `state/<D>/inbox` | stream | requests for `D`'s owner, from any process, in arrival order (auto IDs), field `r` the request's JSON; entries before the cursor are trimmed by the commit that consumes them |
//! | `state/<D>/log` | stream | `D`'s committed changes, ID `<n>-0` (n = 1, 2, … without gaps), field `c` the change's JSON; trimmed only below the newest checkpoint, keeping [`JournalOptions::log_retention`](journal::JournalOptions::log_retention) entries |
//! | `state/<D>/head` | hash | `n` the newest committed change, `c` the last inbox ID consumed, `g` the generation that committed last, `m`/`ms` the last membership seq handled and where such seqs come from, `cn`/`cs` the newest checkpoint (its n and the model's state JSON), `e` a random name the history's first commit gave it (a follower that finds another knows Redis lost the history it followed) |
//!
//! Channels (not keys): `emitter:{N}:seq` (each script that appended publishes `<last seq> <epoch> <hash>`, then, on
//! a second line, the entries it appended as a JSON array of their field lists, unless there are over 1,000),
//! `emitter:{N}:broadcast` (broadcasts), `emitter:{N}:node:<node>` (messages for users linked on that node),
//! `emitter:{N}:state` (the journal: `l <n> <domain>` committed, `i <domain>` new requests, `o <domain>` released).
//!
//! The leases are fields of one hash with deadlines by Redis's clock, rather than one key per node with a TTL, so
//! that every key a script touches is a fixed, declared key (Redis Cluster requires it) and the reaper finds the dead
//! nodes with one `HGETALL` instead of scanning the keyspace. A lease past its deadline counts as gone at once,
//! exactly as an expired key would, whether or not a reaper has removed it yet.
//!
//! Redis must keep these keys: run it with `maxmemory-policy noeviction` (or a `volatile-*` policy: none of these keys
//! has a TTL). Nothing else may write them: a script validates before it writes, but it trusts what it wrote before.
//!
//! # The scripts
//!
//! Every script runs atomically (Redis runs one script at a time), validates everything before its first write, and
//! replies `{'refused', code, detail}` or `{'ok', extra, entries…}`. The change scripts take the caller's epoch and
//! refuse with [`Refusal::EpochChanged`] when Redis's differs (or is missing); each appended entry gets the next seq
//! (`seq` is read once per script and written once at its end), goes to the log (`XADD log MAXLEN ~ <retention>
//! <seq>-0 …`) and is applied to `users`, `links` and `connections` in the same script; a script that appended
//! publishes its last seq and its entries once, at the end: a node in step applies them without reading the log.
//!
//! - **open**(candidate epoch) — if `epoch` exists: returns it. Otherwise deletes every other key of the cluster
//!   (but `generation`), sets `epoch` to the candidate and returns it. Used by [`Cluster::connect`] and
//!   [`Cluster::reopen`].
//! - **submit**(epoch, node, generation, change) — checks that the node's lease is alive and of this generation
//!   (else [`Refusal::Fenced`]), then:
//!   - `join(user)`: refused [`JoinExistingUser`](Refusal::JoinExistingUser) if it exists; appends `join`.
//!   - `link(user, connection, accept_new_users)`: a connection linked already is refused
//!     [`ConnectionLinked`](Refusal::ConnectionLinked); a missing user is refused
//!     [`NotAcceptingNewUsers`](Refusal::NotAcceptingNewUsers) unless accepted, then joins (`join`, then `link`, two
//!     consecutive seqs); a linked user is refused [`AlreadyLinked`](Refusal::AlreadyLinked); appends `link` with
//!     (node, generation, connection).
//!   - `unlink(user, only?)`: refused [`UnlinkUnknownUser`](Refusal::UnlinkUnknownUser) if missing; with `only`,
//!     refused [`NotLinkedHere`](Refusal::NotLinkedHere) unless linked to exactly (node, generation, only); without,
//!     refused [`UnlinkUnlinkedUser`](Refusal::UnlinkUnlinkedUser) if not linked; appends `unlink` (`request`).
//!   - `leave(user, only?)`: refused [`KickUnknownUser`](Refusal::KickUnknownUser) if missing, `NotLinkedHere` as
//!     above with `only`; a linked user gets `unlink` (`leave`) first; appends `leave`.
//!
//!   Returns the entries. A link is the *claim* of a user: deciding it inside the script, never read-then-write, is
//!   what makes a user linked to at most one connection cluster-wide.
//! - **register**(epoch, node, ttl, instance) — refused [`Refusal::NodeInUse`] while the node id's lease is alive and
//!   held by another instance (one live process per node id; [`Cluster::register_node`] waits once for it to lapse,
//!   then fails with [`Error::NodeInUse`]). Otherwise a new generation (`INCR generation`); unlinks every user still
//!   linked to the node id (`restarted`: that process is gone or about to be fenced); sets the lease to now + ttl,
//!   held by `instance`. Returns the generation.
//! - **renew**(epoch, node, generation, ttl, instance) — refused `Fenced` unless the lease is of this generation, held
//!   by this instance, and not past its deadline; sets the deadline to now + ttl.
//! - **release**(epoch, node, generation) — refused `Fenced` unless the lease is of this generation (expired or
//!   not); unlinks the node's users (`released`) and deletes the lease.
//! - **reap**(epoch, by) — for each lease past its deadline: unlinks its users (`expired`) and deletes the lease. Any
//!   node may run it, lease or not. So a SIGKILLed node's users are unlinked at most [`Options::lease`] +
//!   [`Options::reap_interval`] after its last renewal, with `krmx/unlinked` for everyone via the log.
//! - **read** (not a script: a `MULTI` of `GET epoch`, `GET seq` and `XRANGE`, so that Redis writes the entries
//!   straight out instead of copying them through Lua) — the newest seq and up to 1,000 entries from seq `from` on.
//!   [`Cluster::entries_after`] checks that they continue exactly where the caller is: a gap it cannot fill (trimmed)
//!   is [`Error::Trimmed`], a caller past the newest seq is [`Error::Ahead`]; either way, resynchronise from a snapshot.
//! - **snapshot**(epoch) — the newest seq and every user with its record (`HGETALL users`; the reader sorts them
//!   by join seq), atomically: applying the
//!   entries after that seq to it gives any later state.
//!
//! # Leases and fencing
//!
//! A node registers (getting a generation, its fencing token) and keeps renewing ([`Cluster::keep_alive`] does,
//! every third of the lease). Every change it submits names its node and generation, and the script refuses it
//! unless that lease is alive by Redis's clock: a node that paused past its lease (a GC pause, a stopped VM, a
//! partition) links nobody when it wakes, whatever it believes. Its users are unlinked by the next reap, or when the
//! same node id registers again. The node itself learns it from [`KeepAlive`] ([`LeaseLost`]) and must stop
//! serving. One live process per node id: each [`Cluster`] handle has a random instance token, written with its
//! lease and checked by every renewal; a registration by another handle while the lease is alive is refused
//! ([`Cluster::register_node`] waits once for it to lapse, so a restarted process whose predecessor crashed starts,
//! and otherwise fails with [`Error::NodeInUse`]). Redis pausing (`DEBUG SLEEP`, a slow fork) longer than a lease makes every lease run out at once: every
//! node is fenced and registers again. Shorter pauses only delay.
//! Deadlines are read from Redis's clock (`TIME`), the one clock all nodes share; a step of the Redis host's wall
//! clock shortens or lengthens every lease alike, as it would key TTLs.
//!
//! # Log retention
//!
//! The log keeps at least [`Options::log_retention`] of its newest entries (default 100,000); `MAXLEN ~` trims in
//! whole blocks, so a few more may stay. `users` always holds the full state, so nothing is lost by
//! trimming: a node further behind than the log reaches gets [`Error::Trimmed`] and rebuilds from
//! [`Cluster::snapshot`].
//!
//! # Order across nodes
//!
//! What holds:
//!
//! - **Membership has one order.** Every change has one seq; every node applies the same entries in the same order;
//!   so every client, on any node, gets `krmx/joined|linked|unlinked|left` in one order, and every `users()` agrees
//!   once the nodes have caught up.
//! - **One connection per user, one user per connection, cluster-wide**: the link is decided by one script against
//!   the cluster's state.
//! - **One node's messages keep their order at every other node.** A node's broadcasts and sends go through one
//!   queue and one connection ([`Cluster::publish_broadcast`], [`Cluster::publish_send`]), and Redis delivers the
//!   messages of one publishing connection to each subscriber in the order it received them. If a node queues them in
//!   the order it fans them out locally (under its fan-out lock), all its recipients, local and remote, get its
//!   messages in one order.
//! - **A message does not overtake the membership change before it**, if the receiver waits: every message carries
//!   the seq its origin had applied ([`NodeMessage::after`]), and a script's seq notification is published before any
//!   message the origin sends after learning that seq, on the same subscriber connection.
//!
//! What does not hold:
//!
//! - **Messages of different nodes have no common order.** A node delivers its own broadcasts locally at once and
//!   others' when Redis relays them, so a client on node A may get A's broadcast X before B's Y while a client on B
//!   gets Y before X. (Redis itself relays all nodes' messages to every subscriber in one order; the local shortcut
//!   is what breaks it, in exchange for latency.)
//! - **Membership and messages of different nodes**: a client may get another node's broadcast before or after a
//!   `krmx/linked` that happened "at the same time" elsewhere.
//! - **Cross-node messages are recoverable within a window, not beyond.** Each message is kept in its origin's window
//!   (in the same pipeline as its `PUBLISH`); a subscriber that sees a gap in an origin's numbers, or comes back after
//!   a drop, fetches the missing ones from it and yields them once each, in the origin's order, before anything
//!   later from that origin. What a window no longer holds is lost for that subscriber, counted
//!   ([`ClusterStats::messages_lost`]) and logged; so is everything unreceived when Redis loses its state (restarted
//!   without persistence), uncounted. A publish whose connection dropped is sent once more (the first publish after
//!   a Redis restart finds the old connection dead); a receiver that gets a message twice drops the repeat by its
//!   number. Membership is never lost: it is in the log.
//!
//! # Synchronous callers
//!
//! Every change a [`Node`] makes on a tokio runtime (its connections' and its server methods') goes through its change
//! queue: one task that sends them to Redis in pipelined batches and answers each, so no thread waits on Redis for
//! them; a server method returns once its change is queued. [`Cluster::blocking`] gives a [`Blocking`] handle with its
//! own blocking connection that never touches the tokio runtime: the node reads the log with it on a blocking thread
//! (to fill a gap), and decides the changes of a caller outside any runtime with it. See [`Blocking`].
//!
//! # Faults
//!
//! - A change whose reply is lost (timeout, dropped connection) returns [`Error::Redis`]: its outcome is unknown. The
//!   log will say; catch up before deciding again.
//! - Redis restarted empty or flushed: every script refuses with [`Refusal::EpochChanged`], the subscription reports
//!   [`Notification::EpochChanged`], the keep-alive [`LeaseLost::EpochChanged`]. The node calls [`Cluster::reopen`]
//!   (the first to do so creates the new state), registers again and rebuilds from a snapshot.
//! - A failover to a replica that lost the last writes *without* losing the epoch: Redis hands out the lost seqs again
//!   with other entries. Each entry carries a hash chained to the one before, and a handle checks every entry,
//!   notification and head it reads against the hashes it read before: a break is [`Error::Forked`] (a caller past
//!   Redis's seq gets [`Error::Ahead`]); a [`Node`] logs it, counts it (`krmx_cluster_resyncs_total{kind="fork"}`)
//!   and rebuilds from a snapshot.
//! - With Redis Sentinel, connect with `redis+sentinel://host:port[,host:port…]/<master>[/<db>]`: the handle finds the
//!   primary through the sentinels and moves every connection to the new one after a failover.
//!
//! Tested against Redis 7.0 (Debian's `redis-server`, and `redis-sentinel` for failovers).
//!
//! # Feature flags
//!
//! This crate has no optional features. It turns on the `redis` crate's `script`, `tokio-comp` and
//! `connection-manager` features and no others (no TLS to Redis). It needs Rust 1.88, as `redis` 1.8 does.
//!
//! [`Blocking`]: wire::Blocking
//! [`Notifications`]: wire::Notifications
//! [`Replica`]: wire::Replica
//! [`NodeMessage::after`]: wire::NodeMessage::after
//! [`NodeMessage::order`]: wire::NodeMessage::order
//! [`Notification::EpochChanged`]: wire::Notification::EpochChanged
#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod chain;
mod changes;
mod cluster;
pub mod journal;
mod lease;
mod node;
mod notified;
mod script;
mod sentinel;
mod shared;
mod types;
pub mod wire;

pub use cluster::Cluster;
pub use lease::{KeepAlive, LeaseLost};
pub use node::Node;
pub use shared::{ClusterStats, Options};
pub use types::{is_valid_name, Error, Refusal, Result};
