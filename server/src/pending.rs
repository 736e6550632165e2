//! The registry of pending (not yet authenticated) connections of one
//! listener, and who is closed when it is full.
//!
//! Invariant: a connection is pending from accept until it ends or its
//! upgrade hands it to a session. At most [`MAX_PENDING_CONNECTIONS`] are
//! pending; connections that have not finished TLS hold at most
//! `MAX_PENDING_CONNECTIONS - PENDING_RESERVED_TLS` of them, so a flood of
//! bare `connect()`s can never take the share kept for connections that
//! proved they speak TLS. When a class is over its share, its member that
//! has shown the least is closed first: a connection that has sent nothing
//! yet ([`Stage::Silent`]) before one whose handshake is under way
//! ([`Stage::Handshaking`]), oldest first within a stage. A display sends
//! its ClientHello at once, so it leaves `Silent` within a scheduling
//! round; a churning flood of silent connections only ever evicts itself.
//! Before a silent connection is evicted, the registry looks (without
//! waiting) whether its first byte has arrived since: one that has is moved
//! to `Handshaking` instead, so a display whose task has not run yet under
//! load is never taken for part of the churn.
//! (Why oldest, not youngest, within a stage: docs/decisions.md.)

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::oneshot;

use crate::limits::{MAX_PENDING_CONNECTIONS, PENDING_RESERVED_TLS};

/// How far a pending connection has come.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Stage {
    /// Accepted; no byte received yet.
    Silent,
    /// Bytes arrived; the TLS handshake is under way.
    Handshaking,
    /// TLS is done (or the listener has none); HTTP, before the upgrade.
    Tls,
}

#[derive(Debug)]
struct Entry {
    id: u64,
    stage: Stage,
    evict: Option<oneshot::Sender<()>>,
    /// A duplicate of a silent connection's socket, to look for its first
    /// byte before evicting it; dropped when it leaves `Silent`.
    probe: Option<OwnedFd>,
}

/// What a socket's receive queue holds, seen without waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FirstByte {
    Arrived,
    NotYet,
    Closed,
}

/// Whether the peer's first byte is already here, without waiting or
/// taking it from the queue.
pub(crate) fn first_byte_now(fd: &impl AsRawFd) -> FirstByte {
    use nix::sys::socket::{MsgFlags, recv};
    let mut b = [0u8; 1];
    match recv(
        fd.as_raw_fd(),
        &mut b,
        MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT,
    ) {
        Ok(0) => FirstByte::Closed,
        Ok(_) => FirstByte::Arrived,
        Err(nix::errno::Errno::EAGAIN) => FirstByte::NotYet,
        Err(_) => FirstByte::Closed,
    }
}

/// One listener's pending connections.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    next_id: u64,
    /// In admission order: the front is the oldest.
    entries: Vec<Entry>,
}

/// Held by a pending connection; leaves the registry on drop.
#[derive(Debug)]
pub(crate) struct PendingSlot {
    id: u64,
    registry: Arc<Pending>,
}

impl Inner {
    fn count(&self, pred: impl Fn(Stage) -> bool) -> usize {
        self.entries.iter().filter(|e| pred(e.stage)).count()
    }

    /// Closes the oldest connection at `stage` other than `keep`, if any.
    fn evict_oldest(&mut self, stage: Stage, keep: u64) -> bool {
        let mut from = 0;
        while let Some(pos) = self
            .entries
            .iter()
            .skip(from)
            .position(|e| e.stage == stage && e.id != keep)
            .map(|p| p + from)
        {
            if let Some(e) = self.entries.get_mut(pos)
                && e.probe.as_ref().map(first_byte_now) == Some(FirstByte::Arrived)
            {
                // It spoke since it was admitted: not part of a churn.
                e.stage = Stage::Handshaking;
                e.probe = None;
                from = pos + 1;
                continue;
            }
            let e = self.entries.remove(pos);
            if let Some(tx) = e.evict {
                let _ = tx.send(());
            }
            return true;
        }
        false
    }

    /// Evicts until every class is within its share, never `keep` (the
    /// connection just admitted or advanced: it gets its chance).
    fn enforce(&mut self, keep: u64) {
        let pre_tls_max = MAX_PENDING_CONNECTIONS.saturating_sub(PENDING_RESERVED_TLS);
        while self.count(|s| s < Stage::Tls) > pre_tls_max {
            if !self.evict_oldest(Stage::Silent, keep)
                && !self.evict_oldest(Stage::Handshaking, keep)
            {
                break;
            }
        }
        while self.entries.len() > MAX_PENDING_CONNECTIONS {
            // Pre-TLS is within its share here, so the TLS class is over
            // the rest: it pays.
            if !self.evict_oldest(Stage::Tls, keep) {
                break;
            }
        }
    }
}

