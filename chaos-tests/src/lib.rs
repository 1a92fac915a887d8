//! The chaos suite: builds a two-site cluster of real `lauscha` processes in network
//! namespaces, runs a self-checking S3 and NBD workload, injects faults on a schedule
//! derived from a seed, checks the recorded history and prints a verdict.
//!
//! Map: [`topology`] (namespaces, links, partitions), [`proxy`] (the same faults on
//! 127.0.0.0/8, for runs without namespaces), [`wan`] (a delaying, lossy link
//! between the sites), [`cluster`] (configs, processes,
//! signals), [`workload`] (S3 and NBD clients recording a history), [`payload`]
//! (self-verifying bodies, stamped blocks), [`check`] (pure checkers), [`scenario`]
//! (faults, schedules, one run), [`report`] (the table).

pub mod check;
pub mod cluster;
pub mod payload;
pub mod proxy;
pub mod report;
pub mod scenario;
pub mod simulation;
pub mod topology;
pub mod wan;
pub mod workload;
