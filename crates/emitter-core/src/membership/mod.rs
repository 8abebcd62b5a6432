//! Users and their links: the registry of users, the connections and what each is linked to, link requests, and
//! applying a membership change (join, link, unlink, leave) with its events.

pub(crate) mod changes;
pub(crate) mod connections;
pub(crate) mod kept;
pub(crate) mod link;
pub(crate) mod log_limit;
pub(crate) mod registry;