impl Pending {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Admits a connection at `stage`, evicting per the policy above. The
    /// receiver fires if this connection is evicted later.
    /// Admits a connection at `stage`; `probe` (a duplicate of a silent
    /// connection's socket) lets eviction look for its first byte first.
    pub fn admit(
        self: &Arc<Self>,
        stage: Stage,
        probe: Option<OwnedFd>,
    ) -> (PendingSlot, oneshot::Receiver<()>) {
        let (tx, rx) = oneshot::channel();
        let mut inner = self.lock();
        let id = inner.next_id;
        inner.next_id = inner.next_id.wrapping_add(1);
        inner.entries.push(Entry {
            id,
            stage,
            evict: Some(tx),
            probe: probe.filter(|_| stage == Stage::Silent),
        });
        inner.enforce(id);
        (
            PendingSlot {
                id,
                registry: self.clone(),
            },
            rx,
        )
    }

    /// Pending connections now, per stage (for tests and status).
    #[cfg(test)]
    fn counts(&self) -> [usize; 3] {
        let inner = self.lock();
        [
            inner.count(|s| s == Stage::Silent),
            inner.count(|s| s == Stage::Handshaking),
            inner.count(|s| s == Stage::Tls),
        ]
    }
}

impl PendingSlot {
    /// Records that the connection reached `stage` (never moves back).
    pub fn advance(&self, stage: Stage) {
        let mut inner = self.registry.lock();
        if let Some(e) = inner.entries.iter_mut().find(|e| e.id == self.id)
            && e.stage < stage
        {
            e.stage = stage;
            e.probe = None;
            inner.enforce(self.id);
        }
    }
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        let mut inner = self.registry.lock();
        if let Some(pos) = inner.entries.iter().position(|e| e.id == self.id) {
            inner.entries.remove(pos);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PRE_TLS_MAX: usize = MAX_PENDING_CONNECTIONS - PENDING_RESERVED_TLS;

    fn fired(rx: &mut oneshot::Receiver<()>) -> bool {
        rx.try_recv().is_ok()
    }

    /// Real sockets: a connection admitted silent whose first byte arrives
    /// before its task has looked (a display on a loaded machine) is moved
    /// up, not evicted, when a churn fills the silent share; a silent one
    /// that really sent nothing, or already closed, is evicted.
    #[test]
    fn a_silent_connection_that_spoke_since_is_moved_up_not_evicted() {
        use std::io::Write;
        use std::net::{TcpListener, TcpStream};
        use std::os::fd::AsFd;
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let pair = || {
            let c = TcpStream::connect(addr).unwrap();
            let (s, _) = l.accept().unwrap();
            (c, s)
        };
        let p = Arc::new(Pending::default());
        let probe = |s: &TcpStream| s.as_fd().try_clone_to_owned().ok();
        // Oldest: the display, admitted before its ClientHello arrived.
        let (mut display_c, display_s) = pair();
        let (_display, mut display_rx) = p.admit(Stage::Silent, probe(&display_s));
        // Next: one that never speaks, and one that closed.
        let (_mute_c, mute_s) = pair();
        let (_mute, mut mute_rx) = p.admit(Stage::Silent, probe(&mute_s));
        let (gone_c, gone_s) = pair();
        let (_gone, mut gone_rx) = p.admit(Stage::Silent, probe(&gone_s));
        drop(gone_c);
        display_c.write_all(b"\x16").unwrap();
        // Give loopback a moment to deliver (not a timing assertion: the
        // peek below retries until the byte is visible).
        for _ in 0..100 {
            if first_byte_now(&display_s) == FirstByte::Arrived {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(first_byte_now(&display_s), FirstByte::Arrived);
        // The churn: bare silent entries until two must go.
        let mut churn = Vec::new();
        for _ in 0..(PRE_TLS_MAX - 3 + 2) {
            churn.push(p.admit(Stage::Silent, None));
        }
        assert!(
            !fired(&mut display_rx),
            "the display that spoke was evicted"
        );
        assert!(fired(&mut mute_rx), "the mute connection was kept");
        assert!(fired(&mut gone_rx), "the closed connection was kept");
        assert_eq!(p.counts()[1], 1, "the display was not moved to handshaking");
        // And the churn keeps evicting itself, never the display.
        for _ in 0..(4 * MAX_PENDING_CONNECTIONS) {
            churn.push(p.admit(Stage::Silent, None));
        }
        assert!(!fired(&mut display_rx));
    }

    #[test]
    fn a_silent_flood_never_evicts_a_handshaking_or_tls_connection() {
        let p = Arc::new(Pending::default());
        let (hs, mut hs_rx) = p.admit(Stage::Silent, None);
        hs.advance(Stage::Handshaking);
        let (tls, mut tls_rx) = p.admit(Stage::Silent, None);
        tls.advance(Stage::Tls);
        let mut flood = Vec::new();
        for _ in 0..(10 * MAX_PENDING_CONNECTIONS) {
            flood.push(p.admit(Stage::Silent, None));
        }
        assert!(!fired(&mut hs_rx), "the handshaking display was evicted");
        assert!(!fired(&mut tls_rx), "the TLS display was evicted");
        assert_eq!(p.counts(), [PRE_TLS_MAX - 1, 1, 1]);
        // The flood evicted itself, oldest first: the youngest are alive.
        let alive = flood
            .iter_mut()
            .map(|(_, rx)| fired(rx))
            .filter(|f| !f)
            .count();
        assert_eq!(alive, PRE_TLS_MAX - 1);
        assert_eq!(flood.last_mut().map(|(_, r)| fired(r)), Some(false));
    }

    #[test]
    fn handshaking_connections_are_evicted_only_when_no_silent_one_is_left() {
        let p = Arc::new(Pending::default());
        let mut hs = Vec::new();
        for _ in 0..PRE_TLS_MAX {
            let (s, rx) = p.admit(Stage::Silent, None);
            s.advance(Stage::Handshaking);
            hs.push((s, rx));
        }
        // A newcomer is never the one evicted on admission: the oldest
        // handshaking connection goes, and the rest stay.
        let (_new, mut new_rx) = p.admit(Stage::Silent, None);
        assert!(!fired(&mut new_rx));
        let evicted: Vec<bool> = hs.iter_mut().map(|(_, rx)| fired(rx)).collect();
        assert_eq!(evicted.first(), Some(&true));
        assert!(evicted.iter().skip(1).all(|f| !f));
        // Another silent one: now the earlier silent newcomer goes first,
        // before any handshaking connection.
        let (_s, mut rx) = p.admit(Stage::Silent, None);
        assert!(!fired(&mut rx));
        assert!(fired(&mut new_rx));
        assert!(hs.iter_mut().skip(1).all(|(_, rx)| !fired(rx)));
    }

    #[test]
    fn the_tls_share_is_reserved_and_pre_tls_share_too() {
        let p = Arc::new(Pending::default());
        let mut tls = Vec::new();
        for _ in 0..MAX_PENDING_CONNECTIONS {
            let (s, rx) = p.admit(Stage::Silent, None);
            s.advance(Stage::Tls);
            tls.push((s, rx));
        }
        assert_eq!(p.counts(), [0, 0, MAX_PENDING_CONNECTIONS]);
        // A new connection still gets in; the oldest TLS one pays.
        let (_s, mut rx) = p.admit(Stage::Silent, None);
        assert!(!fired(&mut rx));
        assert_eq!(tls.first_mut().map(|(_, r)| fired(r)), Some(true));
        assert_eq!(p.counts(), [1, 0, MAX_PENDING_CONNECTIONS - 1]);
        // And pre-TLS never takes the reserved share.
        let mut flood = Vec::new();
        for _ in 0..MAX_PENDING_CONNECTIONS {
            flood.push(p.admit(Stage::Silent, None));
        }
        let [silent, _, tls_left] = p.counts();
        assert_eq!(silent, PRE_TLS_MAX);
        assert_eq!(tls_left, PENDING_RESERVED_TLS);
    }

    #[test]
    fn dropping_a_slot_frees_it_and_advance_never_moves_back() {
        let p = Arc::new(Pending::default());
        let (a, _ra) = p.admit(Stage::Silent, None);
        let (b, _rb) = p.admit(Stage::Silent, None);
        a.advance(Stage::Tls);
        a.advance(Stage::Silent);
        assert_eq!(p.counts(), [1, 0, 1]);
        drop(a);
        drop(b);
        assert_eq!(p.counts(), [0, 0, 0]);
    }
}
