//! Checkpoints of a cluster, taken by every process at one frontier without the processes
//! talking to each other beyond the dataflow itself.
//!
//! # The grid
//! Checkpoints are taken only at *boundaries*: multiples of the grid step in ingestion time
//! ([`Config::checkpoint_grid_ms`](crate::config::Config::checkpoint_grid_ms)). Whether a
//! boundary is a checkpoint is decided by global worker 0 (process 0's first worker): when its
//! process asks ([`Feeders::request_checkpoint`](crate::Feeders::request_checkpoint)), it
//! records, on a small `requests` input broadcast to every worker, the first boundary after its
//! own input time. Only worker 0 holds that input, so its frontier on every worker is worker
//! 0's input time, and a request for boundary `b` is inserted before `b`.
//!
//! # The rule every worker follows ([`Gate`])
//! - A worker takes input at time `t` only once every boundary `≤ t` is *decided*, and moves its
//!   input to `t` only once every boundary `< t` is: a boundary `b` is decided when the requests
//!   stream has passed `b` (every request for `b` has arrived), or at once on worker 0 (which
//!   made them).
//! - At a requested boundary the worker moves its input to `b`, runs until every view has
//!   passed `b`, saves its operators' states with the source positions of the input it took
//!   (they travel with the batches, [`Feeder::mark`](crate::Feeder::mark)), hands the
//!   [`Section`] to its process's collector, and waits until the collector has read the views
//!   at `b` ([`Aligned::release`]).
//! - Nor does it take input at or after `b` before *every* worker of the cluster has saved there:
//!   a small `saved` input per worker, moved past `b` once it has saved, tells when all have
//!   (a probe on it). Without that, a process that learned first that the views had passed `b`
//!   would go on, and its records would reach a worker of another process that had not saved
//!   yet, which would save them with its state: counted again after a restart.
//! - So every worker of every process saves at the same `b`, with exactly the input before it:
//!   one consistent frontier, with no process holding its Kafka consumers.
//!
//! Workers other than worker 0 can run at most one grid step ahead of worker 0's input time;
//! a jump over many boundaries (a first start, an idle gap) costs one step, not one per
//! boundary.
//!
//! # Starting again ([`agree_frontier`])
//! Each process keeps its own checkpoints. Before the engine starts, the processes run a small
//! timely computation on the cluster's addresses that finds the newest frontier every process
//! has whole; each starts from its own file at that frontier.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::mpsc::Receiver;

use crate::config::Config;
use crate::engine::EngineError;
use crate::operators::Time;
use vendflow_protocol::Timestamp;

/// Source positions: the next offset to read per (topic, partition), for the input a worker
/// has taken.
pub type Positions = BTreeMap<(String, i32), i64>;

/// One worker's part of a cluster checkpoint.
#[derive(Debug)]
pub struct Section {
    /// The boundary it was taken at.
    pub at: Time,
    /// The worker's index within its process.
    pub worker: usize,
    /// Its operators' states.
    pub state: crate::checkpoint::Section,
    /// Global worker 0's clock hour as of `at` (None on other workers).
    pub hour: Option<Option<Time>>,
    /// The positions of the input it took before `at`.
    pub positions: Positions,
}

/// A process's end of its workers' cluster checkpoints: their sections, and the release that
/// lets them go on.
pub struct Aligned {
    pub sections: Receiver<Section>,
    released: Arc<AtomicI64>,
}

impl Aligned {
    pub(crate) fn new(sections: Receiver<Section>, released: Arc<AtomicI64>) -> Aligned {
        Aligned { sections, released }
    }

    /// Lets the workers waiting at `at` go on (the views have been read, or the checkpoint was
    /// given up).
    pub fn release(&self, at: Time) {
        self.released.fetch_max(at.ms(), Ordering::SeqCst);
    }
}

/// Tests only: cluster processes, by their own address, whose workers keep running their
/// dataflow this long between reaching a boundary and saving there.
#[cfg(test)]
pub(crate) static SLOW_SAVES: std::sync::Mutex<Vec<(String, std::time::Duration)>> =
    std::sync::Mutex::new(Vec::new());

