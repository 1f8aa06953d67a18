//! Which nodes a bounded check round between two swaps probes: a sample of a fixed
//! size, seeded by the round's number. A full round is O(nodes) probes, so one every K
//! swapped nodes makes a takeover (or its way back) O(nodes²/K); a sample keeps the
//! checks' cost per moved node the same at 10 nodes and at 500, and successive rounds
//! look at other nodes. The full round comes after the last node.

use std::collections::BTreeSet;

/// `count` of `nodes` not in `skipped`, picked by a hash seeded with `seed` (FNV-1a
/// and SplitMix64: the same sample for the same seed on any build, so a run can be
/// retraced).
pub fn round_sample(
    nodes: &[String],
    skipped: &BTreeSet<String>,
    count: usize,
    seed: u64,
) -> BTreeSet<String> {
    let fnv = |n: &str| {
        let h = n.as_bytes().iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
        // SplitMix64's finalizer over name and seed: FNV alone keeps names that share
        // a prefix close, so successive seeds would keep picking the same nodes.
        let mut z = h ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let mut picked: Vec<(u64, &String)> = nodes
        .iter()
        .filter(|n| !skipped.contains(*n))
        .map(|n| (fnv(n), n))
        .collect();
    picked.sort();
    picked
        .into_iter()
        .take(count)
        .map(|(_, n)| n.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("node-{i:03}")).collect()
    }

    #[test]
    fn a_round_sample_has_its_size_whatever_the_cluster_and_skips_nodes_in_flight() {
        let skipped: BTreeSet<String> = ["node-001".to_string(), "node-002".to_string()].into();
        for n in [10, 100, 500] {
            let all = nodes(n);
            let s = round_sample(&all, &skipped, 8, 3);
            assert_eq!(s.len(), 8, "{n} nodes: {s:?}");
            assert!(s.iter().all(|x| all.contains(x) && !skipped.contains(x)));
            // The same seed, the same sample: a run can be retraced.
            assert_eq!(s, round_sample(&all, &skipped, 8, 3));
        }
        // Fewer nodes than the sample: all of them but the ones in flight.
        assert_eq!(round_sample(&nodes(5), &skipped, 8, 0).len(), 3);
    }

    #[test]
    fn successive_rounds_sample_other_nodes() {
        let all = nodes(200);
        let none = BTreeSet::new();
        let seen: BTreeSet<String> = (0..20)
            .flat_map(|seed| round_sample(&all, &none, 8, seed))
            .collect();
        // 20 rounds of 8 over 200 nodes: far more than one round's worth of nodes.
        assert!(seen.len() > 100, "{} distinct nodes", seen.len());
    }
}
