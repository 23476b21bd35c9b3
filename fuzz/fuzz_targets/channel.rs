//! Channel names come from clients: parsing never panics, and an accepted
//! name round-trips and has a namespace.
#![no_main]

use herald_proto::Channel;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(c) = Channel::parse(text) {
        assert_eq!(c.as_str(), text);
        assert!(!c.namespace().is_empty());
        let _ = herald_proto::partition::partition_for_key(c.as_str().as_bytes(), 8);
    }
});
