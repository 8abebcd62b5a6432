//! Users and their links, as data: the registry of users, the connections and what each is linked to, the messages
//! kept for unlinked users. What acts on them through the server (link requests, applying join, link, unlink and
//! leave with their events) is in `server/`.

pub(crate) mod connections;
pub(crate) mod kept;
pub(crate) mod log_limit;
pub(crate) mod origins;
pub(crate) mod registry;