/// How long this process's workers linger before saving at a boundary ([`SLOW_SAVES`]; always
/// zero outside tests).
pub(crate) fn slow_save(config: &Config) -> std::time::Duration {
    #[cfg(test)]
    if let Some(cluster) = &config.cluster
        && let Some(ours) = cluster.addresses.get(cluster.process)
        && let Ok(slow) = SLOW_SAVES.lock()
        && let Some((_, d)) = slow.iter().find(|(a, _)| a == ours)
    {
        return *d;
    }
    let _ = config;
    std::time::Duration::ZERO
}

/// The first boundary of `step` after `t` (strictly).
pub fn next_boundary(t: Time, step: i64) -> Time {
    let step = step.max(1);
    Timestamp(
        t.ms()
            .div_euclid(step)
            .saturating_add(1)
            .saturating_mul(step),
    )
}

/// What a worker needs to pass a boundary: see the module's rule.
pub(crate) struct Gate {
    pub step: i64,
    /// Every boundary at or before it is decided (and saved, when requested).
    pub decided_through: Time,
    /// Requested boundaries seen (on worker 0 also the ones it made).
    pub asked: std::rc::Rc<std::cell::RefCell<BTreeSet<Time>>>,
    /// Whether this is global worker 0 (it decides).
    pub decides: bool,
    pub released: Arc<AtomicI64>,
}

/// What the gate tells the worker to do next.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Next {
    /// Every boundary the input needs is decided: go on.
    Pass,
    /// Save at this requested boundary (move the input to it first).
    Save(Time),
    /// Wait for the requests stream to pass this boundary (the input may move to it).
    Wait(Time),
}

impl Gate {
    /// Decides what it can for input that must have every boundary `≤ need` decided; `known`
    /// is the requests stream's frontier (None: closed, everything is known).
    pub fn next(&mut self, need: Time, known: Option<Time>) -> Next {
        loop {
            if self.decided_through >= need {
                return Next::Pass;
            }
            let first = next_boundary(self.decided_through, self.step);
            if first > need {
                self.decided_through = need;
                return Next::Pass;
            }
            // Every boundary `≤ horizon` is known: a request for `b` is inserted before `b`.
            let horizon = match known {
                _ if self.decides => need,
                None => need,
                Some(f) => need.min(f),
            };
            if horizon < first {
                return Next::Wait(first);
            }
            let requested = self.asked.borrow().range(first..=horizon).next().copied();
            match requested {
                Some(b) => return Next::Save(b),
                None => self.decided_through = horizon,
            }
        }
    }

    /// The boundary `b` is saved (or given up): it and every request before it are done.
    pub fn saved(&mut self, b: Time) {
        self.decided_through = self.decided_through.max(b);
        let mut asked = self.asked.borrow_mut();
        let later = asked.split_off(&Timestamp(b.ms().saturating_add(1)));
        *asked = later;
    }

    pub fn released(&self, b: Time) -> bool {
        self.released.load(Ordering::SeqCst) >= b.ms()
    }
}

