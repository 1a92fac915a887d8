//! Engines shared by the connections that use them, with one slot per key.
//!
//! Attaching a volume takes a lease in metadata and loads its unmerged journal, which can
//! take seconds; releasing one merges what is pending first. Each key has its own slot,
//! locked across that work, so that it never holds up the attach or detach of another
//! volume (one global lock did: a large journal being loaded stalled every other client's
//! handshake on the gateway). Within one key the slot serialises: a second connection
//! waits for the first attach and then shares its engine, and an attach right after the
//! last detach waits until the lease has been given back.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

/// An engine and the connections using it; `None` when nothing is attached.
type Slot<E> = Arc<tokio::sync::Mutex<Option<(Arc<E>, usize)>>>;

/// Attached engines by key; see the module docs.
pub(crate) struct Attachments<K, E> {
    slots: Mutex<HashMap<K, Slot<E>>>,
}

impl<K: Eq + Hash + Clone, E> Attachments<K, E> {
    /// Nothing attached.
    pub(crate) fn new() -> Attachments<K, E> {
        Attachments {
            slots: Mutex::new(HashMap::new()),
        }
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<K, Slot<E>>> {
        // Held only for map lookups and inserts, which leave the map whole if they panic.
        self.slots
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The engine of `key` for one more connection: the attached one while `usable` says
    /// so, else a new one from `attach` (which replaces an unusable one: its connections
    /// are no longer counted, see [`Attachments::detach`]).
    pub(crate) async fn attach<Err, Fut>(
        &self,
        key: K,
        usable: impl FnOnce(&E) -> bool,
        attach: impl FnOnce() -> Fut,
    ) -> Result<Arc<E>, Err>
    where
        Fut: Future<Output = Result<Arc<E>, Err>>,
    {
        let slot = self.slots().entry(key.clone()).or_default().clone();
        let mut attached = slot.lock().await;
        if let Some((engine, n)) = attached.as_mut()
            && usable(engine)
        {
            *n += 1;
            return Ok(engine.clone());
        }
        match attach().await {
            Ok(engine) => {
                *attached = Some((engine.clone(), 1));
                Ok(engine)
            }
            Err(e) => {
                drop(attached);
                self.forget_if_unused(&key, &slot);
                Err(e)
            }
        }
    }

    /// One connection using `engine` is done with it. The last one's engine goes to
    /// `release`, awaited with the slot locked, so that the next attach of the same key
    /// starts only after it.
    pub(crate) async fn detach<Fut>(
        &self,
        key: &K,
        engine: &Arc<E>,
        release: impl FnOnce(Arc<E>) -> Fut,
    ) where
        Fut: Future<Output = ()>,
    {
        let Some(slot) = self.slots().get(key).cloned() else {
            return;
        };
        let mut attached = slot.lock().await;
        let last = match attached.as_mut() {
            // Ours was replaced by a new engine: the new one's connections are not ours
            // to count down.
            Some((current, _)) if !Arc::ptr_eq(current, engine) => None,
            Some((_, n)) if *n > 1 => {
                *n -= 1;
                None
            }
            Some(_) => attached.take().map(|(e, _)| e),
            None => None,
        };
        if let Some(engine) = last {
            release(engine).await;
        }
        drop(attached);
        self.forget_if_unused(key, &slot);
    }

    /// Drops `key`'s slot when nothing is attached in it and nobody else holds it. Slots
    /// are handed out only under the map's lock, so the count cannot grow meanwhile.
    fn forget_if_unused(&self, key: &K, slot: &Slot<E>) {
        let mut slots = self.slots();
        let unused = slots.get(key).is_some_and(|s| Arc::ptr_eq(s, slot))
            // The map's reference and the caller's.
            && Arc::strong_count(slot) == 2
            && slot.try_lock().is_ok_and(|attached| attached.is_none());
        if unused {
            slots.remove(key);
        }
    }

    /// Keys with a slot (attached, or being attached or released).
    #[cfg(test)]
    fn n_slots(&self) -> usize {
        self.slots().len()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    #[derive(Debug, Default)]
    struct Engine {
        fenced: AtomicBool,
    }

    type Shared = Arc<Attachments<&'static str, Engine>>;

    async fn ready() -> Result<Arc<Engine>, String> {
        Ok(Arc::new(Engine::default()))
    }

    fn usable(e: &Engine) -> bool {
        !e.fenced.load(Ordering::SeqCst)
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_attach_holds_up_only_its_own_key() {
        let attachments: Shared = Arc::new(Attachments::new());
        let (go, wait) = tokio::sync::oneshot::channel::<()>();
        let slow = tokio::spawn({
            let attachments = attachments.clone();
            async move {
                attachments
                    .attach("a", usable, || async move {
                        wait.await.map_err(|e| e.to_string())?;
                        ready().await
                    })
                    .await
            }
        });
        tokio::task::yield_now().await;
        // Virtual time: if "b" waited for "a", this would time out, deterministically.
        let b = tokio::time::timeout(
            Duration::from_secs(60),
            attachments.attach("b", usable, ready),
        )
        .await
        .expect("attaching b waited for a")
        .unwrap();
        let released = &AtomicUsize::new(0);
        let release = |_: Arc<Engine>| async move {
            released.fetch_add(1, Ordering::SeqCst);
        };
        attachments.detach(&"b", &b, release).await;
        assert_eq!(released.load(Ordering::SeqCst), 1);
        go.send(()).unwrap();
        let a = slow.await.unwrap().unwrap();
        assert_eq!(attachments.n_slots(), 1, "b's slot is gone, a's stays");
        attachments.detach(&"a", &a, release).await;
        assert_eq!(attachments.n_slots(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn connections_share_an_engine_and_the_last_one_releases_it() {
        let attachments: Shared = Arc::new(Attachments::new());
        let made = Arc::new(AtomicUsize::new(0));
        let make = || {
            let made = made.clone();
            move || async move {
                made.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_secs(1)).await;
                ready().await
            }
        };
        // Two concurrent attaches of one key: one engine, made once.
        let (e1, e2) = tokio::join!(
            attachments.attach("v", usable, make()),
            attachments.attach("v", usable, make())
        );
        let (e1, e2) = (e1.unwrap(), e2.unwrap());
        assert!(Arc::ptr_eq(&e1, &e2));
        assert_eq!(made.load(Ordering::SeqCst), 1);
        let released = &AtomicUsize::new(0);
        let release = |_: Arc<Engine>| async move {
            released.fetch_add(1, Ordering::SeqCst);
        };
        attachments.detach(&"v", &e1, release).await;
        assert_eq!(
            released.load(Ordering::SeqCst),
            0,
            "one connection still uses it"
        );
        attachments.detach(&"v", &e2, release).await;
        assert_eq!(released.load(Ordering::SeqCst), 1);
        assert_eq!(attachments.n_slots(), 0);
        // A detach of an engine no longer attached changes nothing.
        attachments.detach(&"v", &e2, release).await;
        assert_eq!(released.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn an_unusable_engine_is_replaced_and_its_connections_not_counted() {
        let attachments: Shared = Arc::new(Attachments::new());
        let old = attachments.attach("v", usable, ready).await.unwrap();
        old.fenced.store(true, Ordering::SeqCst);
        let new = attachments.attach("v", usable, ready).await.unwrap();
        assert!(!Arc::ptr_eq(&old, &new));
        let released: Mutex<Vec<Arc<Engine>>> = Mutex::default();
        let release = |e: Arc<Engine>| {
            released.lock().unwrap().push(e);
            async {}
        };
        attachments.detach(&"v", &old, release).await;
        assert!(released.lock().unwrap().is_empty());
        attachments.detach(&"v", &new, release).await;
        assert!(Arc::ptr_eq(&released.lock().unwrap()[0], &new));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_attach_leaves_nothing_behind() {
        let attachments: Shared = Arc::new(Attachments::new());
        let failed = attachments
            .attach("v", usable, || async {
                Err::<Arc<Engine>, _>("lease held")
            })
            .await;
        assert_eq!(failed.unwrap_err(), "lease held");
        assert_eq!(attachments.n_slots(), 0);
        attachments.attach("v", usable, ready).await.unwrap();
        assert_eq!(attachments.n_slots(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn an_attach_after_the_last_detach_waits_for_the_release() {
        let attachments: Shared = Arc::new(Attachments::new());
        let engine = attachments.attach("v", usable, ready).await.unwrap();
        let released = Arc::new(AtomicBool::new(false));
        let detaching = tokio::spawn({
            let (attachments, released) = (attachments.clone(), released.clone());
            async move {
                attachments
                    .detach(&"v", &engine, |_| async move {
                        tokio::time::sleep(Duration::from_secs(5)).await;
                        released.store(true, Ordering::SeqCst);
                    })
                    .await
            }
        });
        tokio::task::yield_now().await;
        let released_seen = released.clone();
        attachments
            .attach("v", usable, || async move {
                assert!(
                    released_seen.load(Ordering::SeqCst),
                    "attached before the lease was given back"
                );
                ready().await
            })
            .await
            .unwrap();
        detaching.await.unwrap();
    }
}
