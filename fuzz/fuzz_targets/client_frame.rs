//! Every client text frame (including `since` positions) goes through
//! `decode_client`: it must never panic, and what it accepts must be sane.
#![no_main]

use herald_proto::frame::{decode_client, json_depth, ClientFrame, MAX_DATA_DEPTH};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match decode_client(text) {
        Ok(ClientFrame::Publish { data, .. }) => {
            assert!(json_depth(data.get()) <= MAX_DATA_DEPTH);
        }
        Ok(ClientFrame::Ack { seq, .. }) => assert!(seq >= 0),
        Ok(_) => {}
        Err(e) => assert!(!e.code.is_empty()),
    }
});
