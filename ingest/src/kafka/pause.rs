//! Holding every consumer of the Kafka source at one point, so that the engine's state can be
//! taken at a frontier that exactly the consumed offsets produced (a checkpoint).
//!
//! # Lifecycle of a hold
//! 1. The checkpointer calls [`Pause::with_held`]: it raises the request and waits.
//! 2. Each consumer sees the request at the top of its loop (one atomic load per message), hands
//!    its batch to the engine, and *holds* ([`Pause::hold`]): it reports its input time (every
//!    record it sent is at an earlier time) and waits.
//! 3. Once all consumers hold, nothing is in flight between the log and the engine: the
//!    frontier is the latest of their input times, and the closure runs with it (it reads the
//!    source's positions and takes the engine's state at that frontier).
//! 4. The consumers are released with the frontier, move their inputs to it, and go on.
//!
//! A consumer that has stopped never holds: the checkpointer gives up after its timeout and
//! releases the others without a frontier. A consumer that arrives after a hold was given up
//! does not wait.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use vendflow_dataflows::Time;

/// Why a hold did not happen.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PauseError {
    #[error("the kafka source has no consumers running")]
    NoConsumers,
    #[error("{held} of {consumers} kafka consumers held within {timeout:?}")]
    Timeout {
        held: usize,
        consumers: usize,
        timeout: Duration,
    },
    #[error("the service is stopping")]
    Stopping,
}

/// See the module's documentation. Shared by the source's consumers and the checkpointer.
#[derive(Default, Debug)]
pub struct Pause {
    /// Mirrors `Round::requested`, for the consumers' fast path.
    requested: AtomicBool,
    round: Mutex<Round>,
    changed: Condvar,
}

#[derive(Default, Debug)]
struct Round {
    consumers: usize,
    requested: bool,
    /// The input times of the consumers holding in this round.
    held: Vec<Time>,
    /// Counts releases; a holding consumer waits for it to change.
    generation: u64,
    /// The frontier of the latest release (None: given up).
    released_at: Option<Time>,
}

impl Pause {
    fn lock(&self) -> MutexGuard<'_, Round> {
        self.round.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The number of consumers a hold waits for (set by the source when it starts them).
    pub(crate) fn set_consumers(&self, consumers: usize) {
        self.lock().consumers = consumers;
    }

    /// Whether the checkpointer asks the consumers to hold.
    pub(crate) fn requested(&self) -> bool {
        self.requested.load(Ordering::Acquire)
    }

    /// A consumer holds: its input is at `time` (all it sent is before it). Waits until released;
    /// the frontier every consumer moves its input to, or None when the hold was given up (or
    /// there is no hold to join).
    pub(crate) fn hold(&self, time: Time, stop: &AtomicBool) -> Option<Time> {
        let mut round = self.lock();
        if !round.requested {
            return None;
        }
        let generation = round.generation;
        round.held.push(time);
        self.changed.notify_all();
        while round.generation == generation {
            if stop.load(Ordering::SeqCst) {
                return None;
            }
            round = self
                .changed
                .wait_timeout(round, Duration::from_millis(50))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        round.released_at
    }

    /// Holds every consumer (waiting at most `timeout`), runs `f` with the frontier, releases
    /// them; `f`'s result with the frontier.
    pub fn with_held<R>(
        &self,
        timeout: Duration,
        stop: &AtomicBool,
        f: impl FnOnce(Time) -> R,
    ) -> Result<(Time, R), PauseError> {
        let deadline = Instant::now() + timeout;
        let mut round = self.lock();
        if round.consumers == 0 {
            return Err(PauseError::NoConsumers);
        }
        round.held.clear();
        round.requested = true;
        self.requested.store(true, Ordering::Release);
        while round.held.len() < round.consumers {
            let now = Instant::now();
            let failed = if stop.load(Ordering::SeqCst) {
                Some(PauseError::Stopping)
            } else if now >= deadline {
                Some(PauseError::Timeout {
                    held: round.held.len(),
                    consumers: round.consumers,
                    timeout,
                })
            } else {
                None
            };
            if let Some(e) = failed {
                self.release(round, None);
                return Err(e);
            }
            let wait = (deadline - now).min(Duration::from_millis(50));
            round = self
                .changed
                .wait_timeout(round, wait)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        let at = round.held.iter().copied().max().unwrap_or(Time::EPOCH);
        // Nobody joins a hold once everyone is in; the consumers wait on the condition
        // variable without the lock while `f` runs.
        round.requested = false;
        self.requested.store(false, Ordering::Release);
        drop(round);
        let result = f(at);
        self.release(self.lock(), Some(at));
        Ok((at, result))
    }

    fn release(&self, mut round: MutexGuard<'_, Round>, at: Option<Time>) {
        round.requested = false;
        self.requested.store(false, Ordering::Release);
        round.held.clear();
        round.released_at = at;
        round.generation += 1;
        self.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use vendflow_protocol::Timestamp;

    use super::*;

    /// Consumers that hold whenever asked, at input times 10, 20, 30; each records the
    /// frontier it was released with.
    fn consumers(
        pause: &Arc<Pause>,
        stop: &Arc<AtomicBool>,
        times: &[i64],
    ) -> Vec<std::thread::JoinHandle<Vec<Option<Time>>>> {
        pause.set_consumers(times.len());
        times
            .iter()
            .map(|&t| {
                let (pause, stop) = (pause.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut released = Vec::new();
                    while !stop.load(Ordering::SeqCst) {
                        if pause.requested() {
                            released.push(pause.hold(Timestamp(t), &stop));
                        }
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    released
                })
            })
            .collect()
    }

    #[test]
    fn every_consumer_holds_while_the_closure_runs_and_moves_to_the_latest_time() {
        let (pause, stop) = (Arc::new(Pause::default()), Arc::new(AtomicBool::new(false)));
        let threads = consumers(&pause, &stop, &[10, 30, 20]);
        for _ in 0..3 {
            let (at, held) = pause
                .with_held(Duration::from_secs(10), &stop, |_| {
                    // Nobody is let go while the state is taken.
                    std::thread::sleep(Duration::from_millis(20));
                    pause.lock().held.len()
                })
                .expect("held");
            assert_eq!((at, held), (Timestamp(30), 3));
        }
        stop.store(true, Ordering::SeqCst);
        for t in threads {
            let released = t.join().expect("consumer");
            assert_eq!(released, vec![Some(Timestamp(30)); 3]);
        }
    }

    #[test]
    fn a_consumer_that_never_holds_makes_the_hold_give_up_and_frees_the_others() {
        let (pause, stop) = (Arc::new(Pause::default()), Arc::new(AtomicBool::new(false)));
        let threads = consumers(&pause, &stop, &[10]);
        // Two consumers are expected; only one runs.
        pause.set_consumers(2);
        let e = pause
            .with_held(Duration::from_millis(200), &stop, |_| ())
            .expect_err("one consumer is missing");
        assert_eq!(
            e,
            PauseError::Timeout {
                held: 1,
                consumers: 2,
                timeout: Duration::from_millis(200)
            }
        );
        // The one that held was let go without a frontier, and a late one does not wait.
        assert_eq!(pause.hold(Timestamp(5), &stop), None);
        stop.store(true, Ordering::SeqCst);
        for t in threads {
            assert_eq!(t.join().expect("consumer"), vec![None]);
        }
        assert_eq!(
            Pause::default().with_held(Duration::from_secs(1), &stop, |_| ()),
            Err(PauseError::NoConsumers)
        );
    }
}