/// The newest checkpoint frontier every process of `config`'s cluster has, from each process's
/// `candidates` (its whole checkpoints): a short timely computation over the cluster's
/// addresses, run before the engine starts on them. None when there is no common one (or no
/// cluster: then the newest candidate).
pub fn agree_frontier(config: &Config, candidates: &[Time]) -> Result<Option<Time>, EngineError> {
    let Some(cluster) = &config.cluster else {
        return Ok(candidates.iter().max().copied());
    };
    let workers = config.workers.max(1);
    let processes = cluster.addresses.len();
    let process = cluster.process;
    let ours: Vec<i64> = candidates.iter().map(|t| t.ms()).collect();
    let timely_config = timely::Config {
        communication: timely::CommunicationConfig::Cluster {
            threads: workers,
            process,
            addresses: cluster.addresses.clone(),
            report: false,
            zerocopy: false,
        },
        worker: timely::WorkerConfig::default(),
    };
    let guards = timely::execute(timely_config, move |worker| {
        use timely::dataflow::InputHandleVec;
        use timely::dataflow::operators::vec::{Broadcast, Input};
        use timely::dataflow::operators::{Inspect, Probe};
        let seen = std::rc::Rc::new(std::cell::RefCell::new(Vec::<(usize, Vec<i64>)>::new()));
        let mut input = InputHandleVec::<u64, (usize, Vec<i64>)>::new();
        let probe = {
            let seen = seen.clone();
            worker.dataflow::<u64, _, _>(|scope| {
                scope
                    .input_from(&mut input)
                    .broadcast()
                    .inspect(move |x: &(usize, Vec<i64>)| seen.borrow_mut().push(x.clone()))
                    .probe()
                    .0
            })
        };
        if worker.index() % workers == 0 {
            input.send((process, ours.clone()));
        }
        input.close();
        while !probe.done() {
            worker.step_or_park(Some(std::time::Duration::from_millis(1)));
        }
        let seen = seen.borrow();
        common_newest(processes, &seen)
    })
    .map_err(|e| EngineError::Start(format!("cannot reach the cluster's other processes: {e}")))?;
    let mut answers = guards.join().into_iter();
    match answers.next() {
        Some(Ok(Ok(answer))) => Ok(answer.map(Timestamp)),
        Some(Ok(Err(e))) => Err(EngineError::Restore(e)),
        Some(Err(e)) => Err(EngineError::Worker(e)),
        None => Err(EngineError::Start("no worker ran".into())),
    }
}

