//! Unit tests for the authority: one per rejection reason (and then some),
//! known-answer vectors from `tests/data/token-kat.json`, and the race.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::*;
use crate::clock::ManualClock;
use crate::format::ENCODED_LEN;

const TTL: Duration = Duration::from_secs(30);

fn key(b: u8) -> DeviceKey {
    DeviceKey::from_bytes([b; 32])
}

fn authority() -> (Authority<Arc<ManualClock>>, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new());
    (Authority::new(&key(1), TTL, clock.clone()).unwrap(), clock)
}

fn mint(a: &Authority<Arc<ManualClock>>, ch: Channel) -> String {
    a.mint(ch).unwrap().token.expose_secret().to_owned()
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

// ---- positive paths -------------------------------------------------------

#[test]
fn fresh_token_verifies_and_consumes_once() {
    let (a, _) = authority();
    let t = mint(&a, Channel::Display);
    assert_eq!(t.len(), ENCODED_LEN);
    let v = a.verify(&t, Channel::Display).unwrap();
    let c = a.consume(v).unwrap();
    assert_eq!(c.channel(), Channel::Display);
    assert_eq!(a.ledger_len(), 1);
}

#[test]
fn known_answer_vectors() {
    let kat: serde_json::Value =
        serde_json::from_str(include_str!("../../../../tests/data/token-kat.json")).unwrap();
    let dk = DeviceKey::from_slice(&hex(kat["device_key_hex"].as_str().unwrap())).unwrap();
    let run: [u8; 16] = hex(kat["run_id_hex"].as_str().unwrap()).try_into().unwrap();
    let tid: [u8; 16] = hex(kat["token_id_hex"].as_str().unwrap())
        .try_into()
        .unwrap();
    assert_eq!(
        derive_run_key(&dk, &RunId(run)).unwrap().to_vec(),
        hex(kat["run_key_hex"].as_str().unwrap())
    );
    let cases = kat["cases"].as_array().unwrap();
    assert!(!cases.is_empty());
    for case in cases {
        let clock = Arc::new(ManualClock::new());
        clock.advance(Duration::from_millis(case["now_ms"].as_u64().unwrap()));
        let ttl = Duration::from_millis(case["ttl_ms"].as_u64().unwrap());
        let a = Authority::with_run_id(&dk, RunId(run), ttl, clock).unwrap();
        let ch: Channel = case["channel"].as_str().unwrap().parse().unwrap();
        let minted = a.mint_with_id(ch, TokenId(tid)).unwrap();
        let expected = case["token"].as_str().unwrap();
        assert_eq!(minted.token.expose_secret(), expected);
        // and the vector verifies on its own
        a.verify(expected, ch).unwrap();
    }
}

// ---- one test per rejection reason ----------------------------------------

#[test]
fn rejects_malformed_empty() {
    let (a, _) = authority();
    assert_eq!(
        a.verify("", Channel::Display).unwrap_err(),
        Rejection::Malformed
    );
}

#[test]
fn rejects_malformed_truncated() {
    let (a, _) = authority();
    let t = mint(&a, Channel::Display);
    assert_eq!(
        a.verify(&t[..t.len() - 1], Channel::Display).unwrap_err(),
        Rejection::Malformed
    );
    assert_eq!(
        a.verify(&t[..ENCODED_LEN / 2], Channel::Display)
            .unwrap_err(),
        Rejection::Malformed
    );
}

#[test]
fn rejects_malformed_extended() {
    let (a, _) = authority();
    let t = mint(&a, Channel::Display);
    assert_eq!(
        a.verify(&format!("{t}A"), Channel::Display).unwrap_err(),
        Rejection::Malformed
    );
    assert_eq!(
        a.verify(&format!("{t} "), Channel::Display).unwrap_err(),
        Rejection::Malformed
    );
}

#[test]
fn rejects_malformed_non_base64url() {
    let (a, _) = authority();
    let t = mint(&a, Channel::Display);
    let mut s = t.clone();
    s.replace_range(10..11, "+");
    assert_eq!(
        a.verify(&s, Channel::Display).unwrap_err(),
        Rejection::Malformed
    );
    let mut s = t;
    s.replace_range(10..11, "é"); // multi-byte: length changes, still refused
    assert_eq!(
        a.verify(&s, Channel::Display).unwrap_err(),
        Rejection::Malformed
    );
}

#[test]
fn rejects_malformed_unknown_version() {
    let (a, _) = authority();
    let t = mint(&a, Channel::Display);
    let mut raw = URL_SAFE_NO_PAD.decode(&t).unwrap();
    raw[0] = 2;
    let s = URL_SAFE_NO_PAD.encode(&raw);
    assert_eq!(
        a.verify(&s, Channel::Display).unwrap_err(),
        Rejection::Malformed
    );
}

#[test]
fn rejects_malformed_unknown_channel_code() {
    let (a, _) = authority();
    let t = mint(&a, Channel::Display);
    let mut raw = URL_SAFE_NO_PAD.decode(&t).unwrap();
    raw[33] = 0;
    let s = URL_SAFE_NO_PAD.encode(&raw);
    assert_eq!(
        a.verify(&s, Channel::Display).unwrap_err(),
        Rejection::Malformed
    );
}

#[test]
fn rejects_random_bytes() {
    let (a, _) = authority();
    for seed in 0u8..50 {
        let raw: Vec<u8> = (0..82u32)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect();
        let s = URL_SAFE_NO_PAD.encode(&raw);
        assert!(a.verify(&s, Channel::Display).is_err());
    }
}

#[test]
fn rejects_wrong_run_after_restart() {
    let (a, _) = authority();
    let t = mint(&a, Channel::Display);
    // Same device key, new run: the restart kills the token.
    let b = Authority::new(&key(1), TTL, Arc::new(ManualClock::new())).unwrap();
    assert_eq!(
        b.verify(&t, Channel::Display).unwrap_err(),
        Rejection::WrongRun
    );
}

#[test]
fn rejects_bad_mac_from_another_device() {
    // Same run id, different device key: a counterfeit made by analysing
    // another device.
    let clock = Arc::new(ManualClock::new());
    let run = RunId([5; 16]);
    let mine = Authority::with_run_id(&key(1), run, TTL, clock.clone()).unwrap();
    let theirs = Authority::with_run_id(&key(2), run, TTL, clock).unwrap();
    let forged = theirs.mint(Channel::Display).unwrap();
    assert_eq!(
        mine.verify(forged.token.expose_secret(), Channel::Display)
            .unwrap_err(),
        Rejection::BadMac
    );
}

#[test]
fn rejects_bad_mac_every_single_bit_flip() {
    let (a, _) = authority();
    let t = mint(&a, Channel::Display);
    let raw = URL_SAFE_NO_PAD.decode(&t).unwrap();
    for byte in 0..raw.len() {
        for bit in 0..8 {
            let mut m = raw.clone();
            m[byte] ^= 1 << bit;
            let s = URL_SAFE_NO_PAD.encode(&m);
            let err = a.verify(&s, Channel::Display).unwrap_err();
            // Flips in the version, channel code or run id are caught
            // structurally; everywhere else the MAC catches them.
            match byte {
                0 | 33 => assert!(matches!(err, Rejection::Malformed | Rejection::BadMac)),
                1..=16 => assert_eq!(err, Rejection::WrongRun),
                34..=49 => assert!(matches!(err, Rejection::Malformed | Rejection::BadMac)),
                _ => assert_eq!(err, Rejection::BadMac, "byte {byte} bit {bit}"),
            }
        }
    }
}

#[test]
fn rejects_bad_mac_extended_expiry() {
    // Pushing the expiry forward is the obvious tamper; the MAC catches it.
    let (a, _) = authority();
    let t = mint(&a, Channel::Display);
    let mut raw = URL_SAFE_NO_PAD.decode(&t).unwrap();
    raw[42..50].copy_from_slice(&u64::MAX.to_be_bytes());
    let s = URL_SAFE_NO_PAD.encode(&raw);
    assert_eq!(
        a.verify(&s, Channel::Display).unwrap_err(),
        Rejection::BadMac
    );
}

#[test]
fn rejects_wrong_channel() {
    let (a, _) = authority();
    let t = mint(&a, Channel::Native);
    assert_eq!(
        a.verify(&t, Channel::Display).unwrap_err(),
        Rejection::WrongChannel
    );
    let t = mint(&a, Channel::Display);
    assert_eq!(
        a.verify(&t, Channel::Native).unwrap_err(),
        Rejection::WrongChannel
    );
}

#[test]
fn rejects_expired_at_exact_expiry() {
    let (a, clock) = authority();
    let t = mint(&a, Channel::Display);
    clock.advance(TTL - Duration::from_millis(1));
    assert!(a.verify(&t, Channel::Display).is_ok());
    clock.advance(Duration::from_millis(1));
    assert_eq!(
        a.verify(&t, Channel::Display).unwrap_err(),
        Rejection::Expired
    );
}

#[test]
fn rejects_expired_between_verify_and_consume() {
    let (a, clock) = authority();
    let t = mint(&a, Channel::Display);
    let v = a.verify(&t, Channel::Display).unwrap();
    clock.advance(TTL);
    assert_eq!(a.consume(v).unwrap_err(), Rejection::Expired);
}

#[test]
fn rejects_replayed_on_verify() {
    let (a, _) = authority();
    let t = mint(&a, Channel::Display);
    a.consume(a.verify(&t, Channel::Display).unwrap()).unwrap();
    assert_eq!(
        a.verify(&t, Channel::Display).unwrap_err(),
        Rejection::Replayed
    );
}

#[test]
fn rejects_replayed_on_consume_of_two_verifications() {
    let (a, _) = authority();
    let t = mint(&a, Channel::Display);
    let v1 = a.verify(&t, Channel::Display).unwrap();
    let v2 = a.verify(&t, Channel::Display).unwrap();
    a.consume(v1).unwrap();
    assert_eq!(a.consume(v2).unwrap_err(), Rejection::Replayed);
}

#[test]
fn refuses_bad_ttl() {
    let c = ManualClock::new();
    assert_eq!(
        Authority::new(&key(1), Duration::ZERO, c).unwrap_err(),
        AuthorityError::BadTtl
    );
    let c = ManualClock::new();
    assert_eq!(
        Authority::new(&key(1), MAX_TTL + Duration::from_millis(1), c).unwrap_err(),
        AuthorityError::BadTtl
    );
}

#[test]
fn mint_refused_when_ledger_full_and_recovers_after_expiry() {
    let (mut a, clock) = authority();
    a.set_max_ledger(3);
    for _ in 0..3 {
        let t = mint(&a, Channel::Display);
        a.consume(a.verify(&t, Channel::Display).unwrap()).unwrap();
    }
    assert_eq!(a.mint(Channel::Display).unwrap_err(), MintError::LedgerFull);
    clock.advance(TTL + Duration::from_secs(2));
    assert!(a.mint(Channel::Display).is_ok());
    assert_eq!(a.ledger_len(), 0);
}

#[test]
fn consume_refused_when_ledger_full_and_token_kept() {
    let (mut a, clock) = authority();
    a.set_max_ledger(3);
    // minted while there was room: more tokens than the ledger holds
    let tokens: Vec<String> = (0..5).map(|_| mint(&a, Channel::Display)).collect();
    for t in &tokens[..3] {
        a.consume(a.verify(t, Channel::Display).unwrap()).unwrap();
    }
    for t in &tokens[3..] {
        let v = a.verify(t, Channel::Display).unwrap();
        assert_eq!(a.consume(v).unwrap_err(), Rejection::LedgerFull);
    }
    assert_eq!(a.ledger_len(), 3);
    // not recorded: still unused, so a later consume (room again) succeeds
    let late = mint_late(&a, &clock);
    let v = a.verify(&late, Channel::Display).unwrap();
    assert!(a.consume(v).is_ok());
}

/// After the first TTL has passed (the ledger swept), a fresh token.
fn mint_late(a: &Authority<Arc<ManualClock>>, clock: &ManualClock) -> String {
    clock.advance(TTL + Duration::from_secs(2));
    mint(a, Channel::Display)
}

#[test]
fn ledger_full_refusal_does_not_burn_the_token() {
    let (mut a, _clock) = authority();
    a.set_max_ledger(1);
    let first = mint(&a, Channel::Display);
    let second = mint(&a, Channel::Display);
    a.consume(a.verify(&first, Channel::Display).unwrap())
        .unwrap();
    let v = a.verify(&second, Channel::Display).unwrap();
    assert_eq!(a.consume(v).unwrap_err(), Rejection::LedgerFull);
    // verify still passes: the refusal recorded nothing
    assert!(a.verify(&second, Channel::Display).is_ok());
    assert_eq!(Rejection::LedgerFull.as_str(), "ledger_full");
}

#[test]
fn ledger_entries_are_dropped_after_expiry() {
    let (a, clock) = authority();
    for _ in 0..10 {
        let t = mint(&a, Channel::Display);
        a.consume(a.verify(&t, Channel::Display).unwrap()).unwrap();
    }
    assert_eq!(a.ledger_len(), 10);
    clock.advance(TTL + Duration::from_secs(1));
    let t = mint(&a, Channel::Display);
    a.consume(a.verify(&t, Channel::Display).unwrap()).unwrap();
    assert_eq!(a.ledger_len(), 1);
}

#[test]
fn minting_writes_no_state() {
    let (a, _) = authority();
    for _ in 0..1000 {
        a.mint(Channel::Display).unwrap();
    }
    assert_eq!(a.ledger_len(), 0);
}

#[test]
fn tokens_are_unique() {
    let (a, _) = authority();
    let mut seen = std::collections::HashSet::new();
    for _ in 0..1000 {
        assert!(seen.insert(mint(&a, Channel::Display)));
    }
}

#[test]
fn debug_output_redacts_secrets() {
    let (a, _) = authority();
    let m = a.mint(Channel::Display).unwrap();
    let dbg = format!("{m:?} {:?} {a:?}", key(7));
    assert!(!dbg.contains(m.token.expose_secret()));
    assert!(dbg.contains("redacted"));
    assert!(!dbg.contains("7, 7"));
}

// ---- the race --------------------------------------------------------------

#[test]
fn racing_consumers_exactly_one_wins() {
    for _round in 0..20 {
        let (a, _) = authority();
        let a = Arc::new(a);
        let t = Arc::new(mint(&a, Channel::Display));
        let wins = Arc::new(AtomicUsize::new(0));
        let barrier = Arc::new(std::sync::Barrier::new(16));
        let threads: Vec<_> = (0..16)
            .map(|_| {
                let (a, t, wins, barrier) = (a.clone(), t.clone(), wins.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    if let Ok(v) = a.verify(&t, Channel::Display)
                        && a.consume(v).is_ok()
                    {
                        wins.fetch_add(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        for th in threads {
            th.join().unwrap();
        }
        assert_eq!(wins.load(Ordering::SeqCst), 1);
    }
}

// ---- properties ------------------------------------------------------------

mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        /// Any change to any byte of a genuine token is rejected.
        #[test]
        fn any_byte_change_is_rejected(index in 0usize..82, flip in 1u8..=255) {
            let (a, _) = authority();
            let t = mint(&a, Channel::Display);
            let mut raw = URL_SAFE_NO_PAD.decode(&t).unwrap();
            raw[index] ^= flip;
            let changed = URL_SAFE_NO_PAD.encode(&raw);
            prop_assert!(a.verify(&changed, Channel::Display).is_err());
            // and the genuine token is unaffected
            prop_assert!(a.verify(&t, Channel::Display).is_ok());
        }

        /// Any change to any character of the text form is rejected.
        #[test]
        fn any_character_change_is_rejected(index in 0usize..110, c in "[A-Za-z0-9_+/=. -]") {
            let (a, _) = authority();
            let t = mint(&a, Channel::Display);
            let mut chars: Vec<char> = t.chars().collect();
            let new = c.chars().next().unwrap();
            prop_assume!(chars[index] != new);
            chars[index] = new;
            let changed: String = chars.into_iter().collect();
            prop_assert!(a.verify(&changed, Channel::Display).is_err());
        }

        /// Arbitrary input never panics and is never accepted.
        #[test]
        fn arbitrary_text_is_rejected(s in ".{0,200}") {
            let (a, _) = authority();
            prop_assert!(a.verify(&s, Channel::Display).is_err());
            prop_assert!(a.verify(&s, Channel::Native).is_err());
        }
    }
}

// ---- revocation -------------------------------------------------------------

fn mint_full(a: &Authority<Arc<ManualClock>>) -> (String, TokenId) {
    let m = a.mint(Channel::Display).unwrap();
    (m.token.expose_secret().to_owned(), m.id)
}

#[test]
fn revoked_token_is_refused_at_verify_and_consume() {
    let (a, _) = authority();
    let (t, id) = mint_full(&a);
    let (t2, _) = mint_full(&a);
    let v = a.verify(&t, Channel::Display).unwrap();
    assert_eq!(a.revoke(&a.revoke_handle(&id, 7), 7), Ok(id));
    // a revoke landing between verify and consume wins
    assert_eq!(a.consume(v).unwrap_err(), Rejection::Revoked);
    assert_eq!(
        a.verify(&t, Channel::Display).unwrap_err(),
        Rejection::Revoked
    );
    // revoking twice is fine; the other token is untouched
    assert_eq!(a.revoke(&a.revoke_handle(&id, 7), 7), Ok(id));
    let v2 = a.verify(&t2, Channel::Display).unwrap();
    assert!(a.consume(v2).is_ok());
}

#[test]
fn revoke_refuses_another_uids_handle() {
    let (a, _) = authority();
    let (t, id) = mint_full(&a);
    let h = a.revoke_handle(&id, 7);
    for uid in [0, 6, 8, u32::MAX] {
        assert_eq!(a.revoke(&h, uid), Err(RevokeError::NotYours), "{uid}");
    }
    assert!(a.verify(&t, Channel::Display).is_ok());
}

#[test]
fn revoke_refuses_another_runs_handle() {
    let (a, _) = authority();
    let (b, _) = authority();
    let (t, id) = mint_full(&a);
    assert_eq!(
        a.revoke(&b.revoke_handle(&id, 7), 7),
        Err(RevokeError::NotYours)
    );
    assert!(a.verify(&t, Channel::Display).is_ok());
}

#[test]
fn revoke_refuses_altered_and_malformed_handles() {
    let (a, _) = authority();
    let (t, id) = mint_full(&a);
    let h = a.revoke_handle(&id, 7);
    for i in [0, 31, 32, 63] {
        let mut b = h.clone().into_bytes();
        b[i] = if b[i] == b'0' { b'1' } else { b'0' };
        let altered = String::from_utf8(b).unwrap();
        assert_eq!(a.revoke(&altered, 7), Err(RevokeError::NotYours), "{i}");
    }
    for bad in [
        String::new(),
        h[..63].to_owned(),
        format!("{h}0"),
        h.to_uppercase(),
        format!("{}g", &h[..63]),
        id.prefix(),
        t.clone(),
    ] {
        assert_eq!(a.revoke(&bad, 7), Err(RevokeError::Malformed), "{bad}");
    }
    assert!(a.verify(&t, Channel::Display).is_ok());
}

#[test]
fn revoke_all_kills_every_earlier_token_not_later_ones() {
    let (a, clock) = authority();
    let (t1, _) = mint_full(&a);
    clock.advance(Duration::from_millis(5));
    let (t2, _) = mint_full(&a);
    a.revoke_all();
    // same millisecond, after the revoke: alive
    let (t3, _) = mint_full(&a);
    clock.advance(Duration::from_millis(5));
    let (t4, _) = mint_full(&a);
    for t in [&t1, &t2] {
        assert_eq!(
            a.verify(t, Channel::Display).unwrap_err(),
            Rejection::Revoked
        );
    }
    for t in [&t3, &t4] {
        let v = a.verify(t, Channel::Display).unwrap();
        assert!(a.consume(v).is_ok());
    }
}

#[test]
fn revoked_set_is_bounded_and_swept() {
    let (a, clock) = authority();
    for _ in 0..MAX_REVOKED_ENTRIES {
        let (_, id) = mint_full(&a);
        a.revoke(&a.revoke_handle(&id, 1), 1).unwrap();
    }
    let (t, id) = mint_full(&a);
    assert_eq!(
        a.revoke(&a.revoke_handle(&id, 1), 1),
        Err(RevokeError::Full)
    );
    assert!(a.verify(&t, Channel::Display).is_ok());
    // one TTL later every entry is gone
    clock.advance(TTL + Duration::from_secs(2));
    let (_, id) = mint_full(&a);
    assert_eq!(a.revoke(&a.revoke_handle(&id, 1), 1), Ok(id));
}

#[test]
fn a_token_spent_early_still_dies_by_a_later_revoke() {
    let (a, _) = authority();
    let (t, id) = mint_full(&a);
    let (t2, _) = mint_full(&a);
    let c = a.consume(a.verify(&t, Channel::Display).unwrap()).unwrap();
    let c2 = a.consume(a.verify(&t2, Channel::Display).unwrap()).unwrap();
    assert_eq!(a.check_not_revoked(&c), Ok(()));
    // by its handle
    assert_eq!(a.revoke(&a.revoke_handle(&id, 7), 7), Ok(id));
    assert_eq!(a.check_not_revoked(&c), Err(Rejection::Revoked));
    assert_eq!(a.check_not_revoked(&c2), Ok(()));
    // by a revoke all
    a.revoke_all();
    assert_eq!(a.check_not_revoked(&c2), Err(Rejection::Revoked));
    // a token minted after the revoke all is not affected
    let (t3, _) = mint_full(&a);
    let c3 = a.consume(a.verify(&t3, Channel::Display).unwrap()).unwrap();
    assert_eq!(a.check_not_revoked(&c3), Ok(()));
}

// ---- a reload changes the TTL ---------------------------------------------

#[test]
fn set_ttl_applies_to_tokens_minted_after_it_and_not_before() {
    let (a, clock) = authority();
    let before = mint(&a, Channel::Display);
    a.set_ttl(Duration::from_secs(5)).unwrap();
    assert_eq!(a.ttl(), Duration::from_secs(5));
    let after = mint(&a, Channel::Display);
    clock.advance(Duration::from_secs(5));
    // the new life for the new token, the old one for the old
    assert_eq!(
        a.verify(&after, Channel::Display).unwrap_err(),
        Rejection::Expired
    );
    assert!(a.verify(&before, Channel::Display).is_ok());
}

#[test]
fn set_ttl_refuses_what_new_refuses_and_keeps_the_old_life() {
    let (a, _) = authority();
    for bad in [Duration::ZERO, MAX_TTL + Duration::from_millis(1)] {
        assert_eq!(a.set_ttl(bad).unwrap_err(), AuthorityError::BadTtl);
    }
    assert_eq!(a.ttl(), TTL);
}

#[test]
fn a_revocation_outlives_the_longest_ttl_after_the_ttl_is_lowered() {
    let (a, clock) = authority();
    let (t, id) = mint_full(&a);
    a.set_ttl(Duration::from_secs(1)).unwrap();
    assert_eq!(a.revoke(&a.revoke_handle(&id, 7), 7), Ok(id));
    // past the new 1 s life and a sweep, inside the token's own 30 s
    clock.advance(Duration::from_secs(20));
    let _ = mint(&a, Channel::Display);
    assert_eq!(
        a.verify(&t, Channel::Display).unwrap_err(),
        Rejection::Revoked
    );
}

#[test]
fn is_keyed_by_tells_its_own_device_key_from_any_other() {
    let (a, _) = authority();
    assert!(a.is_keyed_by(&key(1)));
    for other in [0u8, 2, 0xff] {
        assert!(!a.is_keyed_by(&key(other)), "{other}");
    }
    let mut one_bit = [1u8; 32];
    one_bit[31] ^= 0x80;
    assert!(!a.is_keyed_by(&DeviceKey::from_bytes(one_bit)));
}
