//! The model-based test in its multi-node mode: several cores, each a node of one cluster, sharing an in-memory
//! sequencer that decides changes exactly as emitter-redis's submit script does. Random runs of client actions, server
//! methods, and the cluster's own traffic (a node catching up with the order, a cross-node message delivered) in any
//! interleaving, so that nodes lag each other arbitrarily, and a node may rebuild from a snapshot (as one that fell
//! behind a trimmed log does) at any point. After every step, and once everything is delivered:
//!
//! - every connection's membership frames make sense in order (no link of a user it was not told joined, no join
//!   twice, …), and it never gets a message between its own unlink and its next link;
//! - the app messages one node sends reach every recipient in the order they were sent (messages of one user sent
//!   through different nodes, before and after it relinked elsewhere, have no common order: see the book);
//! - listeners ran once per entry of the order, cluster-wide (a `link` listener once per link, not once per node);
//! - `on_membership` listeners ran on every node for every entry it applied, in the log's order with its seqs (a node
//!   that rebuilt: the changes it applied instead, with the snapshot's seq), and what they heard folds to the node's
//!   `users()`;
//! - once settled: every node's `users()` is the sequencer's list, and every linked connection's view is that list;
//!   every user is linked to at most one connection, and it is the one the sequencer says.
//!
//! The nodes run on a current-thread tokio runtime, so all their changes (links, unlinks and leaves, closed
//! connections' unlinks, and the server methods `join`, `unlink` and `kick`) go through [`Sequencer::submit_async`]
//! as on Redis: each node's changes wait in its own queue until a random `Decide` step decides a batch of them, in the
//! order queued, and the node's tasks apply the answers. A server method returns once its change is queued.

mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use emitter_core::cluster::ClusterHost;
use emitter_core::cluster::{Change, LinkAddr, LogEntry, LogEvent, Refused, Sequencer, Submission, UnlinkReason};
use emitter_core::protocol::{Frame, Rejection};
use emitter_core::transport::{ConnectionId, Outbox};
use emitter_core::{Error, Message, Server};
use parking_lot::Mutex;
use proptest::prelude::*;
use serde_json::{json, Value};

