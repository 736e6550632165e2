//! Fuzz the CDP frame splitter and message parser: the first byte picks a
//! chunk size, the rest is fed in chunks; never panics, and re-joining the
//! frames gives back every byte before the last NUL.
#![no_main]

use libfuzzer_sys::fuzz_target;
use screengate_cdp::{Framer, parse};

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(first % 64) + 1;
    let mut f = Framer::new();
    let mut frames = Vec::new();
    for c in rest.chunks(chunk) {
        if let Ok(fs) = f.push(c) {
            frames.extend(fs);
        }
    }
    let mut joined = Vec::new();
    for fr in &frames {
        let _ = parse(fr);
        joined.extend_from_slice(fr);
        joined.push(0);
    }
    let upto = rest
        .iter()
        .rposition(|b| *b == 0)
        .map(|i| i + 1)
        .unwrap_or(0);
    assert_eq!(joined.as_slice(), &rest[..upto]);
});
