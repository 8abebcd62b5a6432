//! The Krmx wire format: messages, their JSON shape and the frames that carry them, and the protocol's vocabulary.
//!
//! Every Krmx message is a JSON object with a string `type` and an optional `payload`. Types that start with the exact,
//! lowercase prefix `krmx/` belong to the protocol itself; everything else is an application message.

mod message;
pub(crate) mod query;
pub(crate) mod username;
pub(crate) mod version;
pub(crate) mod vocabulary;

pub use message::*;
