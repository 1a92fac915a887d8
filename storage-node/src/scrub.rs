//! The scrubber: re-reads every shard at a bounded rate, checks every block, and moves
//! shards that fail into quarantine, where repair sees them as missing and rebuilds them.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lauscha_core::{NodeId, ShardId};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::{ShardError, ShardStore};

/// How many corrupt shard ids the status keeps.
const RECENT_CORRUPT_KEPT: usize = 1000;
/// Most shards a node's readers can have waiting for the scrubber (`report_unreadable`);
/// beyond that (a disk failing every read), the rest wait for their turn in a pass.
const SUSPECTS_KEPT: usize = 256;
/// Shards listed per page while scrubbing.
const PAGE: usize = 256;

/// Scrubber settings.
#[derive(Clone, Copy, Debug)]
pub struct ScrubConfig {
    /// Read rate, bytes per second (the disk's other users come first).
    pub bytes_per_s: u64,
    /// Pause between the end of one full pass and the start of the next.
    pub pass_interval: Duration,
}

/// What the scrubber has done; shared with the status RPC.
#[derive(Debug, Default)]
pub struct ScrubStats {
    /// Shards verified since start.
    pub n_scrubbed: AtomicU64,
    /// Full passes completed.
    pub n_passes: AtomicU64,
    /// Corrupt shards found and quarantined since start (unreadable ones the scrubber
    /// moved out of service included).
    pub n_corrupt_found: AtomicU64,
    /// Checks that failed with an error since start: the shard could not be judged, or
    /// not moved out of service (an unreadable one waiting for a later pass included),
    /// and stays in service.
    pub n_check_errors: AtomicU64,
    recent_corrupt: Mutex<VecDeque<ShardId>>,
    /// Shards a read of this node could not read from the disk, for the scrubber to
    /// check before the rest (`report_unreadable`).
    suspects: Mutex<VecDeque<ShardId>>,
    suspect_reported: tokio::sync::Notify,
}

impl ScrubStats {
    /// The most recently found corrupt shards, oldest first.
    pub fn recent_corrupt(&self) -> Vec<ShardId> {
        self.recent_corrupt
            .lock()
            .expect("stats lock")
            .iter()
            .copied()
            .collect()
    }

    /// Hands a shard that a read could not get from the disk (`ShardError::is_unreadable`)
    /// to the scrubber, which checks it next (between two shards of a pass, or at once
    /// between passes) under its rules for unreadable shards. Without this, it stayed in
    /// service, unread by every reader, until the scrubber's pass came by it (days, on a
    /// large disk).
    pub fn report_unreadable(&self, id: ShardId) {
        let mut suspects = self.suspects.lock().expect("stats lock");
        if suspects.len() < SUSPECTS_KEPT && !suspects.contains(&id) {
            suspects.push_back(id);
            self.suspect_reported.notify_one();
        }
    }

    fn take_suspect(&self) -> Option<ShardId> {
        self.suspects.lock().expect("stats lock").pop_front()
    }

    /// Records a corrupt shard (found by the scrubber or by a client's verify request).
    pub fn record_corrupt(&self, id: ShardId) {
        self.n_corrupt_found.fetch_add(1, Ordering::Relaxed);
        let mut recent = self.recent_corrupt.lock().expect("stats lock");
        if recent.len() == RECENT_CORRUPT_KEPT {
            recent.pop_front();
        }
        recent.push_back(id);
    }
}

/// Runs scrub passes over one store until cancelled.
pub struct Scrubber<S> {
    node_id: NodeId,
    store: S,
    config: ScrubConfig,
    stats: Arc<ScrubStats>,
}

impl<S: ShardStore + Clone> Scrubber<S> {
    /// A scrubber for `store`; `stats` is shared with the node's status.
    pub fn new(node_id: NodeId, store: S, config: ScrubConfig, stats: Arc<ScrubStats>) -> Self {
        Scrubber {
            node_id,
            store,
            config,
            stats,
        }
    }

