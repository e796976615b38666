//! Backend selection, shared by the socket-level and the NodePort programs: ClientIP affinity,
//! Maglev and random choice.

use aya_ebpf::helpers::generated::{bpf_get_prandom_u32, bpf_ktime_get_ns};
use skiff_ebpf_common::{
    AffinityKey, AffinityValue, ServiceKey, ServiceValue, MAGLEV_TABLE_SIZE, SVC_FLAG_AFFINITY,
    SVC_FLAG_MAGLEV,
};

use crate::maps::{AFFINITY, BACKENDS, MAGLEV, SERVICES};

/// Why a translation did not happen; every case lets the packet or call through.
pub enum Error {
    /// The slot or backend a service entry names is missing (an update in progress), or the
    /// packet could not be read or written.
    Inconsistent,
}

/// Picks a backend id: the client's sticky backend if ClientIP affinity holds one, else from
/// the Maglev table (with `flow_hash`) or a random slot. `client` identifies the client for
/// affinity: a network namespace cookie at socket level, the source address at tc level.
#[inline(always)]
pub fn select_backend(
    client: u64,
    flow_hash: impl FnOnce() -> u32,
    key: &mut ServiceKey,
    svc: &ServiceValue,
) -> Result<u32, Error> {
    if svc.flags & SVC_FLAG_AFFINITY == 0 {
        return pick(flow_hash, key, svc);
    }
    let akey = AffinityKey {
        client_cookie: client,
        rev_nat_index: svc.rev_nat_index,
        _pad: [0; 6],
    };
    // SAFETY: no arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let timeout_ns = u64::from(svc.affinity_timeout_secs) * 1_000_000_000;
    // SAFETY: copied out at once.
    if let Some(old) = unsafe { AFFINITY.get(&akey) }.copied() {
        // The agent purges entries of backends it removes from the service; checking the
        // backend map as well covers a backend deleted altogether.
        if now.wrapping_sub(old.last_used_ns) <= timeout_ns
            && BACKENDS.get_ptr(old.backend_id).is_some()
        {
            remember(&akey, now, old.backend_id);
            return Ok(old.backend_id);
        }
    }
    let id = pick(flow_hash, key, svc)?;
    remember(&akey, now, id);
    Ok(id)
}

#[inline(always)]
fn remember(akey: &AffinityKey, now: u64, backend_id: u32) {
    let val = AffinityValue {
        last_used_ns: now,
        backend_id,
        _pad: 0,
    };
    let _ = AFFINITY.insert(akey, &val, 0);
}

#[inline(always)]
fn pick(
    flow_hash: impl FnOnce() -> u32,
    key: &mut ServiceKey,
    svc: &ServiceValue,
) -> Result<u32, Error> {
    if svc.flags & SVC_FLAG_MAGLEV != 0 {
        if let Some(id) = maglev(flow_hash(), svc) {
            return Ok(id);
        }
        // No table (yet): fall back to a random slot.
    }
    // Callers refuse count 0 first; checked again so that no division-by-zero panic path is
    // compiled in: the verifier rejects programs that can end in one.
    let Some(count) = core::num::NonZeroU32::new(u32::from(svc.count)) else {
        return Err(Error::Inconsistent);
    };
    // SAFETY: no arguments.
    let rnd = unsafe { bpf_get_prandom_u32() };
    key.backend_slot = (rnd % count) as u16 + 1;
    // SAFETY: copied out at once.
    match unsafe { SERVICES.get(&*key) } {
        Some(slot) => Ok(slot.backend_id),
        None => Err(Error::Inconsistent),
    }
}

/// Looks a flow's hash up in the service's Maglev table.
#[inline(always)]
fn maglev(hash: u32, svc: &ServiceValue) -> Option<u32> {
    // Lemire's multiply-shift range reduction: a 32-bit hash times M, shifted right by 32, is
    // below M. The compiler knows that too and would drop the bounds check, then fold the
    // arithmetic into a form whose bound the verifier tracks too loosely; hiding the value
    // from it keeps an explicit `idx < M` check that the verifier follows.
    let idx =
        core::hint::black_box(((u64::from(fmix(hash)) * MAGLEV_TABLE_SIZE as u64) >> 32) as usize);
    let table = MAGLEV.get_ptr(svc.rev_nat_index)?;
    // SAFETY: the pointer comes from a successful lookup; `get` bounds-checks the index.
    let id = unsafe { (*table).backend_ids.get(idx).copied() }?;
    (id != 0).then_some(id)
}

/// One MurmurHash3 block step.
#[inline(always)]
pub fn mix(h: u32, v: u32) -> u32 {
    let k = v
        .wrapping_mul(0xcc9e_2d51)
        .rotate_left(15)
        .wrapping_mul(0x1b87_3593);
    (h ^ k)
        .rotate_left(13)
        .wrapping_mul(5)
        .wrapping_add(0xe654_6b64)
}

/// MurmurHash3's finaliser.
#[inline(always)]
fn fmix(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}
