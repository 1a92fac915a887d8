//! The simulation tier: many seeds of the metadata Raft group under turmoil, on simulated
//! time and network with the in-memory store (see `lauscha_metadata::sim`), each history
//! checked for per-key linearizability here, with the same checker as the real-process
//! scenarios.

use std::collections::BTreeMap;
use std::time::Instant;

use lauscha_metadata::sim::{self, SimConfig, SimOpKind};

use crate::check::{self, RegKind, RegOp};
use crate::payload::ValueId;

/// What a batch of seeds found.
#[derive(Clone, Debug, Default)]
pub struct SimSummary {
    /// First seed.
    pub first_seed: u64,
    /// Seeds run.
    pub seeds: u64,
    /// Client operations over all seeds.
    pub ops: u64,
    /// Of which answered.
    pub acked: u64,
    /// Entries committed over all seeds.
    pub committed: u64,
    /// Fault changes over all seeds.
    pub faults: u64,
    /// Voter crashes among them.
    pub crashes: u64,
    /// Snapshots a leader sent to a voter that was too far behind for its log.
    pub snapshots_installed: u64,
    /// Problems, each naming its seed.
    pub problems: Vec<String>,
    /// Seeds with a problem.
    pub failed_seeds: Vec<u64>,
    /// Wall time, s.
    pub run_s: f64,
}

impl SimSummary {
    /// Whether every seed passed.
    pub fn passed(&self) -> bool {
        self.failed_seeds.is_empty()
    }
}

/// Runs seeds `first..first + n`. Blocking (turmoil steps its own runtimes): call it off
/// the async threads.
pub fn run_seeds(first: u64, n: u64) -> SimSummary {
    run_seeds_with(first, n, false)
}

fn run_seeds_with(first: u64, n: u64, stale_reads: bool) -> SimSummary {
    let started = Instant::now();
    let mut summary = SimSummary {
        first_seed: first,
        seeds: n,
        ..SimSummary::default()
    };
    for seed in first..first + n {
        let problems = run_seed(seed, stale_reads, &mut summary);
        if !problems.is_empty() {
            summary.failed_seeds.push(seed);
            summary
                .problems
                .extend(problems.into_iter().map(|p| format!("seed {seed}: {p}")));
        }
    }
    summary.run_s = started.elapsed().as_secs_f64();
    summary
}

fn run_seed(seed: u64, stale_reads: bool, summary: &mut SimSummary) -> Vec<String> {
    let config = SimConfig {
        stale_reads,
        ..SimConfig::standard(seed)
    };
    let outcome = match sim::run(&config) {
        Ok(o) => o,
        Err(e) => return vec![format!("run failed: {e}")],
    };
    summary.ops += outcome.ops.len() as u64;
    summary.acked += outcome
        .ops
        .iter()
        .filter(|o| o.complete_ns.is_some())
        .count() as u64;
    summary.committed += outcome.committed;
    summary.faults += outcome.faults;
    summary.crashes += outcome.crashes;
    summary.snapshots_installed += outcome.snapshots_installed;
    let mut problems = outcome.violations;
    let mut by_key: BTreeMap<u64, Vec<RegOp>> = BTreeMap::new();
    for op in &outcome.ops {
        by_key.entry(op.key).or_default().push(RegOp {
            invoke_ns: op.invoke_ns,
            complete_ns: op.complete_ns,
            kind: match op.kind {
                SimOpKind::Write(v) => RegKind::Put(ValueId(v)),
                SimOpKind::Read(v) => RegKind::Get(v.map(ValueId)),
            },
        });
    }
    for (key, ops) in &by_key {
        if !check::linearizable(ops) {
            problems.push(format!(
                "register {key} is not linearizable ({} ops)",
                ops.len()
            ));
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_simulation_passes_and_catches_stale_reads() {
        let good = run_seeds(7, 3);
        assert!(good.passed(), "{:?}", good.problems);
        assert!(good.acked > 100);
        // Reads of a voter's local state, without Raft's check that it is current, must
        // be seen as non-linearizable in at least one of these seeds.
        let broken = run_seeds_with(7, 10, true);
        assert!(!broken.passed(), "stale reads went unnoticed");
        assert!(
            broken
                .problems
                .iter()
                .any(|p| p.contains("not linearizable"))
        );
    }
}
