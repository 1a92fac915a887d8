//! Checkers over a recorded history. Pure: they take what the workload recorded and say
//! what is wrong with it, so that each can be fed a history with a planted violation.
//!
//! Times are nanoseconds on one monotonic clock. A write whose outcome is unknown (a
//! timeout, a reset connection, a 5xx) "maybe happened": it may take effect at any time
//! after its invocation, or never.

use std::collections::{BTreeMap, HashSet};

use crate::payload::{BlockRead, ValueId};

/// One operation on one key, seen as a register.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegOp {
    /// When the client sent it.
    pub invoke_ns: u64,
    /// When the answer came; `None` when the outcome is unknown (writes only).
    pub complete_ns: Option<u64>,
    /// What it did.
    pub kind: RegKind,
}

/// What a register operation did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegKind {
    /// PUT of a value.
    Put(ValueId),
    /// DELETE.
    Delete,
    /// GET that returned a value, or `None` for NoSuchKey.
    Get(Option<ValueId>),
}

impl RegOp {
    fn is_write(&self) -> bool {
        !matches!(self.kind, RegKind::Get(_))
    }

    fn acked(&self) -> bool {
        self.complete_ns.is_some()
    }

    /// Whether `self` finished before `other` began (so it must be ordered first).
    fn precedes(&self, other: &RegOp) -> bool {
        self.complete_ns.is_some_and(|c| c < other.invoke_ns)
    }
}

/// Whether the history of one key is linearizable as a register that starts absent
/// (Wing and Gong's search with memoisation, as in Lowe's and Knossos' checkers). Unknown
/// writes may be left out.
pub fn linearizable(ops: &[RegOp]) -> bool {
    assert!(
        ops.iter().all(|o| o.acked() || o.is_write()),
        "a read without an answer is not recorded"
    );
    // A write without an answer that no read observed may be taken never to have
    // happened, and dropping it changes no verdict: in any linearization that keeps it,
    // no read falls between it and the next write (a read there would have seen it).
    // Without this, the search is exponential in the number of such writes, which a
    // long outage produces by the hundred.
    let read_values: HashSet<ValueId> = ops
        .iter()
        .filter_map(|o| match o.kind {
            RegKind::Get(v) => v,
            _ => None,
        })
        .collect();
    let absent_read_after = |invoke_ns: u64| {
        ops.iter()
            .any(|o| o.kind == RegKind::Get(None) && o.complete_ns.is_some_and(|c| c > invoke_ns))
    };
    let mut ops: Vec<&RegOp> = ops
        .iter()
        .filter(|o| {
            o.acked()
                || match o.kind {
                    RegKind::Put(v) => read_values.contains(&v),
                    RegKind::Delete => absent_read_after(o.invoke_ns),
                    RegKind::Get(_) => true,
                }
        })
        .collect();
    ops.sort_by_key(|o| o.invoke_ns);
    let mut done = vec![false; ops.len()];
    let mut seen = HashSet::new();
    search(&ops, &mut done, None, &mut seen)
}

fn search(
    ops: &[&RegOp],
    done: &mut [bool],
    value: Option<ValueId>,
    seen: &mut HashSet<(Vec<bool>, Option<ValueId>)>,
) -> bool {
    if ops.iter().zip(done.iter()).all(|(o, &d)| d || !o.acked()) {
        return true;
    }
    // An op can go next only if it began before every pending op ended.
    let horizon = ops
        .iter()
        .zip(done.iter())
        .filter(|(_, d)| !**d)
        .filter_map(|(o, _)| o.complete_ns)
        .min()
        .unwrap_or(u64::MAX);
    for i in 0..ops.len() {
        if done[i] || ops[i].invoke_ns > horizon {
            continue;
        }
        // Unanswered deletes are interchangeable but for their start, and an earlier one
        // can stand in for a later one: taking them in invocation order loses no
        // linearization and turns 2^k subsets into k + 1 prefixes.
        if ops[i].kind == RegKind::Delete
            && !ops[i].acked()
            && (0..i).any(|j| !done[j] && ops[j].kind == RegKind::Delete && !ops[j].acked())
        {
            continue;
        }
        let next = match ops[i].kind {
            RegKind::Put(v) => Some(v),
            RegKind::Delete => None,
            RegKind::Get(read) if read == value => value,
            RegKind::Get(_) => continue,
        };
        done[i] = true;
        if seen.insert((done.to_vec(), next)) && search(ops, done, next, seen) {
            return true;
        }
        done[i] = false;
    }
    false
}