    /// Verifies one shard; a corrupt one is quarantined and recorded.
    pub async fn check(&self, id: ShardId) -> Result<bool, ShardError> {
        check_shard(&self.store, &self.stats, self.node_id, id).await
    }

    /// Scrubs forever (until `stop`), pass after pass; shards reported unreadable are
    /// checked as they come, between passes too.
    pub async fn run(self, stop: CancellationToken) {
        loop {
            let pass_started = Instant::now();
            // The rules for unreadable shards hold over a pass and the interval after it.
            let mut state = PassState::new();
            if let Err(e) = self.pass(&stop, &mut state).await {
                warn!(node_id = %self.node_id, error = %e, "scrub pass failed; retrying after the interval");
            } else if !stop.is_cancelled() {
                self.stats.n_passes.fetch_add(1, Ordering::Relaxed);
                info!(
                    node_id = %self.node_id,
                    elapsed_ms = pass_started.elapsed().as_millis() as u64,
                    n_corrupt_found = self.stats.n_corrupt_found.load(Ordering::Relaxed),
                    "scrub pass complete"
                );
            }
            let next_pass = tokio::time::Instant::now() + self.config.pass_interval;
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep_until(next_pass) => break,
                    () = self.stats.suspect_reported.notified() => {
                        if self.check_suspects(&mut state, &stop).await.is_none() {
                            return;
                        }
                    }
                }
            }
        }
    }

    /// One pass over every shard, in id order, with the shards reported unreadable
    /// meanwhile checked first.
    async fn pass(
        &self,
        stop: &CancellationToken,
        state: &mut PassState,
    ) -> Result<(), ShardError> {
        let mut after = None;
        loop {
            let page = self.store.list(after, PAGE).await?;
            let Some(last) = page.last() else {
                return Ok(());
            };
            after = Some(last.id);
            for entry in page {
                if self.check_suspects(state, stop).await.is_none() {
                    return Ok(());
                }
                let started = Instant::now();
                let checked = self
                    .check_in_pass(entry.id, &mut state.last_read, &mut state.moves_left, stop)
                    .await;
                if checked.is_none() {
                    return Ok(());
                }
                // Throttle: this shard's bytes at the configured rate.
                let budget = Duration::from_secs_f64(
                    entry.len_bytes as f64 / self.config.bytes_per_s.max(1) as f64,
                );
                if let Some(rest) = budget.checked_sub(started.elapsed()) {
                    tokio::select! {
                        () = stop.cancelled() => return Ok(()),
                        () = tokio::time::sleep(rest) => {}
                    }
                }
            }
        }
    }

    /// Checks every shard reported unreadable so far, each once per pass (a shard that
    /// stays unreadable and cannot be moved is reported again by every read of it);
    /// `None` when stopped meanwhile.
    async fn check_suspects(&self, state: &mut PassState, stop: &CancellationToken) -> Option<()> {
        while let Some(id) = self.stats.take_suspect() {
            if state.suspects_judged.len() >= SUSPECTS_JUDGED_MAX
                || !state.suspects_judged.insert(id)
            {
                continue;
            }
            debug!(node_id = %self.node_id, shard_id = %id, "checking a shard a read could not get");
            // The rule for unreadable shards wants the disk to have just given back another
            // shard; the check before this one may be long ago (between passes).
            let mut reference_read = self.reference_read(id).await;
            self.check_in_pass(id, &mut reference_read, &mut state.moves_left, stop)
                .await?;
        }
        Some(())
    }

    /// Whether another shard than `id` (the next in id order, or the first) reads whole
    /// right now.
    async fn reference_read(&self, id: ShardId) -> bool {
        let mut other = None;
        for after in [Some(id), None] {
            if let Ok(page) = self.store.list(after, 2).await
                && let Some(entry) = page.into_iter().find(|e| e.id != id)
            {
                other = Some(entry.id);
                break;
            }
        }
        match other {
            Some(other) => self.store.verify(other).await.is_ok(),
            None => false,
        }
    }

    /// Checks one shard, and what comes of it: a corrupt one quarantined, an unreadable
    /// one read again and moved out of service if the shard checked before it read whole
    /// (`last_read`, then set by this check) and `moves_left` allows, an error counted.
    /// `None` when stopped meanwhile.
    async fn check_in_pass(
        &self,
        id: ShardId,
        last_read: &mut bool,
        moves_left: &mut u32,
        stop: &CancellationToken,
    ) -> Option<()> {
        if stop.is_cancelled() {
            return None;
        }
        let checked = self.check(id).await;
        let read = match &checked {
            Ok(_) => true,
            Err(ShardError::NotFound(_)) => *last_read,
            Err(_) => false,
        };
        match checked {
            Ok(_) => {}
            // Deleted since it was listed: nothing to check.
            Err(ShardError::NotFound(_)) => {}
            // The disk did not give it back, right after it gave back the one before: a
            // bad spot, not the whole disk failing for a while (which would take every
            // shard out, one after another).
            Err(e) if e.is_unreadable() && *last_read && *moves_left > 0 => {
                if self.take_out_unreadable(id, &e, stop).await? {
                    *moves_left -= 1;
                }
            }
            // One shard that cannot be checked must not end the pass: the next would stop
            // at it again, and no shard listed after it would ever be checked.
            Err(e) => {
                self.stats.n_check_errors.fetch_add(1, Ordering::Relaxed);
                warn!(node_id = %self.node_id, shard_id = %id, error = %e, "scrub could not check a shard; the pass goes on");
            }
        }
        *last_read = read;
        Some(())
    }
}

