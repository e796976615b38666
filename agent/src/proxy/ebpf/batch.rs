//! `BPF_MAP_UPDATE_BATCH`: many map writes in one bpf() call.
//!
//! Programming 10 000 Services of 10 backends writes about 120 000 map entries; one bpf()
//! call each took about a second. aya 0.14 has no batch API, so this issues the command
//! itself. Kernels without batch support for a map type answer `EINVAL`/`ENOTSUPP`; the caller
//! then writes entry by entry.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// `BPF_MAP_UPDATE_BATCH` from `enum bpf_cmd` (linux/bpf.h, since 5.6).
const BPF_MAP_UPDATE_BATCH: nix::libc::c_long = 26;

/// The `batch` member of `union bpf_attr` (linux/bpf.h): the kernel reads `size_of` bytes of
/// it and treats the rest of the union as zero.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Writes `entries` (`BPF_ANY`: create or replace) into the map `fd`, in order. Returns how
/// many were written with the error when the kernel stopped early.
pub fn update<K: aya::Pod, V: aya::Pod>(
    fd: BorrowedFd<'_>,
    entries: &[(K, V)],
) -> Result<(), (usize, io::Error)> {
    if entries.is_empty() {
        return Ok(());
    }
    let keys: Vec<K> = entries.iter().map(|(k, _)| *k).collect();
    let values: Vec<V> = entries.iter().map(|(_, v)| *v).collect();
    let count = u32::try_from(entries.len())
        .map_err(|_| (0, io::Error::from(io::ErrorKind::InvalidInput)))?;
    let mut attr = BatchAttr {
        keys: keys.as_ptr() as u64,
        values: values.as_ptr() as u64,
        count,
        map_fd: fd.as_raw_fd() as u32,
        ..BatchAttr::default()
    };
    #[expect(
        unsafe_code,
        reason = "the bpf() syscall has no safe wrapper for batch updates in aya 0.14"
    )]
    // SAFETY: `attr` is a valid, initialised `bpf_attr.batch` of the size passed; `keys` and
    // `values` are `count` contiguous `Pod` elements of the map's key and value types (the
    // typed aya map the fd comes from checked their sizes) and outlive the call; the kernel
    // only reads them and writes `attr.count`.
    let ret = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_bpf,
            BPF_MAP_UPDATE_BATCH,
            &raw mut attr,
            std::mem::size_of::<BatchAttr>(),
        )
    };
    if ret < 0 {
        return Err((attr.count as usize, io::Error::last_os_error()));
    }
    Ok(())
}

/// Whether an error of [`update`] means the kernel cannot batch this map (write one by one).
pub fn unsupported(e: &io::Error) -> bool {
    // ENOTSUPP (524) is the kernel-internal "not supported" some map types answer with.
    matches!(
        e.raw_os_error(),
        Some(nix::libc::EINVAL | nix::libc::EOPNOTSUPP | 524)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attr_matches_the_kernel_layout() {
        // struct { u64 in_batch, out_batch, keys, values; u32 count, map_fd; u64 elem_flags,
        // flags; } of union bpf_attr.
        assert_eq!(std::mem::size_of::<BatchAttr>(), 56);
        assert_eq!(std::mem::offset_of!(BatchAttr, count), 32);
        assert_eq!(std::mem::offset_of!(BatchAttr, map_fd), 36);
        assert_eq!(std::mem::offset_of!(BatchAttr, elem_flags), 40);
    }

    #[test]
    fn writes_a_hash_map_in_one_call() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIPPING writes_a_hash_map_in_one_call: needs root (BPF maps)");
            return;
        }
        use aya::maps::{HashMap, IterableMap as _, MapData};
        use std::os::fd::AsFd as _;
        let map = HashMap::<MapData, u32, u64>::create(1024, 0).unwrap();
        let entries: Vec<(u32, u64)> = (0..1000).map(|i| (i, u64::from(i) * 7)).collect();
        update(map.map().fd().as_fd(), &entries).unwrap();
        assert_eq!(map.get(&999, 0).unwrap(), 999 * 7);
        assert_eq!(map.keys().count(), 1000);
        // Replacing works too (BPF_ANY), and a full map stops with the count written.
        let more: Vec<(u32, u64)> = (500..1100).map(|i| (i, 1)).collect();
        let (done, e) = update(map.map().fd().as_fd(), &more).unwrap_err();
        assert_eq!(done, 524, "500 replaced, 24 new until the map is full");
        assert_eq!(e.raw_os_error(), Some(nix::libc::E2BIG));
        assert_eq!(map.get(&500, 0).unwrap(), 1);
    }
}