const NODES: usize = 3;
/// What a node's `on_membership` listener heard: (seq, change, user), in order.
type Heard = Vec<(u64, &'static str, String)>;
const NAMES: [&str; 4] = ["ann", "ben", "cat", "dan"];

// ---- the sequencer ---------------------------------------------------------------------------------------------

/// What crosses between nodes, queued per receiving node until the test delivers it.
enum Delivery {
    Broadcast {
        after: u64,
        skip: Option<String>,
        frame: Frame,
    },
    Send {
        after: u64,
        user: String,
        frame: Frame,
    },
    Kept {
        after: u64,
        user: String,
        frame: Frame,
    },
}

#[derive(Default)]
struct HubState {
    /// Users in join order, with their link.
    users: Vec<(String, Option<LinkAddr>)>,
    log: Vec<LogEntry>,
    inboxes: BTreeMap<String, VecDeque<Delivery>>,
    /// Per node, the changes it queued with `submit_async` and the test has not decided yet, in order.
    queued: BTreeMap<String, VecDeque<Queued>>,
    /// Nodes whose lease is not valid (by their own clock).
    fenced: BTreeSet<String>,
    /// Per node, how many of its next reads of the log fail.
    failing_reads: BTreeMap<String, usize>,
}

/// A change a node queued, and where its answer goes.
type Queued = (Change, tokio::sync::oneshot::Sender<Result<Vec<LogEntry>, Refused>>);

impl HubState {
    fn find(&self, user: &str) -> Option<usize> {
        self.users.iter().position(|(name, _)| name == user)
    }

    fn append(&mut self, by: &str, event: LogEvent, out: &mut Vec<LogEntry>) {
        match &event {
            LogEvent::Joined { user } => self.users.push((user.clone(), None)),
            LogEvent::Linked { user, link } => {
                let at = self.find(user).unwrap();
                self.users[at].1 = Some(link.clone());
            }
            LogEvent::Unlinked { user, .. } => {
                let at = self.find(user).unwrap();
                self.users[at].1 = None;
            }
            LogEvent::Left { user } => self.users.retain(|(name, _)| name != user),
        }
        let entry = LogEntry {
            seq: self.log.len() as u64 + 1,
            event,
            by: by.to_owned(),
        };
        self.log.push(entry.clone());
        out.push(entry);
    }

    /// The submit script, in Rust: validate, then apply and append.
    fn submit(&mut self, node: &str, change: Change) -> Result<Vec<LogEntry>, Refused> {
        let mut out = Vec::new();
        let here = |connection| LinkAddr {
            node: node.to_owned(),
            generation: 1,
            connection,
        };
        match change {
            Change::Join { user } => {
                if self.find(&user).is_some() {
                    return Err(Refused::Failed(Error::JoinExistingUser));
                }
                self.append(node, LogEvent::Joined { user }, &mut out);
            }
            Change::Link {
                user,
                connection,
                accept_new_users,
                replace,
            } => {
                let link = here(connection);
                if self.users.iter().any(|(_, l)| l.as_ref() == Some(&link)) {
                    return Err(Refused::Unavailable(
                        "this connection is already linked to a user".into(),
                    ));
                }
                match self.find(&user) {
                    None if !accept_new_users => return Err(Refused::Rejected(Rejection::NotAcceptingNewUsers)),
                    Some(at) if self.users[at].1.is_some() && !replace => {
                        return Err(Refused::Rejected(Rejection::AlreadyLinked(user)))
                    }
                    Some(at) if self.users[at].1.is_some() => {
                        let old = self.users[at].1.clone().unwrap();
                        let reason = UnlinkReason::Replaced;
                        let event = LogEvent::Unlinked {
                            user: user.clone(),
                            link: old,
                            reason,
                        };
                        self.append(node, event, &mut out);
                    }
                    None => self.append(node, LogEvent::Joined { user: user.clone() }, &mut out),
                    Some(_) => {}
                }
                self.append(node, LogEvent::Linked { user, link }, &mut out);
            }
            Change::Unlink { user, only } => {
                let at = self.find(&user).ok_or(Refused::Failed(Error::UnlinkUnknownUser))?;
                let link = self.users[at].1.clone();
                let linked_as_asked = match only {
                    Some(connection) => link.as_ref() == Some(&here(connection)),
                    None => link.is_some(),
                };
                let Some(link) = link.filter(|_| linked_as_asked) else {
                    return Err(Refused::Failed(Error::UnlinkUnlinkedUser));
                };
                let reason = UnlinkReason::Requested;
                self.append(node, LogEvent::Unlinked { user, link, reason }, &mut out);
            }
            Change::Leave { user, only } => {
                let at = self.find(&user).ok_or(Refused::Failed(Error::KickUnknownUser))?;
                let link = self.users[at].1.clone();
                if let Some(connection) = only {
                    if link.as_ref() != Some(&here(connection)) {
                        return Err(Refused::Failed(Error::UnlinkUnlinkedUser));
                    }
                }
                if let Some(link) = link {
                    let reason = UnlinkReason::Leaving;
                    let event = LogEvent::Unlinked {
                        user: user.clone(),
                        link,
                        reason,
                    };
                    self.append(node, event, &mut out);
                }
                self.append(node, LogEvent::Left { user }, &mut out);
            }
        }
        Ok(out)
    }
}

/// One node's view of the shared sequencer.
struct NodeSequencer {
    node: String,
    hub: Arc<Mutex<HubState>>,
}

impl Sequencer for NodeSequencer {
    fn node(&self) -> &str {
        &self.node
    }

    fn owns(&self, link: &LinkAddr) -> bool {
        link.node == self.node && link.generation == 1
    }

    fn submit(&self, change: Change) -> Result<Vec<LogEntry>, Refused> {
        self.hub.lock().submit(&self.node, change)
    }

    fn submit_async(&self, changes: Vec<Change>) -> Vec<Submission> {
        let mut hub = self.hub.lock();
        let queue = hub.queued.entry(self.node.clone()).or_default();
        changes
            .into_iter()
            .map(|change| {
                let (answer, waiter) = tokio::sync::oneshot::channel();
                queue.push_back((change, answer));
                Box::pin(async move {
                    waiter
                        .await
                        .unwrap_or_else(|_| Err(Refused::Unavailable("the test dropped it".into())))
                }) as Submission
            })
            .collect()
    }

    fn lease_valid(&self) -> bool {
        !self.hub.lock().fenced.contains(&self.node)
    }

    fn entries_after(&self, seq: u64) -> Result<Vec<LogEntry>, String> {
        let mut hub = self.hub.lock();
        if let Some(failing) = hub.failing_reads.get_mut(&self.node).filter(|failing| **failing > 0) {
            *failing -= 1;
            return Err("the log could not be read".into());
        }
        Ok(hub.log[seq as usize..].to_vec())
    }

    fn publish_broadcast(&self, after: u64, skip: Option<&str>, frame: &Frame) {
        let mut hub = self.hub.lock();
        for (node, inbox) in hub.inboxes.iter_mut() {
            if *node != self.node {
                let skip = skip.map(str::to_owned);
                inbox.push_back(Delivery::Broadcast {
                    after,
                    skip,
                    frame: frame.clone(),
                });
            }
        }
    }

    fn publish_send(&self, to: &LinkAddr, user: &str, after: u64, frame: &Frame) {
        let mut hub = self.hub.lock();
        if let Some(inbox) = hub.inboxes.get_mut(&to.node) {
            let user = user.to_owned();
            inbox.push_back(Delivery::Send {
                after,
                user,
                frame: frame.clone(),
            });
        }
    }

    fn publish_kept(&self, user: &str, after: u64, frame: &Frame) {
        let mut hub = self.hub.lock();
        for (node, inbox) in hub.inboxes.iter_mut() {
            if *node != self.node {
                let user = user.to_owned();
                inbox.push_back(Delivery::Kept {
                    after,
                    user,
                    frame: frame.clone(),
                });
            }
        }
    }
}

// ---- the cluster under test ------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Action {
    Connect(usize),
    Link(usize, usize),
    Unlink(usize),
    Leave(usize),
    Say(usize),
    Disconnect(usize),
    Kick(usize, usize),
    Join(usize, usize),
    ServerUnlink(usize, usize),
    SendTo(usize, usize),
    CatchUp(usize),
    /// The node fell behind a trimmed log: it rebuilds from a snapshot of the cluster's state instead of catching up.
    Rebuild(usize),
    Deliver(usize),
    /// The node's sequencer decides a batch of its queued changes (1 to 4), in order, and the node applies the
    /// answers.
    Decide(usize, usize),
    /// The node's sequencer decides its next queued change, but the answer is lost on the way (a timeout: the node
    /// learns only that the outcome is unknown). The entries reach the node through the log, later.
    LoseAnswer(usize),
}

