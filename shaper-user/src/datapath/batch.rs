//! Dumps of the hash maps in batches: one `BPF_MAP_LOOKUP_BATCH` syscall per
//! few thousand entries instead of aya's `BPF_MAP_GET_NEXT_KEY` +
//! `BPF_MAP_LOOKUP_ELEM` per entry. Entries stream to a visitor from two
//! buffers reused for every chunk. A range of a per-CPU array is read the
//! same way ([`per_cpu_range`]).
//!
//! # What a batched dump of an LRU hash guarantees while the kernel writes
//!
//! The kernel walks the table bucket by bucket (the batch token is the next
//! bucket's index) and copies each bucket whole under its lock. A key always
//! hashes to the same bucket, so a dump never yields a key twice, even when
//! the classifier inserts, updates or the LRU evicts meanwhile. It is not a
//! snapshot of one instant: an entry written into a bucket the dump already
//! passed is missed until the next dump, and one removed after its bucket was
//! copied is still reported (with the value it had then). Callers must treat
//! "absent from the dump" as "absent, or newer than the dump" (look again
//! before deleting, as the daemon's stale-flow check does) and values as
//! at-most-this-old. Batch lookups do not mark entries as recently used, so a
//! dump does not change what the LRU evicts.
//!
//! The per-entry walk (the fallback) is weaker: when the key it stands on is
//! deleted or evicted between two calls, `BPF_MAP_GET_NEXT_KEY` starts again
//! from the first bucket, so under churn it yields keys twice and can take
//! far longer than one pass.

use std::{
    borrow::Borrow,
    io,
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd},
};

use aya::{
    maps::{HashMap, IterableMap as _, MapData, MapError, PerCpuArray},
    sys::SyscallError,
    Pod,
};

/// Entries fetched per syscall.
pub const CHUNK: usize = 4096;
/// `BPF_MAP_LOOKUP_BATCH` (linux/bpf.h, kernel >= 5.6).
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
/// The kernel's `ENOTSUPP` (not in libc): a map type without batch operations.
const ENOTSUPP: i32 = 524;
/// A chunk is retried this often when the kernel finds a bucket busy.
const BUSY_RETRIES: u32 = 16;

/// How to walk a map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Batches, or the per-entry walk when the kernel has no batch lookup.
    Auto,
    /// Batches only: fail where the kernel has none.
    Batched,
    /// One lookup per entry, as aya iterates.
    PerEntry,
}

/// What a walk did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Walked {
    /// Entries handed to the visitor.
    pub entries: usize,
    /// Syscalls made (batched: one per chunk; per entry: two per entry).
    pub syscalls: usize,
    /// Whether the batches were used.
    pub batched: bool,
}

/// `union bpf_attr` as the `BPF_MAP_*_BATCH` commands read it.
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
const _: () = assert!(std::mem::size_of::<BatchAttr>() == 56);

fn syscall_error(io_error: io::Error) -> MapError {
    MapError::SyscallError(SyscallError { call: "BPF_MAP_LOOKUP_BATCH", io_error })
}

/// Every entry of `map`, handed to `visit`, walked as `mode` says with
/// `chunk` entries per batch.
pub fn for_each<T: Borrow<MapData>, K: Pod + Default, V: Pod + Default>(
    map: &HashMap<T, K, V>,
    mode: Mode,
    chunk: usize,
    visit: &mut dyn FnMut(&K, &V),
) -> Result<Walked, MapError> {
    if mode != Mode::PerEntry {
        let fd = map.map().fd().as_fd();
        let mut walked = Walked { batched: true, ..Walked::default() };
        match batched(fd, chunk.max(1), visit, &mut walked) {
            // Only before the first entry: a walk from the start would repeat them.
            Err(e) if mode == Mode::Auto && walked.entries == 0 && unsupported(&e) => {
                log::debug!("no batch lookups here ({e}); walking entry by entry");
            }
            Err(e) => return Err(syscall_error(e)),
            Ok(()) => return Ok(walked),
        }
    }
    let mut walked = Walked::default();
    for entry in map.iter() {
        walked.syscalls += 2;
        // An entry that vanished between its key and its lookup is skipped.
        if let Ok((key, value)) = entry {
            visit(&key, &value);
            walked.entries += 1;
        }
    }
    Ok(walked)
}

