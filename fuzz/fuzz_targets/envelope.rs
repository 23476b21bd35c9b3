//! Kafka record values can be written by any client of the topic: decoding
//! them never panics.
#![no_main]

use herald_proto::Envelope;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let split = data.first().map(|b| *b as usize).unwrap_or(0).min(data.len());
    let (key, value) = data.split_at(split);
    if let Ok(env) = Envelope::decode(value, Some(key)) {
        assert_eq!(env.channel.as_bytes(), key);
        let _ = env.into_message(0, "e");
    }
});
