//! emitter-redis against real `redis-server` processes (see `support`): one test binary, one Redis per test.

mod support;

mod blocking;
mod faults;
mod forks;
mod journal;
mod leases;
mod membership;
mod messages;
mod nodes;
mod recovery;
mod retention;
mod sentinel;
mod startup;
