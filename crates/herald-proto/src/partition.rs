//! Kafka's default partitioner: `toPositive(murmur2(key)) % partitions`.
//!
//! librdkafka's own default is CRC32-based, so herald computes the partition
//! itself and produces to it explicitly. Any Java client, or librdkafka with
//! `partitioner=murmur2` / `murmur2_random`, writing with key = channel lands
//! in the same partition. Tested against the vectors in Kafka's `UtilsTest`
//! and, in herald's integration tests, against librdkafka itself.

/// Kafka's 32-bit murmur2 (seed `0x9747b28c`), as `org.apache.kafka.common.utils.Utils.murmur2`.
pub fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;

    let len = data.len();
    // Java does `seed ^ length` on ints; lengths above u32 cannot be keys.
    let mut h: u32 = SEED ^ (len as u32);
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

/// The partition Kafka's default partitioner picks for `key` among `partitions`.
///
/// # Panics
/// If `partitions` is not positive: a topic always has at least one partition,
/// and callers take the count from broker metadata.
pub fn partition_for_key(key: &[u8], partitions: i32) -> i32 {
    assert!(partitions > 0, "a topic has at least one partition");
    ((murmur2(key) & 0x7fff_ffff) % partitions as u32) as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `org.apache.kafka.common.utils.UtilsTest.testMurmur2`.
    const KAFKA_VECTORS: &[(&[u8], i32)] = &[
        (b"21", -973_932_308),
        (b"foobar", -790_332_482),
        (b"a-little-bit-long-string", -985_981_536),
        (b"a-little-bit-longer-string", -1_486_304_829),
        (
            b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
            -58_897_971,
        ),
        (b"abc", 479_470_107),
        (&[12, 42, 56, 24, 109, 111], 274_204_207),
    ];

    #[test]
    fn matches_kafka_utils_test() {
        for (input, want) in KAFKA_VECTORS {
            assert_eq!(murmur2(input) as i32, *want, "murmur2({input:?})");
        }
    }

    #[test]
    fn partition_is_positive_modulo() {
        for (input, want) in KAFKA_VECTORS {
            for n in [1, 3, 8, 12, 100] {
                assert_eq!(
                    partition_for_key(input, n),
                    ((*want as u32 & 0x7fff_ffff) % n as u32) as i32
                );
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn partition_in_range(key: Vec<u8>, n in 1i32..10_000) {
            let p = partition_for_key(&key, n);
            proptest::prop_assert!((0..n).contains(&p));
        }
    }
}
