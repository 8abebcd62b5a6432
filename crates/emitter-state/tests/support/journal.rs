//! An in-memory [`Journal`] shared by several servers ("nodes"), as emitter-redis's is by the nodes of a cluster: per
//! domain one inbox (the requests in the order submitted), one owner that executes them, and one log of committed
//! changes that a worker thread applies to every node's model in order. The test moves the owner between nodes
//! (the old one disowns, the new one owns from the checkpoint and the log: nothing else survives a move), and asks a
//! node to load again (a follower that could not follow on).
#![allow(dead_code)]

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use emitter_state::journal::{Checkpoint, Committed, Journal, JournalError, JournalModel, MembershipChange, Request};
use parking_lot::{Condvar, Mutex};

#[derive(Default)]
struct Domain {
    /// Per node, its model once attached.
    models: BTreeMap<usize, Arc<dyn JournalModel>>,
    owner: Option<usize>,
    inbox: VecDeque<Request>,
    log: Vec<Committed>,
    checkpoint: Option<Checkpoint>,
}

impl Domain {
    /// The committed changes after the checkpoint.
    fn after(&self) -> Vec<Committed> {
        let from = self.checkpoint.as_ref().map_or(0, |checkpoint| checkpoint.n) as usize;
        self.log[from..].to_vec()
    }
}

#[derive(Default)]
struct State {
    domains: BTreeMap<String, Domain>,
    stopped: bool,
    /// Requests taken from an inbox and not yet committed and applied everywhere.
    busy: usize,
}

/// The shared journal. Dropping the last [`MemoryJournal`] handle does not stop the worker: call [`stop`].
pub struct Hub {
    state: Mutex<State>,
    work: Condvar,
    /// Held for each execute-commit-apply step and for each ownership move or load, so that they never interleave.
    turn: Mutex<()>,
}

pub struct MemoryJournal {
    hub: Arc<Hub>,
    worker: Mutex<Option<JoinHandle<()>>>,
}

impl MemoryJournal {
    pub fn new() -> MemoryJournal {
        let hub = Arc::new(Hub {
            state: Mutex::new(State::default()),
            work: Condvar::new(),
            turn: Mutex::new(()),
        });
        let worker = {
            let hub = hub.clone();
            std::thread::spawn(move || hub.run())
        };
        MemoryJournal {
            hub,
            worker: Mutex::new(Some(worker)),
        }
    }

    /// The journal as node `node` sees it.
    pub fn node(&self, node: usize) -> Arc<dyn Journal> {
        Arc::new(NodeJournal {
            hub: self.hub.clone(),
            node,
        })
    }

    /// Moves the ownership of `domain` to `node`: the old owner disowns it, the new one owns it from the checkpoint
    /// and the changes after it.
    pub fn move_owner(&self, domain: &str, node: usize) {
        let _turn = self.hub.turn.lock();
        let (old, new, checkpoint, after) = {
            let mut state = self.hub.state.lock();
            let domain = state.domains.get_mut(domain).expect("an attached domain");
            let old = domain.owner.and_then(|owner| domain.models.get(&owner).cloned());
            let new = domain
                .models
                .get(&node)
                .cloned()
                .expect("a node that attached the domain");
            domain.owner = Some(node);
            (old, new, domain.checkpoint.clone(), domain.after())
        };
        if let Some(old) = old {
            old.disown();
        }
        new.own(checkpoint.as_ref(), &after).expect("owned");
        self.hub.work.notify_all();
    }

    /// Makes `node`'s replica of `domain` load again from the checkpoint and the changes after it.
    pub fn reload(&self, domain: &str, node: usize) {
        let _turn = self.hub.turn.lock();
        let (model, checkpoint, after) = {
            let state = self.hub.state.lock();
            let domain = &state.domains[domain];
            (domain.models[&node].clone(), domain.checkpoint.clone(), domain.after())
        };
        model.load(checkpoint.as_ref(), &after).expect("loaded");
    }

    /// The committed changes of `domain`.
    pub fn log(&self, domain: &str) -> Vec<Committed> {
        self.hub.state.lock().domains[domain].log.clone()
    }

    /// How many changes `domain` committed, and at which the last checkpoint was taken.
    pub fn committed(&self, domain: &str) -> (u64, Option<u64>) {
        let state = self.hub.state.lock();
        let domain = &state.domains[domain];
        (
            domain.log.len() as u64,
            domain.checkpoint.as_ref().map(|checkpoint| checkpoint.n),
        )
    }

