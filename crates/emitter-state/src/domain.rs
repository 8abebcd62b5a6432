//! The lock of one domain: what orders a model's changes and the catch-up of linking users.
//!
//! The core runs the `message` listeners of different users in parallel and the membership listeners (`link`,
//! `unlink`, `leave`) on a path of their own, so a model's state changes and the catch-up a linking user gets would
//! interleave without a lock. Each model holds its domain's lock while it computes what to send *and* while it sends
//! it: `send` and `broadcast` only queue frames, never run a listener and never block, so holding the lock across them
//! cannot deadlock, and the order in which frames reach one connection is then the order of the lock.
//!
//! The lock is reentrant with a `RefCell` inside, so that a handler, mapper or `with_state` closure that calls back
//! into its own model on the same thread gets [`Error::Busy`] instead of deadlocking.

use std::cell::RefCell;

use parking_lot::ReentrantMutex;

use crate::Error;

pub(crate) struct Domain<T> {
    cell: ReentrantMutex<RefCell<T>>,
}

impl<T> Domain<T> {
    pub(crate) fn new(value: T) -> Self {
        Domain {
            cell: ReentrantMutex::new(RefCell::new(value)),
        }
    }

    /// Runs `f` with the domain held and its value borrowed mutably.
    pub(crate) fn with_mut<R>(&self, f: impl FnOnce(&mut T) -> R) -> Result<R, Error> {
        let guard = self.cell.lock();
        let mut value = guard.try_borrow_mut().map_err(|_| Error::Busy)?;
        Ok(f(&mut value))
    }

    /// Runs `f` with the domain held and its value borrowed. Calls nested in `f` may read too, but not change.
    pub(crate) fn with<R>(&self, f: impl FnOnce(&T) -> R) -> Result<R, Error> {
        let guard = self.cell.lock();
        let value = guard.try_borrow().map_err(|_| Error::Busy)?;
        Ok(f(&value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nested_change_is_busy_instead_of_a_deadlock() {
        let domain = Domain::new(1);
        assert_eq!(domain.with_mut(|_| domain.with(|v| *v)), Ok(Err(Error::Busy)));
        assert_eq!(domain.with(|_| domain.with_mut(|v| *v)), Ok(Err(Error::Busy)));
        assert_eq!(domain.with(|_| domain.with(|v| *v)), Ok(Ok(1)));
    }
}
