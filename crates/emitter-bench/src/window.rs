//! A broadcast sender's window across load processes.
//!
//! A broadcast is in flight until every user has it, wherever that user's connection lives: if the window counted
//! only the users in the sender's own process, a load process that fell a little behind (descheduled for a few
//! milliseconds, say) would let the server queue frames for its users without bound, until the server closed them as
//! slow consumers, and the run would measure that policy instead of throughput. So every worker process publishes,
//! once a millisecond, how many of each sender's messages its slowest user has received, and reads what the others
//! published: a small file that the runner creates, one row per worker, one slot per sender.
//!
//! Each slot holds the count and its bitwise complement, written together with one `pwrite`; a read that catches a
//! write half done (the two do not match) is ignored, and the previous value stays. A millisecond of staleness only
//! makes the window slightly more conservative.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// Bytes per slot: the count and its complement.
const SLOT: usize = 16;

/// Where a worker publishes, as the runner tells it.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct BoardSpec {
    /// The shared file (the runner creates it, zero-filled, and removes it).
    pub path: PathBuf,
    /// This worker's row.
    pub worker: u32,
    /// Rows in all.
    pub workers: u32,
}

/// Creates the shared file for `workers` processes and `senders` senders; slots start out invalid (all zero), which
/// reads as "nothing published yet".
pub fn create(path: &Path, workers: u32, senders: u32) -> std::io::Result<()> {
    let file = File::create(path)?;
    file.set_len((workers as usize * senders as usize * SLOT) as u64)
}

/// One worker's view of the board.
pub struct Board {
    file: File,
    worker: usize,
    workers: usize,
    senders: usize,
    /// Per sender: how many of its messages the slowest user of every other process has received (0 until each has
    /// published).
    remote: Vec<AtomicU64>,
}

impl Board {
    pub fn open(spec: &BoardSpec, senders: usize) -> std::io::Result<Board> {
        let file = std::fs::OpenOptions::new().read(true).write(true).open(&spec.path)?;
        Ok(Board {
            file,
            worker: spec.worker as usize,
            workers: spec.workers as usize,
            senders,
            remote: (0..senders).map(|_| AtomicU64::new(0)).collect(),
        })
    }

    /// What the other processes last published for `sender` (its index among the senders).
    pub fn remote(&self, sender: usize) -> u64 {
        self.remote.get(sender).map_or(0, |slot| slot.load(Ordering::Relaxed))
    }

    /// Publishes this process's slowest counts (one per sender) and takes in the others'.
    pub fn exchange(&self, local: &[u64]) -> std::io::Result<()> {
        let row: Vec<u8> = local
            .iter()
            .flat_map(|count| count.to_le_bytes().into_iter().chain((!count).to_le_bytes()))
            .collect();
        self.file
            .write_all_at(&row, (self.worker * self.senders * SLOT) as u64)?;
        let mut all = vec![0u8; self.workers * self.senders * SLOT];
        self.file.read_exact_at(&mut all, 0)?;
        for (sender, remote) in self.remote.iter().enumerate() {
            let mut slowest = u64::MAX;
            for worker in (0..self.workers).filter(|worker| *worker != self.worker) {
                match decode(&all, (worker * self.senders + sender) * SLOT) {
                    Some(count) => slowest = slowest.min(count),
                    // Not published yet, or caught mid-write: keep what we had.
                    None => {
                        slowest = remote.load(Ordering::Relaxed);
                        break;
                    }
                }
            }
            remote.store(slowest, Ordering::Relaxed);
        }
        Ok(())
    }
}

fn decode(bytes: &[u8], at: usize) -> Option<u64> {
    let word = |at: usize| Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?));
    let (count, check) = (word(at)?, word(at + 8)?);
    (check == !count).then_some(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_process_sees_the_slowest_of_the_others() {
        let path = std::env::temp_dir().join(format!("emitter-bench-window-test-{}", std::process::id()));
        create(&path, 3, 2).expect("create");
        let boards: Vec<Board> = (0..3)
            .map(|worker| {
                let spec = BoardSpec {
                    path: path.clone(),
                    worker,
                    workers: 3,
                };
                Board::open(&spec, 2).expect("open")
            })
            .collect();
        boards[0].exchange(&[5, 7]).expect("exchange");
        // Worker 2 has not published: worker 0 keeps its initial 0.
        assert_eq!((boards[0].remote(0), boards[0].remote(1)), (0, 0));
        boards[1].exchange(&[3, 9]).expect("exchange");
        boards[2].exchange(&[4, u64::MAX]).expect("exchange");
        boards[0].exchange(&[5, 7]).expect("exchange");
        assert_eq!((boards[0].remote(0), boards[0].remote(1)), (3, 9));
        assert_eq!((boards[2].remote(0), boards[2].remote(1)), (3, 7));
        let _ = std::fs::remove_file(&path);
    }
}
