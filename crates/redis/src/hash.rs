//! Placing channels on shards: jump consistent hash (Lamping & Veach, 2014) of a stable
//! 64-bit hash of the channel name.
//!
//! Jump hash needs no ring and no memory, spreads keys evenly, and when the shard count
//! goes from N to N+1 only about 1/(N+1) of the channels move (all to the new shard).
//! Shards are numbered by their position in the configured address list, so shards can
//! only be added at the end (or removed from the end) without moving more channels.

/// FNV-1a, 64 bit: stable across processes and versions (unlike std's `DefaultHasher`),
/// which every node must agree on.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The bucket in `0..buckets` for `key` (0 when `buckets` is 0 or 1).
pub fn jump(mut key: u64, buckets: usize) -> usize {
    let buckets = i64::try_from(buckets).unwrap_or(i64::MAX);
    let mut b: i64 = -1;
    let mut j: i64 = 0;
    while j < buckets {
        b = j;
        // A 64-bit linear congruential step drives the "next jump" draw.
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        let r = ((key >> 33).wrapping_add(1)) as f64;
        let next = ((b.wrapping_add(1)) as f64 * ((1u64 << 31) as f64 / r)) as i64;
        j = next;
    }
    usize::try_from(b.max(0)).unwrap_or(0)
}

/// The shard of `channel` among `shards`.
pub fn shard_of(channel: &str, shards: usize) -> usize {
    if shards <= 1 {
        return 0;
    }
    jump(fnv1a(channel.as_bytes()), shards)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_and_in_range() {
        for n in 1..10 {
            for i in 0..1000 {
                let c = format!("chan{i}");
                let s = shard_of(&c, n);
                assert!(s < n);
                assert_eq!(s, shard_of(&c, n));
            }
        }
    }

    #[test]
    fn adding_a_shard_moves_about_one_nth() {
        let total = 10_000;
        let moved = (0..total)
            .filter(|i| {
                let c = format!("chan{i}");
                let (a, b) = (shard_of(&c, 4), shard_of(&c, 5));
                if a != b {
                    assert_eq!(b, 4, "channels move only to the new shard");
                }
                a != b
            })
            .count();
        // Expect 1/5 = 2000, allow sampling noise.
        assert!((1600..2400).contains(&moved), "moved {moved}");
        let on_zero = (0..total)
            .filter(|i| shard_of(&format!("chan{i}"), 4) == 0)
            .count();
        assert!((2200..2800).contains(&on_zero), "balanced: {on_zero}");
    }
}
