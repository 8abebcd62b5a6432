//! The seam between the core and a transport such as `emitter-axum`.
//!
//! A transport accepts connections, hands the core each incoming frame through a [`Host`], and writes out what each
//! connection's [`Outbox`] has for it. The core never touches a socket and never waits on one.

pub(crate) mod close_reason;
pub(crate) mod fanout;
pub(crate) mod handshake;
pub(crate) mod id;
pub(crate) mod origin;
pub(crate) mod outbox;
pub(crate) mod snapshot;

pub use crate::server::host::{Host, TransportGuard};
pub use close_reason::{CloseReason, TransportClose};
pub use id::ConnectionId;
pub use outbox::{Outbox, PushError};
pub use snapshot::Snapshot;
