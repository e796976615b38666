//! Maglev lookup tables (Eisenbud et al., "Maglev: A Fast and Reliable Software Network Load
//! Balancer", NSDI 2016, section 3.4), computed in userspace and written to the datapath's
//! `lb4_maglev` map.
//!
//! Each backend gets a permutation of the table's slots from two hashes of its address; backends
//! take turns claiming their next free preferred slot until the table is full. The result
//! depends only on the set of backends, not on their order, and changes little when one backend
//! comes or goes.

use crate::proxy::BackendAddr;

/// FNV-1a, 64 bits: stable across Rust versions and builds, unlike `std`'s hashers, so an
/// upgraded agent computes the same tables.
fn fnv1a(bytes: &[u8], basis: u64) -> u64 {
    bytes.iter().fold(basis, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// SplitMix64's finaliser, to spread FNV's weak low bits.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn key(b: &BackendAddr) -> [u8; 6] {
    let [a, b2, c, d] = b.ip.octets();
    let [p0, p1] = b.port.to_be_bytes();
    [a, b2, c, d, p0, p1]
}

/// Fills `table` (whose length must be prime) with backend ids: `backends[i].1` is the id of
/// `backends[i].0`. With no backends every entry is 0 ("no backend").
pub fn populate(backends: &[(BackendAddr, u32)], table: &mut [u32]) {
    let m = table.len();
    table.fill(0);
    if backends.is_empty() || m == 0 {
        return;
    }
    // Canonical order, so the table depends on the set only.
    let mut sorted: Vec<&(BackendAddr, u32)> = backends.iter().collect();
    sorted.sort_by_key(|(addr, _)| *addr);
    sorted.dedup_by_key(|(addr, _)| *addr);

    let m64 = m as u64;
    let perms: Vec<(u64, u64)> = sorted
        .iter()
        .map(|(addr, _)| {
            let k = key(addr);
            let offset = mix(fnv1a(&k, 0xcbf2_9ce4_8422_2325)) % m64;
            let skip = mix(fnv1a(&k, 0x8422_2325_cbf2_9ce4)) % (m64 - 1).max(1) + 1;
            (offset, skip)
        })
        .collect();
    let mut next = vec![0_u64; sorted.len()];
    let mut filled_slots = vec![false; m];
    let mut filled = 0;
    'fill: loop {
        for (i, (_, id)) in sorted.iter().enumerate() {
            let (offset, skip) = perms[i];
            let mut c = ((offset + next[i] * skip) % m64) as usize;
            while filled_slots[c] {
                next[i] += 1;
                c = ((offset + next[i] * skip) % m64) as usize;
            }
            filled_slots[c] = true;
            table[c] = *id;
            next[i] += 1;
            filled += 1;
            if filled == m {
                break 'fill;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_ebpf_common::MAGLEV_TABLE_SIZE;
    use std::net::Ipv4Addr;

    fn backends(n: u32) -> Vec<(BackendAddr, u32)> {
        (1..=n)
            .map(|i| {
                (
                    BackendAddr {
                        ip: Ipv4Addr::new(10, 244, (i / 200) as u8, (i % 200) as u8 + 1),
                        port: 8080,
                    },
                    i,
                )
            })
            .collect()
    }

    fn table(b: &[(BackendAddr, u32)]) -> Vec<u32> {
        let mut t = vec![0; MAGLEV_TABLE_SIZE];
        populate(b, &mut t);
        t
    }

    #[test]
    fn every_backend_gets_a_near_equal_share() {
        let t = table(&backends(10));
        let mut counts = [0_usize; 11];
        for id in &t {
            counts[*id as usize] += 1;
        }
        assert_eq!(counts[0], 0, "no empty entries");
        let ideal = MAGLEV_TABLE_SIZE / 10;
        for c in &counts[1..] {
            assert!(
                c.abs_diff(ideal) <= ideal / 50,
                "share {c} vs ideal {ideal}"
            );
        }
    }

    #[test]
    fn order_of_backends_does_not_matter() {
        let b = backends(7);
        let mut r = b.clone();
        r.reverse();
        assert_eq!(table(&b), table(&r));
    }

    #[test]
    fn adding_a_backend_moves_few_other_flows() {
        let before = table(&backends(10));
        let after = table(&backends(11));
        let moved_elsewhere = before
            .iter()
            .zip(&after)
            .filter(|(b, a)| b != a && **a != 11)
            .count();
        let to_new = after.iter().filter(|a| **a == 11).count();
        // The new backend takes about 1/11 of the table; other entries (almost) all stay.
        assert!(to_new.abs_diff(MAGLEV_TABLE_SIZE / 11) < MAGLEV_TABLE_SIZE / 100);
        assert!(
            moved_elsewhere * 100 < MAGLEV_TABLE_SIZE,
            "{moved_elsewhere} entries moved between old backends"
        );
    }

    #[test]
    fn removing_a_backend_moves_only_its_flows_and_few_others() {
        let all = backends(10);
        let before = table(&all);
        let after = table(&all[1..]);
        let moved_elsewhere = before
            .iter()
            .zip(&after)
            .filter(|(b, a)| b != a && **b != 1)
            .count();
        assert!(after.iter().all(|a| *a != 1));
        assert!(
            moved_elsewhere * 100 < MAGLEV_TABLE_SIZE,
            "{moved_elsewhere} entries of surviving backends moved"
        );
    }

    #[test]
    fn no_backends_means_an_empty_table() {
        assert!(table(&[]).iter().all(|id| *id == 0));
    }
}