/// Most shards reported unreadable that one pass (with the interval after it) checks;
/// the rest wait for the pass to come by them.
const SUSPECTS_JUDGED_MAX: usize = 4096;

/// What the scrubber's rules for unreadable shards remember within a pass (and the
/// interval after it).
#[derive(Debug)]
struct PassState {
    /// Whether the shard the pass checked last read whole (true at the start: one shard
    /// per pass at most is taken out on the strength of that). Only a good check counts:
    /// another error says nothing about the disk, and a shard deleted meanwhile leaves it
    /// as it was. Reported shards are judged against a fresh read of their own instead.
    last_read: bool,
    /// Unreadable shards this pass may still take out (`UNREADABLE_MOVES_PER_PASS`).
    moves_left: u32,
    /// Reported shards checked in this pass.
    suspects_judged: HashSet<ShardId>,
}

impl PassState {
    fn new() -> PassState {
        PassState {
            last_read: true,
            moves_left: UNREADABLE_MOVES_PER_PASS,
            suspects_judged: HashSet::new(),
        }
    }
}

impl<S: ShardStore + Clone> Scrubber<S> {
    /// Reads an unreadable shard again after `UNREADABLE_RETRY_AFTER` and takes it out of
    /// service if it still cannot be read (`ShardStore::quarantine_unreadable`), so that
    /// repair rebuilds it. Whether it did; `None` when stopped meanwhile.
    async fn take_out_unreadable(
        &self,
        id: ShardId,
        error: &ShardError,
        stop: &CancellationToken,
    ) -> Option<bool> {
        warn!(node_id = %self.node_id, shard_id = %id, %error, "scrub could not read a shard; reading it again shortly");
        tokio::select! {
            () = stop.cancelled() => return None,
            () = tokio::time::sleep(UNREADABLE_RETRY_AFTER) => {}
        }
        match self.store.quarantine_unreadable(id).await {
            Ok(true) => {
                self.stats.record_corrupt(id);
                warn!(node_id = %self.node_id, shard_id = %id, "unreadable shard moved out of service");
                Some(true)
            }
            Ok(false) => {
                info!(node_id = %self.node_id, shard_id = %id, "shard reads again (or is gone): left in service");
                Some(false)
            }
            Err(e) => {
                self.stats.n_check_errors.fetch_add(1, Ordering::Relaxed);
                warn!(node_id = %self.node_id, shard_id = %id, error = %e, "unreadable shard could not be moved out of service; the pass goes on");
                Some(false)
            }
        }
    }
}