/// Acknowledged writes that a final read shows lost: the final read returned what a
/// write finished before the lost one began wrote (or nothing, when no delete could
/// explain it). Values are unique, so the read names its source.
pub fn lost_acked_writes(ops: &[RegOp], final_read: Option<ValueId>) -> Vec<String> {
    let sources: Vec<&RegOp> = ops
        .iter()
        .filter(|o| match (o.kind, final_read) {
            (RegKind::Put(v), Some(r)) => v == r,
            (RegKind::Delete, None) => true,
            _ => false,
        })
        .collect();
    let mut lost = Vec::new();
    for w in ops.iter().filter(|o| o.is_write() && o.acked()) {
        if sources.iter().any(|s| std::ptr::eq(*s, w)) {
            continue;
        }
        // Lost if every write that could have produced the final state finished before w
        // began (the initial, absent state precedes everything).
        if sources.iter().all(|s| s.precedes(w)) {
            lost.push(format!(
                "{:?} acknowledged at {} ns, final read {}",
                w.kind,
                w.complete_ns.unwrap_or(0),
                final_read.map_or("absent".into(), |v| v.to_string())
            ));
        }
    }
    lost
}

/// A LIST and what it returned.
#[derive(Clone, Debug)]
pub struct ListOp {
    /// When it was sent.
    pub invoke_ns: u64,
    /// When the last page came.
    pub complete_ns: u64,
    /// Keys, in the order returned (all pages).
    pub keys: Vec<String>,
}

/// What a key certainly was during a LIST, if anything.
fn settled_state(ops: &[RegOp], list: &ListOp) -> Option<bool> {
    let overlapping: Vec<&RegOp> = ops
        .iter()
        .filter(|o| o.is_write() && o.invoke_ns < list.complete_ns)
        .collect();
    if overlapping.is_empty() {
        return Some(false);
    }
    // The last write, if one finished before the list began and every other write
    // finished before it began.
    overlapping
        .iter()
        .find(|w| {
            w.complete_ns.is_some_and(|c| c < list.invoke_ns)
                && overlapping
                    .iter()
                    .all(|o| std::ptr::eq(*o, **w) || o.precedes(w))
        })
        .map(|w| matches!(w.kind, RegKind::Put(_)))
}

/// LIST consistency: sorted without duplicates, no key that was never written, every key
/// certainly present listed, every key certainly deleted absent.
pub fn list_violations(list: &ListOp, histories: &BTreeMap<String, Vec<RegOp>>) -> Vec<String> {
    let mut problems = Vec::new();
    for pair in list.keys.windows(2) {
        if pair[0] >= pair[1] {
            problems.push(format!(
                "not sorted or duplicated: {:?} then {:?}",
                pair[0], pair[1]
            ));
        }
    }
    let listed: HashSet<&str> = list.keys.iter().map(String::as_str).collect();
    for key in &list.keys {
        if !histories.contains_key(key) {
            problems.push(format!("listed {key:?}, which was never written"));
        }
    }
    for (key, ops) in histories {
        match settled_state(ops, list) {
            Some(true) if !listed.contains(key.as_str()) => {
                problems.push(format!("{key:?} certainly present but not listed"))
            }
            Some(false) if listed.contains(key.as_str()) => {
                problems.push(format!("{key:?} certainly absent but listed"))
            }
            _ => {}
        }
    }
    problems
}

/// NBD blocks read back at the end against what was acknowledged and flushed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BlockVerdict {
    /// Blocks older than their last acknowledged write.
    pub lost_acked: Vec<String>,
    /// Blocks older than their last flushed write (a subset of the above).
    pub lost_flushed: Vec<String>,
    /// Torn blocks or another block's data.
    pub corrupt: Vec<String>,
}

/// Checks blocks read back: each must be whole, its own, and at or after the generation
/// last acknowledged for it (an acknowledged write survives a crash of the server).
/// `acked[i]`, `flushed[i]`: the generations acknowledged and covered by a FLUSH (0 =
/// never written).
pub fn check_blocks(acked: &[u32], flushed: &[u32], read: &[BlockRead]) -> BlockVerdict {
    assert_eq!(acked.len(), read.len());
    assert_eq!(flushed.len(), read.len());
    let mut verdict = BlockVerdict::default();
    for (i, r) in read.iter().enumerate() {
        let generation = match r {
            BlockRead::Zero => 0,
            BlockRead::Generation(g) => *g,
            BlockRead::Torn | BlockRead::Foreign => {
                verdict.corrupt.push(format!("block {i}: {r:?}"));
                continue;
            }
        };
        if generation < acked[i] {
            verdict.lost_acked.push(format!(
                "block {i}: generation {generation}, {} acknowledged",
                acked[i]
            ));
        }
        if generation < flushed[i] {
            verdict.lost_flushed.push(format!(
                "block {i}: generation {generation}, {} flushed",
                flushed[i]
            ));
        }
    }
    verdict
}

