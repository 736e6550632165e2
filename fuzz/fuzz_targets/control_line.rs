//! Fuzz the control protocol's parsers, both directions (a request line as
//! the server reads it, a reply line as a client reads it): never panic,
//! and whatever parses encodes back to a line that parses the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use screengate_control::{Reply, Request};

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = Request::parse(data) {
        let line = req.to_line().expect("a parsed request encodes");
        assert_eq!(Request::parse(&line).ok(), Some(req));
    }
    if let Ok(reply) = Reply::parse(data) {
        let line = reply.to_line().expect("a parsed reply encodes");
        assert_eq!(Reply::parse(&line).ok(), Some(reply));
    }
});