/// The newest frontier in every process's list; an error unless each of `processes` spoke once.
fn common_newest(processes: usize, seen: &[(usize, Vec<i64>)]) -> Result<Option<i64>, String> {
    let mut by_process: BTreeMap<usize, &Vec<i64>> = BTreeMap::new();
    for (p, list) in seen {
        if by_process.insert(*p, list).is_some() {
            return Err(format!(
                "process {p} spoke twice: two processes run with --process {p}"
            ));
        }
    }
    if by_process.len() != processes || by_process.keys().any(|p| *p >= processes) {
        return Err(format!(
            "{} of {processes} processes answered",
            by_process.len()
        ));
    }
    let mut lists = by_process.values();
    let Some(first) = lists.next() else {
        return Ok(None);
    };
    let mut common: BTreeSet<i64> = first.iter().copied().collect();
    for list in lists {
        let theirs: BTreeSet<i64> = list.iter().copied().collect();
        common = common.intersection(&theirs).copied().collect();
    }
    Ok(common.last().copied())
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::rc::Rc;
    use std::time::Duration;

    use super::*;

    fn gate(decides: bool, asked: &[i64]) -> Gate {
        Gate {
            step: 10,
            decided_through: Timestamp(0),
            asked: Rc::new(RefCell::new(asked.iter().map(|t| Timestamp(*t)).collect())),
            decides,
            released: Arc::new(AtomicI64::new(0)),
        }
    }

    #[test]
    fn boundaries_are_multiples_of_the_step_strictly_after() {
        assert_eq!(next_boundary(Timestamp(0), 10), Timestamp(10));
        assert_eq!(next_boundary(Timestamp(9), 10), Timestamp(10));
        assert_eq!(next_boundary(Timestamp(10), 10), Timestamp(20));
    }

    #[test]
    fn a_worker_waits_for_the_requests_to_pass_a_boundary_then_saves_where_asked() {
        let mut g = gate(false, &[]);
        // Nothing known yet: it may move to 10 but not past it.
        assert_eq!(
            g.next(Timestamp(35), Some(Timestamp(3))),
            Next::Wait(Timestamp(10))
        );
        // Worker 0 is at 25: boundaries 10 and 20 are decided (not asked), 30 is not known.
        assert_eq!(
            g.next(Timestamp(35), Some(Timestamp(25))),
            Next::Wait(Timestamp(30))
        );
        assert_eq!(g.decided_through, Timestamp(25));
        // A request for 30 arrives (inserted at 25) and the requests pass 31.
        g.asked.borrow_mut().insert(Timestamp(30));
        assert_eq!(
            g.next(Timestamp(35), Some(Timestamp(31))),
            Next::Save(Timestamp(30))
        );
        g.saved(Timestamp(30));
        // No boundary between 30 and 35.
        assert_eq!(g.next(Timestamp(35), Some(Timestamp(31))), Next::Pass);
        // Input at 40 needs boundary 40 decided; a move to 40 (need 39) does not.
        assert_eq!(g.next(Timestamp(39), Some(Timestamp(31))), Next::Pass);
        assert_eq!(
            g.next(Timestamp(40), Some(Timestamp(31))),
            Next::Wait(Timestamp(40))
        );
        // A closed requests stream decides everything.
        assert_eq!(g.next(Timestamp(1_000), None), Next::Pass);
    }

    #[test]
    fn worker_0_knows_its_own_requests_and_a_jump_costs_no_step_per_boundary() {
        let mut g = gate(true, &[1_000_000_000]);
        assert_eq!(
            g.next(Timestamp(2_000_000_000), Some(Timestamp(0))),
            Next::Save(Timestamp(1_000_000_000))
        );
        g.saved(Timestamp(1_000_000_000));
        assert!(g.asked.borrow().is_empty());
        assert_eq!(
            g.next(Timestamp(2_000_000_000), Some(Timestamp(0))),
            Next::Pass
        );
    }

    /// Runs seed's random stream on a cluster restarted from a checkpoint in its middle
    /// ([`crate::testing::run_cluster_restarted`], process 1 slow to save by `slow`), and checks
    /// every view against one process that never stopped.
    fn restarted_cluster_has_the_views_of_one_process(seed: u64, slow: Option<Duration>) {
        use crate::testing::{random_run, rows, run_cluster_restarted, steps};
        let (scenario, whole) = random_run(seed);
        let n = steps(scenario).len();
        let (restarted, at) = run_cluster_restarted(scenario, n / 2, 60_000, slow);
        for def in crate::views::CATALOG {
            assert_eq!(
                rows(&restarted, def.name),
                rows(whole, def.name),
                "seed {seed}, a cluster restarted from its checkpoint at {at} (process 1 slow \
                 to save: {slow:?}): view {}",
                def.name
            );
        }
    }

    /// A cluster of two processes (two workers each) checkpoints in the middle of a random
    /// stream (late, duplicate and out-of-order events of every kind, registry, commands,
    /// errors) while its input goes on, stops, agrees on where to start, and starts again from
    /// each process's state: every view ends as in one process that never stopped.
    #[test]
    fn a_cluster_restarted_from_its_checkpoint_ends_with_the_views_of_one_process_never_stopped() {
        for seed in [1, 4] {
            restarted_cluster_has_the_views_of_one_process(seed, None);
        }
    }

    /// The race behind a flaky run of the test above under load: process 0 learns first that
    /// the views passed the boundary, its collector lets its workers go on, and their records
    /// reach process 1's workers before those have saved. Here process 1 is made slow to save
    /// on purpose; no input after the boundary may end up in its state. (Without the `saved`
    /// barrier this fails every time, with the flaky run's signature: two more sale
    /// duplicates.)
    #[test]
    fn a_process_slow_to_save_saves_nothing_another_process_took_after_the_boundary() {
        restarted_cluster_has_the_views_of_one_process(1, Some(Duration::from_millis(500)));
    }

    #[test]
    fn the_newest_frontier_every_process_has_is_chosen() {
        let seen = vec![(1, vec![10, 20, 30]), (0, vec![20, 30, 40])];
        assert_eq!(common_newest(2, &seen), Ok(Some(30)));
        let none = vec![(0, vec![40]), (1, vec![30])];
        assert_eq!(common_newest(2, &none), Ok(None));
        assert!(common_newest(3, &seen).is_err(), "a process did not answer");
        let twice = vec![(0, vec![1]), (0, vec![1])];
        assert!(common_newest(2, &twice).is_err_and(|e| e.contains("twice")));
    }
}
