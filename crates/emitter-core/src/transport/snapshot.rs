//! A newcomer's snapshot of the users, as one frame of its own.

use std::fmt;
use std::sync::Arc;

use crate::protocol::Frame;

/// A newcomer's snapshot of the users: for each user in join order its `krmx/joined` frame and, if the user is linked,
/// its `krmx/linked` frame, ending with the newcomer itself.
///
/// It holds one shared pointer per user rather than a frame per message: during a link storm every newcomer's snapshot
/// waits in its queue until the client has read it, and the memory those take at once is what the server's heap grows
/// to (and keeps). The frames themselves were serialized once, when each user joined.
pub struct Snapshot {
    entries: Vec<(Arc<UserFrames>, bool)>,
}

/// A user's `krmx/joined` and `krmx/linked` frames, made once when it joins.
pub(crate) struct UserFrames {
    pub(crate) joined: Frame,
    pub(crate) linked: Frame,
}

impl Snapshot {
    pub(crate) fn with_capacity(users: usize) -> Snapshot {
        Snapshot {
            entries: Vec::with_capacity(users),
        }
    }

    pub(crate) fn push(&mut self, user: &Arc<UserFrames>, linked: bool) {
        self.entries.push((user.clone(), linked));
    }

    /// The next frame to write after `cursor`, advancing it.
    pub(crate) fn next(&self, cursor: &mut SnapshotCursor) -> Option<&Frame> {
        loop {
            let (user, linked) = self.entries.get(cursor.user)?;
            if !cursor.joined {
                cursor.joined = true;
                return Some(&user.joined);
            }
            cursor.user += 1;
            cursor.joined = false;
            if *linked {
                return Some(&user.linked);
            }
        }
    }

    /// The frames to write, in order.
    pub fn frames(&self) -> impl Iterator<Item = &Frame> + '_ {
        self.entries
            .iter()
            .flat_map(|(user, linked)| std::iter::once(&user.joined).chain(linked.then_some(&user.linked)))
    }

    /// How many frames [`frames`](Snapshot::frames) yields.
    pub fn len(&self) -> usize {
        self.entries.iter().map(|(_, linked)| 1 + usize::from(*linked)).sum()
    }

    /// Whether there is no frame at all (never, for a real snapshot: it holds the newcomer).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// How far the writing of a [`Snapshot`] got.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct SnapshotCursor {
    user: usize,
    joined: bool,
}

impl fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Snapshot")
            .field("users", &self.entries.len())
            .finish_non_exhaustive()
    }
}