    /// Waits until every request submitted so far is committed and applied on every node.
    pub fn settle(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut state = self.hub.state.lock();
        while state.busy > 0 || state.domains.values().any(|domain| !domain.inbox.is_empty()) {
            assert!(Instant::now() < deadline, "the journal never settled");
            self.hub.work.wait_for(&mut state, Duration::from_millis(10));
        }
    }

    pub fn stop(&self) {
        self.hub.state.lock().stopped = true;
        self.hub.work.notify_all();
        if let Some(worker) = self.worker.lock().take() {
            worker.join().expect("the worker ran to its end");
        }
    }
}

impl Drop for MemoryJournal {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Hub {
    /// The worker: takes the next request of any owned domain, executes it on the owner, commits the change (and the
    /// owner's checkpoint), and applies it to every node's model, in order.
    fn run(&self) {
        loop {
            let turn = self.turn.lock();
            let next = {
                let mut state = self.state.lock();
                if state.stopped {
                    return;
                }
                let ready = state.domains.iter_mut().find_map(|(name, domain)| {
                    let owner = domain.owner.and_then(|owner| domain.models.get(&owner).cloned())?;
                    let request = domain.inbox.pop_front()?;
                    Some((name.clone(), owner, request))
                });
                if ready.is_some() {
                    state.busy += 1;
                }
                ready
            };
            let Some(next) = next else {
                // Nothing to do: a move or a load may take the turn meanwhile.
                drop(turn);
                let mut state = self.state.lock();
                if !state.stopped {
                    self.work.wait_for(&mut state, Duration::from_millis(20));
                }
                continue;
            };
            let (name, owner, request) = next;
            let change = owner.execute(&request);
            let committed = {
                let mut state = self.state.lock();
                let domain = state.domains.get_mut(&name).expect("attached");
                let committed = change.map(|change| {
                    let committed = Committed {
                        n: domain.log.len() as u64 + 1,
                        change,
                    };
                    domain.log.push(committed.clone());
                    if let Some(snapshot) = owner.checkpoint() {
                        domain.checkpoint = Some(Checkpoint {
                            n: committed.n,
                            state: snapshot,
                        });
                    }
                    committed
                });
                committed.map(|committed| (committed, domain.models.values().cloned().collect::<Vec<_>>()))
            };
            if let Some((committed, models)) = committed {
                for model in models {
                    model.apply(&committed);
                }
            }
            self.state.lock().busy -= 1;
            drop(turn);
            self.work.notify_all();
        }
    }
}

struct NodeJournal {
    hub: Arc<Hub>,
    node: usize,
}

impl Journal for NodeJournal {
    fn attach(&self, name: &str, model: Arc<dyn JournalModel>) -> Result<(), JournalError> {
        let _turn = self.hub.turn.lock();
        let (checkpoint, after, owns) = {
            let mut state = self.hub.state.lock();
            let domain = state.domains.entry(name.to_owned()).or_default();
            if domain.models.contains_key(&self.node) {
                return Err(JournalError::Domain(format!("{name} is attached on this node already")));
            }
            domain.models.insert(self.node, model.clone());
            // The first node to attach a domain owns it, until the test moves it.
            let owns = domain.owner.is_none();
            if owns {
                domain.owner = Some(self.node);
            }
            (domain.checkpoint.clone(), domain.after(), owns)
        };
        model
            .load(checkpoint.as_ref(), &after)
            .map_err(JournalError::Unavailable)?;
        if owns {
            model
                .own(checkpoint.as_ref(), &after)
                .map_err(JournalError::Unavailable)?;
        }
        self.hub.work.notify_all();
        Ok(())
    }

    fn submit(&self, name: &str, request: Request) -> Result<(), JournalError> {
        let mut state = self.hub.state.lock();
        let domain = state
            .domains
            .get_mut(name)
            .ok_or_else(|| JournalError::Domain(format!("{name} is not attached")))?;
        domain.inbox.push_back(request);
        self.hub.work.notify_all();
        Ok(())
    }

    fn membership(&self, name: &str, seq: u64, change: MembershipChange, user: &str) {
        // The nodes of these tests are servers of their own (each knows only its own users): every change is one
        // node's, so none comes twice.
        let _ = self.submit(
            name,
            Request::Membership {
                seq,
                change,
                user: user.to_owned(),
            },
        );
    }
}
