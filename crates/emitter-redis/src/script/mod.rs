//! Redis's side of the cluster: the names of a cluster's keys and channels, the Lua scripts that are its only
//! writers, and the parsing of their replies.

pub(crate) mod keys;
pub(crate) mod parse;
pub(crate) mod scripts;