/// A client's connection on one node, and what it has been told.
struct Client {
    node: usize,
    id: ConnectionId,
    outbox: Outbox,
    open: bool,
    /// The user it is linked to, by the frames it got: from `krmx/accepted` (then its snapshot) to its own unlink.
    linked: Option<String>,
    /// The user of its last link request.
    asked: Option<String>,
    /// A link request of it is waiting for its answer (then a second one is refused as pending).
    pending: bool,
    view: Vec<(String, bool)>,
    /// The highest message number seen per sender, for the order check.
    seen: HashMap<String, u64>,
}

struct Cluster {
    runtime: tokio::runtime::Runtime,
    hub: Arc<Mutex<HubState>>,
    servers: Vec<Server>,
    hosts: Vec<ClusterHost>,
    clients: Vec<Client>,
    /// Per sender and node (`user@node`), how many app messages it sent.
    said: Arc<Mutex<HashMap<String, u64>>>,
    link_events: Arc<AtomicUsize>,
    /// Per node, what its `on_membership` listener heard.
    heard: Vec<Arc<Mutex<Heard>>>,
    /// The nodes that rebuilt from a snapshot: they heard the changes a rebuild applied, not the log's entries.
    rebuilt: BTreeSet<usize>,
    /// Link entries of a node's own that a rebuild passed over without running their listeners: the node never saw
    /// them (they were trimmed from the log it fell behind), only the state they left. A documented limit of a
    /// rebuild; the check counts them apart so that every other link entry still has its listener run once.
    passed_over: usize,
}

impl Cluster {
    fn new() -> Cluster {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let hub = Arc::new(Mutex::new(HubState::default()));
        let said: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
        let link_events = Arc::new(AtomicUsize::new(0));
        let mut servers = Vec::new();
        let mut hosts = Vec::new();
        let mut heard = Vec::new();
        for index in 0..NODES {
            let node = format!("n{index}");
            hub.lock().inboxes.insert(node.clone(), VecDeque::new());
            let server = Server::new();
            let sequencer = Arc::new(NodeSequencer {
                node: node.clone(),
                hub: hub.clone(),
            });
            let cluster = ClusterHost::of(&server);
            cluster.install(sequencer, 0, Vec::new()).unwrap();
            let counter = said.clone();
            // Every app message is broadcast to everyone with its sender's running number on this node.
            let origin = node.clone();
            server.on_message(move |username, _| {
                let from = format!("{username}@{origin}");
                let n = {
                    let mut said = counter.lock();
                    let n = said.entry(from.clone()).or_default();
                    *n += 1;
                    *n
                };
                let said = Message::with_payload("app/said", json!({"from": from, "n": n}));
                let _ = username.server().broadcast(&said, None);
            });
            let links = link_events.clone();
            server.on_link(move |_| {
                links.fetch_add(1, Ordering::SeqCst);
            });
            let node_heard: Arc<Mutex<Heard>> = Arc::default();
            let hears = node_heard.clone();
            server.on_membership(move |_, change| {
                hears
                    .lock()
                    .push((change.seq, change.kind.name(), change.username.to_owned()));
            });
            heard.push(node_heard);
            let host = server.host();
            host.start().unwrap();
            host.listening(1000 + index as u16).unwrap();
            servers.push(server);
            hosts.push(cluster);
        }
        Cluster {
            runtime,
            hub,
            servers,
            hosts,
            clients: Vec::new(),
            said,
            link_events,
            heard,
            rebuilt: BTreeSet::new(),
            passed_over: 0,
        }
    }

    fn client(&self, index: usize) -> Option<usize> {
        (!self.clients.is_empty()).then(|| index % self.clients.len())
    }

    fn send(&self, client: usize, message: Value) {
        let client = &self.clients[client];
        if client.open {
            self.servers[client.node]
                .host()
                .receive(client.id, message.to_string().as_bytes());
        }
    }

