//! A hash map for integer keys (PIDs, cgroup ids) that hashes with one multiplication.
//!
//! The collector rebuilds maps of ten thousand such keys every interval; SipHash, the
//! standard map's default, showed in profiles. The keys come from the kernel, not from
//! requests, so resistance to chosen-key flooding is not needed here.

use std::{
    collections::HashMap,
    hash::{BuildHasherDefault, Hasher},
};

pub type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;

/// Fibonacci hashing of integer keys (FxHash's step).
#[derive(Default, Clone, Copy)]
pub struct IdHasher(u64);

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(SEED);
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn works_as_a_map() {
        let mut map: FastMap<u32, u32> = FastMap::default();
        for i in 0..10_000 {
            map.insert(i, i * 2);
        }
        assert_eq!(map.len(), 10_000);
        assert!((0..10_000).all(|i| map[&i] == i * 2));
    }
}
