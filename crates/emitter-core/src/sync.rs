//! The locks behind the message path and the membership path, in one place, so that a concurrency checker can take
//! them over.
//!
//! Normally these are parking_lot's. With the test-only `shuttle` feature they are built on
//! [shuttle](https://docs.rs/shuttle)'s, whose scheduler then explores the interleavings of the hand-offs between
//! them (`tests/shuttle.rs`); nothing else changes.

#[cfg(not(feature = "shuttle"))]
pub(crate) use parking_lot::{Mutex, ReentrantMutex, RwLock};

#[cfg(feature = "shuttle")]
pub(crate) use checked::{Mutex, ReentrantMutex, RwLock};

#[cfg(feature = "shuttle")]
mod checked {
    use std::ops::Deref;
    use std::sync::PoisonError;

    use shuttle::sync::{Condvar, MutexGuard, RwLockReadGuard, RwLockWriteGuard};
    use shuttle::thread::ThreadId;

    /// A mutex with parking_lot's interface (no poisoning), on shuttle's.
    #[derive(Default)]
    pub(crate) struct Mutex<T>(shuttle::sync::Mutex<T>);

    impl<T> Mutex<T> {
        pub(crate) fn new(value: T) -> Self {
            Mutex(shuttle::sync::Mutex::new(value))
        }

        pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
            self.0.lock().unwrap_or_else(PoisonError::into_inner)
        }
    }

    /// A read-write lock with parking_lot's interface, on shuttle's.
    #[derive(Default)]
    pub(crate) struct RwLock<T>(shuttle::sync::RwLock<T>);

    impl<T> RwLock<T> {
        pub(crate) fn new(value: T) -> Self {
            RwLock(shuttle::sync::RwLock::new(value))
        }

        pub(crate) fn read(&self) -> RwLockReadGuard<'_, T> {
            self.0.read().unwrap_or_else(PoisonError::into_inner)
        }

        pub(crate) fn write(&self) -> RwLockWriteGuard<'_, T> {
            self.0.write().unwrap_or_else(PoisonError::into_inner)
        }
    }

    /// A re-entrant mutex (shuttle has none): an owner and a depth behind a mutex, and a condition variable to wait
    /// for the owner to let go.
    pub(crate) struct ReentrantMutex<T> {
        owner: shuttle::sync::Mutex<(Option<ThreadId>, usize)>,
        released: Condvar,
        value: T,
    }

    pub(crate) struct ReentrantMutexGuard<'a, T> {
        lock: &'a ReentrantMutex<T>,
    }

    impl<T> ReentrantMutex<T> {
        pub(crate) fn new(value: T) -> Self {
            ReentrantMutex {
                owner: shuttle::sync::Mutex::new((None, 0)),
                released: Condvar::new(),
                value,
            }
        }

        pub(crate) fn lock(&self) -> ReentrantMutexGuard<'_, T> {
            let me = shuttle::thread::current().id();
            let mut owner = self.owner.lock().unwrap_or_else(PoisonError::into_inner);
            while owner.0.is_some_and(|holder| holder != me) {
                owner = self.released.wait(owner).unwrap_or_else(PoisonError::into_inner);
            }
            *owner = (Some(me), owner.1 + 1);
            ReentrantMutexGuard { lock: self }
        }

        pub(crate) fn try_lock(&self) -> Option<ReentrantMutexGuard<'_, T>> {
            let me = shuttle::thread::current().id();
            let mut owner = self.owner.lock().unwrap_or_else(PoisonError::into_inner);
            if owner.0.is_some_and(|holder| holder != me) {
                return None;
            }
            *owner = (Some(me), owner.1 + 1);
            Some(ReentrantMutexGuard { lock: self })
        }
    }

    impl<T> Deref for ReentrantMutexGuard<'_, T> {
        type Target = T;
        fn deref(&self) -> &T {
            &self.lock.value
        }
    }

    impl<T> Drop for ReentrantMutexGuard<'_, T> {
        fn drop(&mut self) {
            let mut owner = self.lock.owner.lock().unwrap_or_else(PoisonError::into_inner);
            owner.1 -= 1;
            if owner.1 == 0 {
                owner.0 = None;
                self.lock.released.notify_all();
            }
        }
    }
}
