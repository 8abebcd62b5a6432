//! The seam a cluster plugs into: where the order of membership changes comes from, and how messages reach the users
//! linked on other nodes. `emitter-redis` implements it on Redis; the core knows nothing of Redis.
//!
//! Applications do not use this module; `emitter-redis` does.

mod sequencer;

pub use crate::metrics::cluster::ClusterCounts;
pub use crate::server::node::ClusterHost;
pub use sequencer::*;
