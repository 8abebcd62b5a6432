//! The servers under test and how a run starts them: the targets, their processes (pinned when asked, read from
//! /proc), the throwaway `redis-server` of a cluster, and the bare axum baseline this binary serves itself.

pub mod baseline;
pub mod process;
pub mod redis;
pub mod target;