    fn apply(&mut self, action: &Action) -> Result<(), String> {
        // The nodes' tasks (their connections' changes) go on the runtime; they run in `decide`.
        let runtime = self.runtime.handle().clone();
        let _entered = runtime.enter();
        match *action {
            Action::Connect(node) => {
                let node = node % NODES;
                if let Ok((id, outbox)) = self.servers[node].host().connect() {
                    self.clients.push(Client {
                        node,
                        id,
                        outbox,
                        open: true,
                        linked: None,
                        asked: None,
                        pending: false,
                        view: Vec::new(),
                        seen: HashMap::new(),
                    });
                }
            }
            Action::Link(client, name) => {
                if let Some(client) = self.client(client) {
                    let username = NAMES[name % NAMES.len()];
                    let request = json!({"type": "krmx/link", "payload": {"username": username, "version": "0.6.0"}});
                    let c = &mut self.clients[client];
                    if c.linked.is_none() && !c.pending {
                        c.asked = Some(username.to_owned());
                        c.pending = c.open;
                    }
                    self.send(client, request);
                }
            }
            Action::Unlink(client) => {
                if let Some(client) = self.client(client) {
                    self.send(client, json!({"type": "krmx/unlink"}));
                }
            }
            Action::Leave(client) => {
                if let Some(client) = self.client(client) {
                    self.send(client, json!({"type": "krmx/leave"}));
                }
            }
            Action::Say(client) => {
                if let Some(client) = self.client(client) {
                    self.send(client, json!({"type": "app/say"}));
                }
            }
            Action::Disconnect(client) => {
                if let Some(client) = self.client(client) {
                    self.read(client)?;
                    let c = &mut self.clients[client];
                    if c.open {
                        c.open = false;
                        self.servers[c.node].host().disconnect(c.id);
                    }
                }
            }
            Action::Kick(node, name) => {
                let _ = self.servers[node % NODES].kick(NAMES[name % NAMES.len()]);
            }
            Action::Join(node, name) => {
                let _ = self.servers[node % NODES].join(NAMES[name % NAMES.len()]);
            }
            Action::ServerUnlink(node, name) => {
                let _ = self.servers[node % NODES].unlink(NAMES[name % NAMES.len()]);
            }
            Action::SendTo(node, name) => {
                let _ = self.servers[node % NODES].send(NAMES[name % NAMES.len()], &Message::new("app/direct"));
            }
            Action::CatchUp(node) => self.hosts[node % NODES].catch_up()?,
            Action::Rebuild(node) => {
                let (seq, users) = {
                    let hub = self.hub.lock();
                    (hub.log.len() as u64, hub.users.clone())
                };
                let node = node % NODES;
                let own_links = {
                    let hub = self.hub.lock();
                    let from = (self.hosts[node].applied() as usize).min(hub.log.len());
                    hub.log[from..]
                        .iter()
                        .filter(|entry| {
                            entry.by == format!("n{node}") && matches!(entry.event, LogEvent::Linked { .. })
                        })
                        .count()
                };
                let heard = self.link_events.load(Ordering::SeqCst);
                if seq > self.hosts[node].applied() {
                    self.rebuilt.insert(node);
                }
                self.hosts[node].rebuild(seq, users);
                let ran = self.link_events.load(Ordering::SeqCst) - heard;
                self.passed_over += own_links.saturating_sub(ran);
            }
            Action::Deliver(node) => {
                let node = node % NODES;
                let next = self
                    .hub
                    .lock()
                    .inboxes
                    .get_mut(&format!("n{node}"))
                    .unwrap()
                    .pop_front();
                match next {
                    Some(Delivery::Broadcast { after, skip, frame }) => {
                        self.hosts[node].deliver_broadcast(after, skip.as_deref(), frame)
                    }
                    Some(Delivery::Send { after, user, frame }) => self.hosts[node].deliver_send(after, &user, frame),
                    Some(Delivery::Kept { after, user, frame }) => self.hosts[node].deliver_kept(after, &user, frame),
                    None => {}
                }
            }
            Action::Decide(node, count) => self.decide(node % NODES, 1 + count % 4)?,
            Action::LoseAnswer(node) => self.lose_answer(node % NODES),
        }
        for client in 0..self.clients.len() {
            self.read(client)?;
        }
        Ok(())
    }