/// Entries `start..start + count` of a per-CPU array, each as its `cpus`
/// values in CPU order (`out[i * cpus + cpu]`), in one `BPF_MAP_LOOKUP_BATCH`
/// (an array's indices are walked in order; each value is a moment's, not
/// one snapshot of the range). `None` where the kernel has no batch lookup,
/// or where the kernel's per-CPU stride (8-byte multiples) is not `V`'s size.
pub fn per_cpu_range<T: Borrow<MapData>, V: Pod + Default>(
    map: &PerCpuArray<T, V>,
    start: u32,
    count: u32,
    cpus: usize,
) -> Result<Option<Vec<V>>, MapError> {
    if !std::mem::size_of::<V>().is_multiple_of(8) || count == 0 {
        return Ok(None);
    }
    let mut keys = vec![0u32; count as usize];
    let mut values = vec![V::default(); count as usize * cpus];
    // The batch starts after the index it is given (none: at index 0).
    let (before, mut next) = ([start.wrapping_sub(1), 0], [0u32; 2]);
    let mut attr = BatchAttr {
        in_batch: if start == 0 { 0 } else { before.as_ptr() as u64 },
        out_batch: next.as_mut_ptr() as u64,
        keys: keys.as_mut_ptr() as u64,
        values: values.as_mut_ptr() as u64,
        count,
        map_fd: map.map().fd().as_fd().as_raw_fd() as u32,
        ..BatchAttr::default()
    };
    // SAFETY: `attr` points at `count` u32 keys, `count` × `cpus` values of
    // `V` (the kernel's per-CPU stride, its size rounded up to 8 bytes, is
    // `V`'s size: checked above) and token buffers of an array's u32 key;
    // the kernel writes at most `count` entries and one token.
    match unsafe { lookup_batch(&mut attr) } {
        None => {}
        // The end of the array: fewer than asked for.
        Some(e) if e.raw_os_error() == Some(libc::ENOENT) => {
            values.truncate((attr.count.min(count)) as usize * cpus);
        }
        Some(e) if unsupported(&e) => return Ok(None),
        Some(e) => return Err(syscall_error(e)),
    }
    Ok(Some(values))
}

/// One `BPF_MAP_LOOKUP_BATCH`; the error, if it failed.
///
/// # Safety
/// `attr` must point at buffers for `count` keys and values of the map's
/// sizes and at token buffers of at least its key size.
unsafe fn lookup_batch(attr: &mut BatchAttr) -> Option<io::Error> {
    // SAFETY: the caller vouches for the buffers `attr` points at.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_LOOKUP_BATCH,
            attr as *mut BatchAttr,
            std::mem::size_of::<BatchAttr>() as u32,
        )
    };
    (rc < 0).then(io::Error::last_os_error)
}

/// The kernel refused a batch for want of the command or of the map type's
/// support.
fn unsupported(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EINVAL | libc::EOPNOTSUPP | ENOTSUPP | libc::ENOSYS))
}

/// Walks the map in batches, counting into `walked` as it goes.
fn batched<K: Pod + Default, V: Pod + Default>(
    fd: BorrowedFd<'_>,
    mut chunk: usize,
    visit: &mut dyn FnMut(&K, &V),
    walked: &mut Walked,
) -> Result<(), io::Error> {
    let mut keys = vec![K::default(); chunk];
    let mut values = vec![V::default(); chunk];
    // The token: the index of the next bucket (a u32; room for any size).
    let mut token = [0u64; 2];
    let mut first = true;
    let mut busy = 0;
    loop {
        let mut next = [0u64; 2];
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { token.as_ptr() as u64 },
            out_batch: next.as_mut_ptr() as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: chunk as u32,
            map_fd: fd.as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        // SAFETY: `attr` points at buffers of `chunk` keys and values of the
        // map's key and value sizes (aya checked them when it typed the map)
        // and at two token buffers larger than the kernel's u32 token; the
        // kernel writes at most `count` entries and one token.
        let error = unsafe { lookup_batch(&mut attr) };
        walked.syscalls += 1;
        let errno = error.as_ref().and_then(io::Error::raw_os_error);
        // The kernel reports what it copied on success and on these errors
        // only; on others (an unknown command) `count` is still ours.
        let filled = match errno {
            None | Some(libc::ENOENT | libc::ENOSPC | libc::EBUSY | libc::EDEADLK | libc::ETIMEDOUT) => {
                (attr.count as usize).min(chunk)
            }
            Some(_) => 0,
        };
        for (key, value) in keys[..filled].iter().zip(&values[..filled]) {
            visit(key, value);
        }
        walked.entries += filled;
        match errno {
            None => {}
            // The end of the table (the last chunk may still hold entries).
            Some(libc::ENOENT) => return Ok(()),
            // One bucket holds more entries than a chunk: make room, retry it.
            Some(libc::ENOSPC) if filled == 0 => {
                chunk *= 2;
                keys.resize(chunk, K::default());
                values.resize(chunk, V::default());
                continue;
            }
            Some(libc::EBUSY | libc::EDEADLK | libc::ETIMEDOUT) if busy < BUSY_RETRIES => busy += 1,
            Some(_) => return Err(error.unwrap_or_else(|| io::Error::from_raw_os_error(libc::EIO))),
        }
        token = next;
        first = false;
    }
}
