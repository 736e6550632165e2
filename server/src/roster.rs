//! The live sessions in age order, so `when_full = "replace_oldest"` can
//! ask the oldest one to end. A session joins after its token was
//! consumed and leaves when its [`Entry`] drops (its proxy ended); asking
//! is a [`Notify`] the session's proxy supervisor selects on.
//!
//! What it leaves to others: who may trigger a replacement (`session.rs`,
//! after the token verified and was claimed: `gate::Claims`), what pays
//! for it (`gate::Admission::spend`) and closing the session (proxy.rs).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::Notify;

/// The live sessions, oldest first (ids only grow).
#[derive(Debug, Default)]
pub(crate) struct Roster {
    next: AtomicU64,
    live: Mutex<BTreeMap<u64, Arc<Notify>>>,
}

/// A session's place in the roster; leaving on drop.
#[derive(Debug)]
pub(crate) struct Entry {
    id: u64,
    roster: Arc<Roster>,
    /// Notified when a newer session replaces this one.
    pub replaced: Arc<Notify>,
}

impl Roster {
    /// Adds a session as the newest.
    pub fn join(self: &Arc<Self>) -> Entry {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let replaced = Arc::new(Notify::new());
        self.live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, replaced.clone());
        Entry {
            id,
            roster: self.clone(),
            replaced,
        }
    }

    /// Asks the oldest session to end (it leaves the roster now, so two
    /// newcomers never pick the same one), once `pay` succeeded: the
    /// newcomer spends its token first, so a token closes at most one
    /// session whatever happens to its own handshake afterwards (a client
    /// that hangs up mid-retry cannot come back with it). `Ok(false)` when
    /// there is no session to replace (nothing was paid).
    pub fn replace_oldest_if<E>(&self, pay: impl FnOnce() -> Result<(), E>) -> Result<bool, E> {
        let mut live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        if live.is_empty() {
            return Ok(false);
        }
        pay()?;
        match live.pop_first() {
            Some((_, n)) => {
                // Stores a permit if the supervisor is not waiting right now.
                n.notify_one();
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// [`Roster::replace_oldest_if`] with nothing to pay.
    #[cfg(test)]
    pub fn replace_oldest(&self) -> bool {
        self.replace_oldest_if(|| Ok::<(), ()>(())).unwrap_or(false)
    }

    /// Sessions in the roster.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        self.roster
            .live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_replaced_unless_paid_and_nothing_paid_for_nothing() {
        let r = Arc::new(Roster::default());
        let mut paid = 0;
        // empty: not paid
        assert_eq!(
            r.replace_oldest_if(|| {
                paid += 1;
                Ok::<(), ()>(())
            }),
            Ok(false)
        );
        assert_eq!(paid, 0);
        let _a = r.join();
        // payment refused: nobody replaced
        assert_eq!(r.replace_oldest_if(|| Err("spent")), Err("spent"));
        assert_eq!(r.len(), 1);
        assert_eq!(
            r.replace_oldest_if(|| {
                paid += 1;
                Ok::<(), ()>(())
            }),
            Ok(true)
        );
        assert_eq!((paid, r.len()), (1, 0));
    }

    #[tokio::test]
    async fn oldest_is_replaced_first_and_entries_leave_on_drop() {
        let r = Arc::new(Roster::default());
        assert!(!r.replace_oldest());
        let a = r.join();
        let b = r.join();
        assert_eq!(r.len(), 2);
        assert!(r.replace_oldest());
        // a was told (the permit is stored), b was not
        tokio::time::timeout(std::time::Duration::from_secs(1), a.replaced.notified())
            .await
            .unwrap();
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(50), b.replaced.notified())
                .await
                .is_err()
        );
        assert_eq!(r.len(), 1);
        drop(a);
        assert_eq!(r.len(), 1);
        drop(b);
        assert_eq!(r.len(), 0);
        assert!(!r.replace_oldest());
    }
}
