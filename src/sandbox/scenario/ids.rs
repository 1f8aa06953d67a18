//! Deterministic identifiers: the same seed and key give the same uid, name
//! suffix or choice, so a scenario serialises to identical JSON every time.

/// SplitMix64 finaliser: a cheap, well-mixed 64-bit hash step.
pub fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Hash of a seed and a key (FNV-1a over the key, then mixed with the seed).
pub fn hash(seed: u64, key: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix(h ^ mix(seed))
}

/// An RFC 4122 version-4-shaped uid.
pub fn uid(seed: u64, key: &str) -> String {
    let a = hash(seed, key);
    let b = mix(a);
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        0x8000 | ((b >> 48) & 0x3fff),
        b & 0xffff_ffff_ffff
    )
}

/// The alphabet of Kubernetes generated names (k8s.io/apimachinery
/// `pkg/util/rand`: no vowels, no confusable digits).
const ALNUM: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// A `len`-character generated-name suffix such as `x7k2q`.
pub fn suffix(seed: u64, key: &str, len: usize) -> String {
    let mut h = hash(seed, key);
    let mut s = String::with_capacity(len);
    for _ in 0..len {
        s.push(char::from(ALNUM[(h % ALNUM.len() as u64) as usize]));
        h = mix(h);
    }
    s
}

/// A number in 0..n chosen by the key (n > 0).
pub fn pick(seed: u64, key: &str, n: usize) -> usize {
    (hash(seed, key) % n.max(1) as u64) as usize
}