/// How long the scrubber waits before reading an unreadable shard again (a passing fault
/// of the disk, a path failover, gets that long to pass).
const UNREADABLE_RETRY_AFTER: Duration = Duration::from_secs(1);
/// Most unreadable shards one pass takes out. Reads served from the page cache can make
/// a failing disk look readable between two shards; this bounds what such a spell takes
/// out of one node, and a disk with more bad spots is cleared over several passes.
const UNREADABLE_MOVES_PER_PASS: u32 = 16;

/// Verifies `id`; quarantines and records it when corrupt. `Ok(true)` when the shard in
/// service is good (also a copy rebuilt between the check and the quarantine).
pub(crate) async fn check_shard<S: ShardStore>(
    store: &S,
    stats: &ScrubStats,
    node_id: NodeId,
    id: ShardId,
) -> Result<bool, ShardError> {
    let result = store.verify(id).await;
    stats.n_scrubbed.fetch_add(1, Ordering::Relaxed);
    match result {
        Ok(()) => {
            debug!(node_id = %node_id, shard_id = %id, "shard verified");
            Ok(true)
        }
        Err(ShardError::Corrupt { what, .. }) => {
            warn!(node_id = %node_id, shard_id = %id, what, "scrub found a corrupt shard");
            if store.quarantine(id).await? {
                stats.record_corrupt(id);
                return Ok(false);
            }
            // Left in service: written again since it was found corrupt (a rebuilt copy,
            // which the answer must not call quarantined), or gone.
            match store.verify(id).await {
                Ok(()) => Ok(true),
                Err(ShardError::Corrupt { .. }) => Ok(false),
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemShardStore;
    use crate::testing::must_put;

    #[tokio::test]
    async fn a_pass_finds_and_quarantines_every_corrupt_shard() {
        let store = MemShardStore::new();
        let mut bad = Vec::new();
        for n in 0..20u128 {
            let id = must_put(&store, n, &vec![n as u8; 70_000]).await;
            if n % 7 == 3 {
                store.corrupt(id, 69_999);
                bad.push(id);
            }
        }
        let stats = Arc::new(ScrubStats::default());
        let scrubber = Scrubber::new(
            NodeId(1),
            store.clone(),
            ScrubConfig {
                bytes_per_s: u64::MAX,
                pass_interval: Duration::from_secs(3600),
            },
            stats.clone(),
        );
        scrubber
            .pass(&CancellationToken::new(), &mut PassState::new())
            .await
            .unwrap();
        assert_eq!(stats.n_scrubbed.load(Ordering::Relaxed), 20);
        assert_eq!(stats.recent_corrupt(), bad);
        for id in bad {
            assert!(matches!(
                store.open(id, 0, 0).await.err(),
                Some(ShardError::NotFound(_))
            ));
        }
        assert_eq!(store.usage().n_shards, 17);
    }

    fn scrubber(
        store: &crate::DiskShardStore,
    ) -> (Scrubber<crate::DiskShardStore>, Arc<ScrubStats>) {
        let stats = Arc::new(ScrubStats::default());
        let config = ScrubConfig {
            bytes_per_s: u64::MAX,
            pass_interval: Duration::from_secs(3600),
        };
        (
            Scrubber::new(NodeId(1), store.clone(), config, stats.clone()),
            stats,
        )
    }

    /// `n` shard files, sorted by id (the order a pass checks them in).
    async fn shard_files(dir: &std::path::Path, n: u128) -> (crate::DiskShardStore, Vec<ShardId>) {
        let store = crate::DiskShardStore::open(dir, NodeId(1)).await.unwrap();
        let mut ids = Vec::new();
        for i in 0..n {
            ids.push(must_put(&store, i, &vec![i as u8; 70_000]).await);
        }
        ids.sort();
        (store, ids)
    }

    async fn ten_shard_files(dir: &std::path::Path) -> (crate::DiskShardStore, Vec<ShardId>) {
        shard_files(dir, 10).await
    }

    /// Makes reads of a shard file fail as on a bad spot of the disk (EISDIR).
    fn make_unreadable(store: &crate::DiskShardStore, id: ShardId) {
        let path = store.shard_path(id);
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir(&path).unwrap();
    }

    fn flip_last_byte(path: &std::path::Path) {
        let mut bytes = std::fs::read(path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(path, &bytes).unwrap();
    }

    /// A shard that cannot be checked (here: its quarantine fails, as `quarantine/` is a
    /// file) is counted and logged, and the pass goes on to the shards after it. It used
    /// to end the pass, and every pass after it stopped there again.
    #[tokio::test]
    async fn a_shard_that_cannot_be_checked_does_not_end_the_pass() {
        let dir = tempfile::tempdir().unwrap();
        let (store, ids) = ten_shard_files(dir.path()).await;
        std::fs::write(dir.path().join("quarantine"), b"in the way").unwrap();
        flip_last_byte(&store.shard_path(ids[2]));
        flip_last_byte(&store.shard_path(ids[7]));
        let (scrubber, stats) = scrubber(&store);
        scrubber
            .pass(&CancellationToken::new(), &mut PassState::new())
            .await
            .unwrap();
        assert_eq!(stats.n_scrubbed.load(Ordering::Relaxed), 10);
        assert_eq!(
            stats.n_check_errors.load(Ordering::Relaxed),
            2,
            "both reached"
        );
    }

    /// A shard the disk cannot give back (here a directory where its file should be:
    /// reads fail with EISDIR) is read again and moved out of service like a corrupt one,
    /// so that repair rebuilds it, when the shard checked before it read: one right after
    /// another unreadable one waits for the next pass (a disk failing every read for a
    /// while must not take out everything). A reader's report (plain `quarantine`) never
    /// moves an unreadable shard.
    #[tokio::test]
    async fn an_unreadable_shard_is_moved_out_of_service_one_run_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let (store, ids) = ten_shard_files(dir.path()).await;
        for id in [ids[2], ids[3]] {
            make_unreadable(&store, id);
        }
        assert!(store.quarantine(ids[2]).await.unwrap_err().is_unreadable());
        flip_last_byte(&store.shard_path(ids[7]));
        let (scrubber, stats) = scrubber(&store);
        scrubber
            .pass(&CancellationToken::new(), &mut PassState::new())
            .await
            .unwrap();
        assert_eq!(stats.recent_corrupt(), vec![ids[2], ids[7]]);
        assert_eq!(
            stats.n_check_errors.load(Ordering::Relaxed),
            1,
            "{} waits",
            ids[3]
        );
        assert!(store.shard_path(ids[3]).exists());
        scrubber
            .pass(&CancellationToken::new(), &mut PassState::new())
            .await
            .unwrap();
        assert_eq!(stats.recent_corrupt(), vec![ids[2], ids[7], ids[3]]);
        for id in [ids[2], ids[3], ids[7]] {
            assert!(!store.shard_path(id).exists(), "{id} moved");
            assert!(matches!(
                store.open(id, 0, 0).await.err(),
                Some(ShardError::NotFound(_))
            ));
        }
        let kept = std::fs::read_dir(dir.path().join("quarantine"))
            .unwrap()
            .count();
        assert_eq!(kept, 3);
        assert_eq!(store.usage().n_shards, 7);
    }

    /// However many unreadable shards each follow one that read, one pass takes out at
    /// most `UNREADABLE_MOVES_PER_PASS` (a failing disk whose reads the page cache serves
    /// in between must not empty the node in one pass); the rest are counted as errors,
    /// stay in service, and go in the next pass. (Paused clock: each move waits 1 s to
    /// read the shard again.)
    #[tokio::test(start_paused = true)]
    async fn a_pass_takes_out_at_most_its_limit_of_unreadable_shards() {
        let dir = tempfile::tempdir().unwrap();
        let (store, ids) = shard_files(dir.path(), 40).await;
        // Every second shard, each right after one that reads: 20 that qualify.
        let unreadable: Vec<ShardId> = ids.iter().skip(1).step_by(2).copied().collect();
        for &id in &unreadable {
            make_unreadable(&store, id);
        }
        let limit = UNREADABLE_MOVES_PER_PASS as usize;
        assert!(unreadable.len() > limit);
        let (scrubber, stats) = scrubber(&store);
        scrubber
            .pass(&CancellationToken::new(), &mut PassState::new())
            .await
            .unwrap();
        assert_eq!(stats.recent_corrupt(), unreadable[..limit]);
        assert_eq!(
            stats.n_check_errors.load(Ordering::Relaxed),
            (unreadable.len() - limit) as u64
        );
        for &id in &unreadable[limit..] {
            assert!(
                store.shard_path(id).exists(),
                "{id} waits for the next pass"
            );
        }
        assert_eq!(store.usage().n_shards, (ids.len() - limit) as u64);
        scrubber
            .pass(&CancellationToken::new(), &mut PassState::new())
            .await
            .unwrap();
        assert_eq!(stats.recent_corrupt(), unreadable);
        assert_eq!(
            store.usage().n_shards,
            (ids.len() - unreadable.len()) as u64
        );
    }

    /// Waits (up to 30 s) until `done` holds.
    async fn wait_until(what: &str, done: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A shard a reader could not get from the disk is handed to the scrubber, which
    /// checks it at once, between two passes too, and moves it out of service under its
    /// usual rules, so that repair rebuilds it. Before, it stayed in service until the
    /// next pass came by it.
    #[tokio::test]
    async fn a_shard_a_read_could_not_get_is_checked_at_once_and_moved_out() {
        use futures::StreamExt;
        use lauscha_proto::storage::shard_service_server::ShardService;

        let dir = tempfile::tempdir().unwrap();
        let (store, ids) = ten_shard_files(dir.path()).await;
        let (scrubber, stats) = scrubber(&store);
        let stop = CancellationToken::new();
        let running = tokio::spawn(scrubber.run(stop.clone()));
        wait_until("the first pass is over", || {
            stats.n_passes.load(Ordering::Relaxed) == 1
        })
        .await;
        let path = store.shard_path(ids[4]);
        make_unreadable(&store, ids[4]);

        let server = crate::ShardServer::new(NodeId(1), 1 << 30, store.clone(), stats.clone());
        let request = lauscha_proto::storage::GetShardRequest {
            id: Some(ids[4].into()),
            offset: 0,
            len_bytes: 0,
        };
        let failed = match server.get_shard(tonic::Request::new(request)).await {
            Err(_) => true,
            Ok(replies) => {
                let mut replies = replies.into_inner();
                let mut failed = false;
                while let Some(reply) = replies.next().await {
                    failed |= reply.is_err();
                }
                failed
            }
        };
        assert!(failed, "the read fails");
        wait_until("the shard is moved out", || {
            stats.recent_corrupt() == vec![ids[4]]
        })
        .await;
        assert!(!path.exists());
        assert_eq!(
            stats.n_passes.load(Ordering::Relaxed),
            1,
            "found between passes, not by a second one"
        );
        assert_eq!(store.usage().n_shards, 9);
        stop.cancel();
        running.await.unwrap();
    }
}