/// The longest time without a successful operation within `[start_ns, end_ns]`, given
/// the completion times of successful operations.
pub fn max_unavailability_ns(mut completions: Vec<u64>, start_ns: u64, end_ns: u64) -> u64 {
    completions.retain(|&c| c >= start_ns && c <= end_ns);
    completions.sort_unstable();
    let mut last = start_ns;
    let mut worst = 0;
    for c in completions.into_iter().chain(std::iter::once(end_ns)) {
        worst = worst.max(c - last);
        last = c;
    }
    worst
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(n: u64) -> ValueId {
        ValueId::new(1, n)
    }
    fn put(i: u64, c: Option<u64>, n: u64) -> RegOp {
        RegOp {
            invoke_ns: i,
            complete_ns: c,
            kind: RegKind::Put(v(n)),
        }
    }
    fn get(i: u64, c: u64, n: Option<u64>) -> RegOp {
        RegOp {
            invoke_ns: i,
            complete_ns: Some(c),
            kind: RegKind::Get(n.map(v)),
        }
    }
    fn del(i: u64, c: Option<u64>) -> RegOp {
        RegOp {
            invoke_ns: i,
            complete_ns: c,
            kind: RegKind::Delete,
        }
    }

    #[test]
    fn sequential_and_concurrent_histories_pass() {
        assert!(linearizable(&[]));
        assert!(linearizable(&[
            get(0, 1, None),
            put(2, Some(3), 1),
            get(4, 5, Some(1)),
            del(6, Some(7)),
            get(8, 9, None),
        ]));
        // Overlapping puts: either order explains the reads.
        assert!(linearizable(&[
            put(0, Some(10), 1),
            put(1, Some(9), 2),
            get(11, 12, Some(1)),
        ]));
        // A read during a put may see either state.
        assert!(linearizable(&[
            put(0, Some(3), 1),
            put(4, Some(10), 2),
            get(5, 6, Some(1)),
            get(7, 8, Some(2)),
        ]));
        // A write with an unknown outcome may take effect late, or never.
        assert!(linearizable(&[
            put(0, Some(1), 1),
            put(2, None, 2),
            get(3, 4, Some(1)),
            get(5, 6, Some(2)),
        ]));
        assert!(linearizable(&[
            put(0, Some(1), 1),
            put(2, None, 2),
            get(3, 4, Some(1))
        ]));
    }

    #[test]
    fn many_unanswered_writes_are_checked_quickly() {
        // An outage: hundreds of writes without an answer, then reads of the last acked
        // value. Exponential without pruning.
        let mut history = vec![put(0, Some(1), 0)];
        for i in 1..400 {
            history.push(put(10 + i, None, i));
        }
        history.push(get(1_000, 1_001, Some(0)));
        history.push(get(1_002, 1_003, Some(7)));
        assert!(linearizable(&history));
        history.push(get(1_004, 1_005, Some(0)));
        assert!(!linearizable(&history));
    }

    #[test]
    fn many_unanswered_deletes_are_checked_quickly() {
        // Linearizable, but 2^k states without taking unanswered deletes in order.
        let mut history = vec![put(0, Some(1), 1)];
        for i in 0..60 {
            history.push(del(2 + i, None));
        }
        history.push(get(100, 101, Some(1)));
        history.push(del(102, Some(103)));
        history.push(get(200, 201, None));
        assert!(linearizable(&history));
        history.push(get(300, 301, Some(1)));
        assert!(!linearizable(&history));
    }

    #[test]
    fn planted_stale_read_fails() {
        // Once 2 has been read, 1 may not come back.
        assert!(!linearizable(&[
            put(0, Some(1), 1),
            put(2, Some(3), 2),
            get(4, 5, Some(2)),
            get(6, 7, Some(1)),
        ]));
        // A read of a value nobody wrote.
        assert!(!linearizable(&[put(0, Some(1), 1), get(2, 3, Some(9))]));
        // A deleted key reappears.
        assert!(!linearizable(&[
            put(0, Some(1), 1),
            del(2, Some(3)),
            get(4, 5, Some(1)),
        ]));
        // Reads that go back and forth between two values are not a register.
        assert!(!linearizable(&[
            put(0, Some(100), 1),
            put(1, Some(100), 2),
            get(10, 11, Some(1)),
            get(12, 13, Some(2)),
            get(14, 15, Some(1)),
        ]));
    }

    #[test]
    fn planted_lost_write_fails() {
        let history = [put(0, Some(1), 1), put(2, Some(3), 2)];
        assert!(lost_acked_writes(&history, Some(v(2))).is_empty());
        assert_eq!(lost_acked_writes(&history, Some(v(1))).len(), 1);
        assert_eq!(lost_acked_writes(&history, None).len(), 2);
        // Overlapping writes: either may win.
        let overlapping = [put(0, Some(5), 1), put(1, Some(6), 2)];
        assert!(lost_acked_writes(&overlapping, Some(v(1))).is_empty());
        // An acknowledged delete undone.
        let deleted = [put(0, Some(1), 1), del(2, Some(3))];
        assert!(lost_acked_writes(&deleted, None).is_empty());
        assert_eq!(lost_acked_writes(&deleted, Some(v(1))).len(), 1);
        // An unknown write may be the one that won.
        let maybe = [put(0, Some(1), 1), put(2, None, 2), put(3, Some(4), 3)];
        assert!(lost_acked_writes(&maybe, Some(v(3))).is_empty());
        assert_eq!(lost_acked_writes(&maybe, Some(v(2))).len(), 0);
        assert_eq!(lost_acked_writes(&maybe, Some(v(1))).len(), 1);
    }

    fn list(i: u64, c: u64, keys: &[&str]) -> ListOp {
        ListOp {
            invoke_ns: i,
            complete_ns: c,
            keys: keys.iter().map(|k| k.to_string()).collect(),
        }
    }

    #[test]
    fn list_checks() {
        let histories = BTreeMap::from([
            ("a".to_string(), vec![put(0, Some(1), 1)]),
            ("b".to_string(), vec![put(0, Some(1), 2), del(2, Some(3))]),
            ("c".to_string(), vec![put(5, Some(20), 3)]),
            ("d".to_string(), vec![put(0, None, 4)]),
        ]);
        // c is in flight, d unknown: either way is fine.
        assert!(list_violations(&list(10, 11, &["a"]), &histories).is_empty());
        assert!(list_violations(&list(10, 11, &["a", "c", "d"]), &histories).is_empty());
        // Planted: an acknowledged key missing, a deleted key listed, disorder, a phantom.
        assert_eq!(list_violations(&list(10, 11, &[]), &histories).len(), 1);
        assert_eq!(
            list_violations(&list(10, 11, &["a", "b"]), &histories).len(),
            1
        );
        assert_eq!(
            list_violations(&list(10, 11, &["c", "a"]), &histories).len(),
            1
        );
        assert_eq!(
            list_violations(&list(10, 11, &["a", "a"]), &histories).len(),
            1
        );
        assert_eq!(
            list_violations(&list(10, 11, &["a", "zz"]), &histories).len(),
            1
        );
        // Before anything was written, nothing is certain but absence.
        assert!(list_violations(&list(0, 1, &[]), &histories).is_empty());
    }

    #[test]
    fn block_checks() {
        use BlockRead::*;
        let ok = check_blocks(
            &[2, 0, 3],
            &[1, 0, 3],
            &[Generation(2), Zero, Generation(4)],
        );
        assert_eq!(ok, BlockVerdict::default());
        // Planted: a lost acknowledged write, a lost flushed write, a torn block.
        let bad = check_blocks(&[2, 1, 3], &[1, 1, 0], &[Generation(1), Zero, Torn]);
        assert_eq!(bad.lost_acked.len(), 2);
        assert_eq!(bad.lost_flushed.len(), 1);
        assert_eq!(bad.corrupt.len(), 1);
    }

    #[test]
    fn unavailability() {
        assert_eq!(max_unavailability_ns(vec![], 0, 10), 10);
        assert_eq!(max_unavailability_ns(vec![2, 3, 9], 0, 10), 6);
        assert_eq!(max_unavailability_ns(vec![1, 2, 100], 0, 10), 8);
    }
}