    /// Decides up to `count` of `node`'s queued changes, in order, then lets the node's tasks apply the answers: until
    /// it has applied the last entry it was answered, and its other tasks (refusals) have run. Where other nodes'
    /// entries come first, it catches the node up as its keeper would.
    fn decide(&mut self, node: usize, count: usize) -> Result<(), String> {
        let name = format!("n{node}");
        let mut target = 0;
        {
            let mut hub = self.hub.lock();
            for _ in 0..count {
                let Some((change, answer)) = hub.queued.entry(name.clone()).or_default().pop_front() else {
                    break;
                };
                let decided = hub.submit(&name, change);
                if let Ok(entries) = &decided {
                    target = target.max(entries.last().map_or(0, |entry| entry.seq));
                }
                let _ = answer.send(decided);
            }
        }
        let host = self.hosts[node].clone();
        self.runtime.block_on(async move {
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
            for _ in 0..64 {
                tokio::task::yield_now().await;
            }
            if host.applied() < target {
                // Other nodes' entries come first: the keeper, notified of every entry, reads them (the answers
                // wait for it rather than read them again).
                host.catch_up()?;
            }
            while host.applied() < target {
                if tokio::time::Instant::now() > deadline {
                    return Err(format!("node {node} never applied its answers up to {target}"));
                }
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
            for _ in 0..64 {
                tokio::task::yield_now().await;
            }
            Ok(())
        })
    }

    /// Decides `node`'s next queued change but answers it as unavailable, then lets the node's tasks run (the
    /// refusal, and the undo it queues).
    fn lose_answer(&mut self, node: usize) {
        let name = format!("n{node}");
        {
            let mut hub = self.hub.lock();
            let Some((change, answer)) = hub.queued.entry(name.clone()).or_default().pop_front() else {
                return;
            };
            let _ = hub.submit(&name, change);
            let _ = answer.send(Err(Refused::Unavailable("timed out".into())));
        }
        self.runtime.block_on(async {
            for _ in 0..64 {
                tokio::task::yield_now().await;
            }
        });
    }

    /// Reads what a client has been sent, checking each frame against what it was told before.
    fn read(&mut self, index: usize) -> Result<(), String> {
        let frames = self.clients[index].outbox.take_all();
        let client = &mut self.clients[index];
        for frame in frames {
            let value: Value = serde_json::from_str(frame.as_str()).map_err(|e| e.to_string())?;
            observe(client, &value).map_err(|why| format!("client {index} (node {}): {why}: {value}", client.node))?;
        }
        if client.outbox.close_reason().is_some() {
            // Closed by its node (a rebuild found its link gone): the client is done, and the transport tells the
            // node (unless the client had closed first).
            client.linked = None;
            client.pending = false;
            if client.open {
                client.open = false;
                let (node, id) = (client.node, client.id);
                self.servers[node].host().disconnect(id);
            }
        }
        Ok(())
    }

    /// Delivers everything queued and brings every node up to date.
    fn settle(&mut self) -> Result<(), String> {
        for _ in 0..10_000 {
            let queued: Vec<usize> = (0..NODES)
                .filter(|node| {
                    self.hub
                        .lock()
                        .queued
                        .get(&format!("n{node}"))
                        .is_some_and(|queue| !queue.is_empty())
                })
                .collect();
            if !queued.is_empty() {
                for node in queued {
                    self.apply(&Action::Decide(node, 3))?;
                }
                continue;
            }
            let pending: Vec<usize> = (0..NODES)
                .filter(|node| !self.hub.lock().inboxes[&format!("n{node}")].is_empty())
                .collect();
            if pending.is_empty() {
                for node in 0..NODES {
                    self.apply(&Action::CatchUp(node))?;
                }
                return Ok(());
            }
            for node in pending {
                self.apply(&Action::Deliver(node))?;
            }
        }
        Err("deliveries never ran out".into())
    }

    fn check_settled(&self) -> Result<(), String> {
        let hub = self.hub.lock();
        let expected: Vec<(String, bool)> = hub
            .users
            .iter()
            .map(|(name, link)| (name.clone(), link.is_some()))
            .collect();
        for (index, server) in self.servers.iter().enumerate() {
            let users: Vec<(String, bool)> = server.users().into_iter().map(|u| (u.username, u.is_linked)).collect();
            if users != expected {
                return Err(format!("node {index} lists {users:?}, the cluster {expected:?}"));
            }
        }
        let mut linked_to: HashMap<&str, usize> = HashMap::new();
        for (index, client) in self.clients.iter().enumerate() {
            let Some(user) = client.linked.as_deref() else { continue };
            if client.view != expected {
                return Err(format!(
                    "client {index} sees {:?}, the cluster {expected:?}",
                    client.view
                ));
            }
            if let Some(other) = linked_to.insert(user, index) {
                return Err(format!("{user} is linked to clients {other} and {index}"));
            }
            let (_, link) = &hub.users[hub.find(user).ok_or("a linked client's user is gone")?];
            let link = link
                .as_ref()
                .ok_or(format!("client {index} linked to {user}, who is unlinked"))?;
            if link.node != format!("n{}", client.node) || link.connection != client.id.get() {
                return Err(format!("{user} is linked to {link:?}, not to client {index}"));
            }
        }
        let entries: Vec<(u64, &'static str, String)> = hub
            .log
            .iter()
            .map(|entry| match &entry.event {
                LogEvent::Joined { user } => (entry.seq, "join", user.clone()),
                LogEvent::Linked { user, .. } => (entry.seq, "link", user.clone()),
                LogEvent::Unlinked { user, .. } => (entry.seq, "unlink", user.clone()),
                LogEvent::Left { user } => (entry.seq, "leave", user.clone()),
            })
            .collect();
        for (index, heard) in self.heard.iter().enumerate() {
            let heard = heard.lock();
            if !self.rebuilt.contains(&index) && *heard != entries {
                return Err(format!(
                    "node {index}'s on_membership heard {heard:?}, the log is {entries:?}"
                ));
            }
            if heard.windows(2).any(|pair| pair[1].0 < pair[0].0) {
                return Err(format!("node {index}'s on_membership heard seqs going down: {heard:?}"));
            }
            // What it heard, folded, is what the node lists.
            let mut folded: Vec<(String, bool)> = Vec::new();
            for (_, change, user) in heard.iter() {
                match *change {
                    "join" => folded.push((user.clone(), false)),
                    "leave" => folded.retain(|(name, _)| name != user),
                    linked => {
                        if let Some(slot) = folded.iter_mut().find(|(name, _)| name == user) {
                            slot.1 = linked == "link";
                        }
                    }
                }
            }
            if folded != expected {
                return Err(format!(
                    "node {index}'s on_membership folds to {folded:?}, the cluster is {expected:?}"
                ));
            }
        }
        let links = hub
            .log
            .iter()
            .filter(|entry| matches!(entry.event, LogEvent::Linked { .. }))
            .count();
        let heard = self.link_events.load(Ordering::SeqCst) + self.passed_over;
        if links != heard {
            return Err(format!("{links} links were made, link listeners ran {heard} times"));
        }
        Ok(())
    }
}

/// Checks one frame against what the client was told before, and updates what it knows.
fn observe(client: &mut Client, frame: &Value) -> Result<(), String> {
    let kind = frame["type"].as_str().unwrap_or_default();
    let name = frame["payload"]["username"].as_str().unwrap_or_default().to_owned();
    let known = client.view.iter().position(|(user, _)| *user == name);
    match kind {
        "krmx/accepted" => {
            // Its snapshot follows: every user, itself included, as joined and linked frames.
            client.linked = client.asked.clone();
            client.pending = false;
            client.view.clear();
            return Ok(());
        }
        "krmx/rejected" => {
            let reason = frame["payload"]["reason"].as_str().unwrap_or_default();
            let others = [
                Rejection::LinkRequestPending.to_string(),
                Rejection::UnlinkedConnection.to_string(),
            ];
            // Its link request's answer, not a refusal of a message sent while it waited.
            if !others.iter().any(|other| other == reason) {
                client.pending = false;
            }
            return Ok(());
        }
        _ => {}
    }
    if client.linked.is_none() {
        // Unlinked, a connection gets nothing but answers to its link requests, and its own leave.
        return match kind {
            "krmx/left" => Ok(()),
            _ => Err("a frame reached an unlinked connection".into()),
        };
    }
    match kind {
        "krmx/joined" => {
            if known.is_some() {
                return Err(format!("{name} joined twice"));
            }
            client.view.push((name, false));
        }
        "krmx/linked" => {
            let at = known.ok_or(format!("{name} linked before it joined"))?;
            if client.view[at].1 {
                return Err(format!("{name} linked twice"));
            }
            client.view[at].1 = true;
        }
        "krmx/unlinked" => {
            let at = known.ok_or(format!("{name} unlinked before it joined"))?;
            if !client.view[at].1 {
                return Err(format!("{name} unlinked while not linked"));
            }
            client.view[at].1 = false;
            if client.linked.as_deref() == Some(name.as_str()) {
                client.linked = None;
            }
        }
        "krmx/left" => {
            let at = known.ok_or(format!("{name} left before it joined"))?;
            if client.view[at].1 {
                return Err(format!("{name} left while linked"));
            }
            client.view.remove(at);
        }
        "app/said" => {
            let from = frame["payload"]["from"].as_str().unwrap_or_default().to_owned();
            let n = frame["payload"]["n"].as_u64().unwrap_or_default();
            let last = client.seen.entry(from.clone()).or_default();
            if n <= *last {
                return Err(format!("message {n} of {from} after message {last}"));
            }
            *last = n;
        }
        "app/direct" => {}
        other => return Err(format!("unexpected frame type {other}")),
    }
    Ok(())
}

fn action() -> impl Strategy<Value = Action> {
    let n = || 0usize..8;
    prop_oneof![
        2 => n().prop_map(Action::Connect),
        4 => (n(), n()).prop_map(|(c, u)| Action::Link(c, u)),
        1 => n().prop_map(Action::Unlink),
        1 => n().prop_map(Action::Leave),
        3 => n().prop_map(Action::Say),
        1 => n().prop_map(Action::Disconnect),
        1 => (n(), n()).prop_map(|(s, u)| Action::Kick(s, u)),
        1 => (n(), n()).prop_map(|(s, u)| Action::Join(s, u)),
        1 => (n(), n()).prop_map(|(s, u)| Action::ServerUnlink(s, u)),
        1 => (n(), n()).prop_map(|(s, u)| Action::SendTo(s, u)),
        2 => n().prop_map(Action::CatchUp),
        1 => n().prop_map(Action::Rebuild),
        4 => n().prop_map(Action::Deliver),
        4 => (n(), n()).prop_map(|(node, count)| Action::Decide(node, count)),
        1 => n().prop_map(Action::LoseAnswer),
    ]
}

fn run(actions: &[Action]) -> Result<(), String> {
    let mut cluster = Cluster::new();
    for (step, action) in actions.iter().enumerate() {
        cluster
            .apply(action)
            .map_err(|why| format!("step {step} {action:?}: {why}"))?;
    }
    cluster.settle()?;
    cluster.check_settled()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn nodes_of_one_cluster_behave_as_one_server(actions in proptest::collection::vec(action(), 1..80)) {
        if let Err(why) = run(&actions) {
            return Err(TestCaseError::fail(why));
        }
    }
}

#[test]
fn a_hand_written_run_across_three_nodes_passes() {
    use Action::*;
    let actions = [
        Connect(0),
        Connect(1),
        Connect(2),
        Link(0, 0),
        Link(1, 1),
        Decide(0, 0),
        Decide(1, 0),
        Say(0),
        Link(2, 0), // ann is linked on node 0: refused
        Decide(2, 0),
        Deliver(1),
        Deliver(2),
        Kick(2, 0),   // node 2 kicks ann, linked on node 0: queued
        Decide(2, 0), // ann leaves (until then node 2 would refuse her link as already linked, before authenticating)
        Link(2, 0),
        Decide(2, 0),
        Say(2),
        SendTo(0, 1),
        CatchUp(0),
    ];
    run(&actions).unwrap();
    let mut cluster = Cluster::new();
    for action in &actions {
        cluster.apply(action).unwrap();
    }
    cluster.settle().unwrap();
    assert_eq!(cluster.servers[1].users().len(), 2);
    assert_eq!(*cluster.said.lock().get("ann@n0").unwrap(), 1);
    assert_eq!(*cluster.said.lock().get("ann@n2").unwrap(), 1);
}

/// A sequencer whose `submit` waits until the test lets it answer: a round trip that takes as long as the test says.
struct Gated {
    entered: std::sync::mpsc::Sender<()>,
    answer: Mutex<std::sync::mpsc::Receiver<Result<Vec<LogEntry>, Refused>>>,
}

impl Sequencer for Gated {
    fn node(&self) -> &str {
        "gated"
    }
    fn owns(&self, _: &LinkAddr) -> bool {
        false
    }
    fn submit(&self, _: Change) -> Result<Vec<LogEntry>, Refused> {
        self.entered.send(()).unwrap();
        self.answer.lock().recv().unwrap()
    }
    fn entries_after(&self, _: u64) -> Result<Vec<LogEntry>, String> {
        Ok(Vec::new())
    }
    fn publish_broadcast(&self, _: u64, _: Option<&str>, _: &Frame) {}
    fn publish_send(&self, _: &LinkAddr, _: &str, _: u64, _: &Frame) {}
    fn publish_kept(&self, _: &str, _: u64, _: &Frame) {}
}

/// Without a runtime a server method decides its change on the spot, blocking its thread for the round trip, but
/// without the membership turn: the node's other changes do not wait behind it. The cluster's refusal is its error.
#[test]
fn a_blocking_method_without_a_runtime_does_not_hold_the_turn_across_its_round_trip() {
    let (entered, round_trip) = std::sync::mpsc::channel();
    let (answer, answers) = std::sync::mpsc::channel();
    let server = Server::new();
    let sequencer = Gated {
        entered,
        answer: Mutex::new(answers),
    };
    ClusterHost::of(&server)
        .install(Arc::new(sequencer), 0, Vec::new())
        .unwrap();
    server.host().start().unwrap();
    server.host().listening(1).unwrap();
    let joining = server.clone();
    let join = std::thread::spawn(move || joining.join("ann"));
    round_trip.recv().unwrap();
    // The join waits for its answer: the turn is free meanwhile.
    let other = server.clone();
    let (done, turned) = std::sync::mpsc::channel();
    std::thread::spawn(move || other.atomically(|_| done.send(()).unwrap()));
    assert!(
        turned.recv_timeout(std::time::Duration::from_secs(10)).is_ok(),
        "the turn was held across the round trip"
    );
    answer.send(Err(Refused::Failed(Error::JoinExistingUser))).unwrap();
    assert_eq!(join.join().unwrap(), Err(Error::JoinExistingUser));
}

#[test]
fn a_late_link_entry_does_not_link_a_connection_told_it_was_rejected() {
    use Action::*;
    // The answer to ann's link is lost: the client is told `krmx/rejected` (the outcome is unknown), and the entry
    // that linked it reaches the node later through the log. `observe` fails the run if the connection, told it was
    // rejected, gets any frame of a linked connection.
    run(&[Connect(0), Link(0, 0), LoseAnswer(0), CatchUp(0), Say(0)]).unwrap();
    // Rejected, the client links as ben meanwhile: the late entry for ann must not accept it as ann.
    let mut cluster = Cluster::new();
    for action in [Connect(0), Link(0, 0), LoseAnswer(0), Link(0, 1), CatchUp(0)] {
        cluster.apply(&action).unwrap();
    }
    assert_eq!(cluster.clients[0].linked, None, "accepted by ann's late entry");
    cluster.settle().unwrap();
    cluster.check_settled().unwrap();
    // ann's link was undone everywhere; ben is linked, to that client.
    assert_eq!(
        cluster.hub.lock().users,
        vec![
            ("ann".to_owned(), None),
            (
                "ben".to_owned(),
                Some(LinkAddr {
                    node: "n0".into(),
                    generation: 1,
                    connection: cluster.clients[0].id.get()
                })
            )
        ]
    );
    assert_eq!(cluster.clients[0].linked.as_deref(), Some("ben"));
}

#[test]
fn a_gap_that_cannot_be_filled_asks_for_a_resync_instead_of_dropping_entries() {
    use Action::*;
    let mut cluster = Cluster::new();
    // Node 1 is behind (node 0 joined ann), and its reads of the log fail: ben's link on node 1 is answered with
    // entries it cannot apply without the ones before.
    for action in [Connect(1), Join(0, 0), Decide(0, 0), Link(0, 1)] {
        cluster.apply(&action).unwrap();
    }
    cluster.hub.lock().failing_reads.insert("n1".into(), usize::MAX);
    {
        let mut hub = cluster.hub.lock();
        let (change, answer) = hub.queued.get_mut("n1").unwrap().pop_front().unwrap();
        let decided = hub.submit("n1", change);
        answer.send(decided).unwrap();
    }
    let host = cluster.hosts[1].clone();
    let asked = cluster
        .runtime
        .block_on(async move { tokio::time::timeout(std::time::Duration::from_secs(10), host.resync_needed()).await });
    assert!(asked.is_ok(), "the node never asked to start over");
    assert_eq!(cluster.hosts[1].applied(), 0);
    // Nothing was said to the client meanwhile (no `krmx/accepted` without its entries).
    cluster.read(0).unwrap();
    assert_eq!(cluster.clients[0].linked, None);
    // Started over from the cluster's state, as the cluster layer does: the node is whole again.
    let (seq, users) = {
        let hub = cluster.hub.lock();
        (hub.log.len() as u64, hub.users.clone())
    };
    cluster.hosts[1].restart(seq, users);
    assert_eq!(cluster.hosts[1].applied(), seq);
    assert_eq!(cluster.servers[1].users().len(), 2);
    let host = cluster.hosts[1].clone();
    let again = cluster.runtime.block_on(async move {
        tokio::time::timeout(std::time::Duration::from_millis(50), host.resync_needed()).await
    });
    assert!(again.is_err(), "a restart answers the request");
}

#[test]
fn a_node_without_a_valid_lease_takes_no_message_and_hands_nothing_to_the_others() {
    use Action::*;
    let mut cluster = Cluster::new();
    for action in [
        Connect(0),
        Connect(1),
        Link(0, 0),
        Link(1, 1),
        Decide(0, 0),
        Decide(1, 0),
    ] {
        cluster.apply(&action).unwrap();
    }
    cluster.settle().unwrap();
    cluster.hub.lock().fenced.insert("n0".into());
    // ann's message on node 0 is dropped before any listener runs; a broadcast the app makes on node 0 reaches its
    // own connections but not the other nodes.
    cluster.apply(&Say(0)).unwrap();
    assert_eq!(cluster.said.lock().get("ann@n0"), None);
    cluster.servers[0].broadcast(&Message::new("app/direct"), None).unwrap();
    assert!(cluster.hub.lock().inboxes["n1"].is_empty(), "a fenced node published");
    let metrics = cluster.servers[0].metrics_text();
    assert!(
        metrics.contains("krmx_cluster_fenced_messages_total{at=\"received\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("krmx_cluster_fenced_messages_total{at=\"published\"} 1"),
        "{metrics}"
    );
    // With its lease valid again, the node speaks again.
    cluster.hub.lock().fenced.clear();
    cluster.apply(&Say(0)).unwrap();
    assert_eq!(cluster.said.lock().get("ann@n0"), Some(&1));
    assert_eq!(cluster.hub.lock().inboxes["n1"].len(), 1);
}

#[test]
fn messages_from_a_fenced_or_older_generation_are_not_delivered() {
    let cluster = Cluster::new();
    let host = &cluster.hosts[0];
    assert!(host.admits("n1", 1));
    // A newer generation of node 1 spoke: the older one is over.
    assert!(host.admits("n1", 2));
    assert!(!host.admits("n1", 1));
    // The log unlinked node 2's generation 4 for a lost lease: whatever it still publishes is dropped.
    let link = LinkAddr {
        node: "n2".into(),
        generation: 4,
        connection: 7,
    };
    cluster.servers[0].join("eve").unwrap();
    let mut hub = cluster.hub.lock();
    let mut out = Vec::new();
    hub.append(
        "n2",
        LogEvent::Linked {
            user: "eve".into(),
            link: link.clone(),
        },
        &mut out,
    );
    let reason = UnlinkReason::LeaseExpired;
    hub.append(
        "n1",
        LogEvent::Unlinked {
            user: "eve".into(),
            link,
            reason,
        },
        &mut out,
    );
    drop(hub);
    host.catch_up().unwrap();
    assert!(!host.admits("n2", 4));
    assert!(host.admits("n2", 5));
    let metrics = cluster.servers[0].metrics_text();
    assert!(
        metrics.contains("krmx_cluster_fenced_messages_total{at=\"delivered\"} 2"),
        "{metrics}"
    );
}

#[test]
fn every_node_hears_every_change_and_sends_here_only_to_its_own_connections() {
    use Action::*;
    let mut cluster = Cluster::new();
    // ann links on node 0, ben on node 1; node 2 kicks ann.
    for action in [
        Connect(0),
        Connect(1),
        Link(0, 0),
        Link(1, 1),
        Decide(0, 0),
        Decide(1, 0),
    ] {
        cluster.apply(&action).unwrap();
    }
    cluster.settle().unwrap();
    for (index, heard) in cluster.heard.iter().enumerate() {
        let heard: Vec<(u64, &str, String)> = heard.lock().clone();
        let expected = [
            (1, "join", "ann"),
            (2, "link", "ann"),
            (3, "join", "ben"),
            (4, "link", "ben"),
        ];
        let expected: Vec<(u64, &str, String)> = expected.iter().map(|(s, k, u)| (*s, *k, u.to_string())).collect();
        assert_eq!(heard, expected, "node {index}");
    }
    assert!(cluster.servers[0].is_linked_here("ann"));
    assert!(!cluster.servers[0].is_linked_here("ben"));
    assert!(cluster.servers[1].is_linked_here("ben"));
    assert!(
        cluster.servers[1].user("ann").unwrap().is_linked,
        "node 1 knows ann is linked, on node 0"
    );
    // A send_here to a user linked on another node is refused and handed to no node; to one of its own, sent.
    let here = Message::new("app/direct");
    assert_eq!(
        cluster.servers[1].send_here("ann", &here),
        Err(Error::SendToUnlinkedUser)
    );
    assert_eq!(
        cluster.servers[1].send_here("cat", &here),
        Err(Error::SendToUnknownUser)
    );
    assert!(
        cluster.hub.lock().inboxes.values().all(VecDeque::is_empty),
        "send_here routed"
    );
    cluster.servers[0].send_here("ann", &here).unwrap();
    let frames = cluster.clients[0].outbox.take_all();
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].as_str(), r#"{"type":"app/direct"}"#);
    // Made on node 2, heard on all three with the same seqs.
    cluster.apply(&Kick(2, 0)).unwrap();
    cluster.settle().unwrap();
    for (index, heard) in cluster.heard.iter().enumerate() {
        let tail: Vec<(u64, &str, String)> = heard.lock()[4..].to_vec();
        assert_eq!(
            tail,
            vec![(5, "unlink", "ann".to_owned()), (6, "leave", "ann".to_owned())],
            "node {index}"
        );
    }
    cluster.check_settled().unwrap();
}
