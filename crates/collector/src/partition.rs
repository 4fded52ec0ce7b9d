//! Partition choice: a resource's samples always land in the same Kafka partition.
//!
//! Batches hold samples of many resources, so the collector routes each sample itself,
//! with the hash Kafka's Java clients use for keys (murmur2, positive, modulo the partition
//! count). Any client that keys single samples by resource id with a murmur2 partitioner
//! (`partitioner=murmur2_random` in librdkafka) agrees with it.

/// Kafka's murmur2 hash of a key (the Java client's `Utils.murmur2`).
pub fn murmur2(key: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut hash = SEED ^ key.len() as u32;
    let mut chunks = key.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        hash = hash.wrapping_mul(M);
        hash ^= k;
    }
    let tail = chunks.remainder();
    if tail.len() >= 3 {
        hash ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        hash ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        hash ^= u32::from(tail[0]);
        hash = hash.wrapping_mul(M);
    }
    hash ^= hash >> 13;
    hash = hash.wrapping_mul(M);
    hash ^= hash >> 15;
    hash
}

/// The partition of `resource_id` among `partitions` partitions.
pub fn partition_for(resource_id: &str, partitions: i32) -> i32 {
    debug_assert!(partitions > 0, "a topic has at least one partition");
    let positive = murmur2(resource_id.as_bytes()) & 0x7fff_ffff;
    (positive % partitions.max(1) as u32) as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_the_java_client() {
        // Reference values of org.apache.kafka.common.utils.Utils.murmur2 (as i32).
        assert_eq!(murmur2(b"21") as i32, -973932308);
        assert_eq!(murmur2(b"foobar") as i32, -790332482);
        assert_eq!(murmur2(b"a-little-bit-long-string") as i32, -985981536);
        assert_eq!(murmur2(b"a-little-bit-longer-string") as i32, -1486304829);
        assert_eq!(
            murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8") as i32,
            -58897971
        );
        assert_eq!(murmur2(b"abc") as i32, 479470107);
    }

    #[test]
    fn partitions_are_stable_and_in_range() {
        for id in ["vm-1", "vm-2", "ip-77", ""] {
            let partition = partition_for(id, 6);
            assert!((0..6).contains(&partition));
            assert_eq!(partition, partition_for(id, 6));
        }
    }
}
