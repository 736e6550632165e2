//! Fuzz the config parser and resolver: never panics.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use screengate_server::config::{Config, Overrides, parse_file};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("/fuzz/screengate.toml");
    if let Ok(file) = parse_file(path, text) {
        let _ = Config::resolve(Some(path), file, Overrides::default());
    }
});
