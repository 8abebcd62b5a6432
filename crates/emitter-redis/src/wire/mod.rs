//! The cluster's own protocol on Redis, for a node that does not use [`Node`](crate::Node): the log's entries and a
//! [`Replica`] that applies them, the [`Notifications`] stream of a node's subscription, the frames of
//! [`NodeMessage`]s between nodes, leases and the [`Blocking`] handle. An application runs a node with
//! [`Cluster`](crate::Cluster), [`Options`](crate::Options) and [`Node`](crate::Node) and needs none of these.
pub(crate) mod blocking;
pub(crate) mod messages;
pub(crate) mod recovery;
pub(crate) mod replica;
pub(crate) mod subscribe;

pub use crate::types::{ClusterSnapshot, Epoch, NodeLease, UserRecord};
pub use blocking::Blocking;
pub use emitter_core::cluster::{Change, LinkAddr, LogEntry, LogEvent, UnlinkReason};
pub use messages::NodeMessage;
pub use replica::{Replica, ReplicaError};
pub use subscribe::{Notification, Notifications};
