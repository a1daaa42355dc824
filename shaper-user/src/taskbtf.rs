//! Where the running kernel keeps a process's name: the offsets of
//! `task_struct.group_leader` and `task_struct.comm`, read from the kernel's
//! own type information (/sys/kernel/btf/vmlinux).
//!
//! The socket hooks run in the thread that makes the socket, and that thread's
//! name is not the process's: Go runtime threads, a browser's "Socket Thread",
//! any thread named with prctl(PR_SET_NAME). The name a rule on `cmd` means is
//! the process's (the thread group leader's, what /proc/PID/comm shows), so the
//! hooks read it through `current->group_leader->comm` at these offsets. The
//! offsets differ between kernel builds; the eBPF object takes them as globals
//! set at load (0 = unknown: the hooks fall back to the thread's name).
//!
//! Only what that needs of the BTF format is parsed: the header, and for each
//! type its kind and length, so that the walk can step over it; the members of
//! the struct named `task_struct`.

use std::path::Path;

/// The kernel's BTF, as every kernel with CONFIG_DEBUG_INFO_BTF exposes it.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

const BTF_MAGIC: u16 = 0xeb9f;
const KIND_STRUCT: u32 = 4;

/// Byte offsets of the two fields in `struct task_struct`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskOffsets {
    pub group_leader: u32,
    pub comm: u32,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BtfError {
    #[error("cannot read {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("not BTF data (bad magic or header)")]
    Header,
    #[error("type {0} runs past the end of the type section")]
    Truncated(u32),
    #[error("type {id} has kind {kind}, which this reader does not know")]
    UnknownKind { id: u32, kind: u32 },
    #[error("no struct task_struct with fields group_leader and comm")]
    NotFound,
}

/// Reads the offsets from the running kernel's BTF.
pub fn task_offsets() -> Result<TaskOffsets, BtfError> {
    let path = Path::new(VMLINUX_BTF);
    let data = std::fs::read(path)
        .map_err(|e| BtfError::Read { path: path.display().to_string(), reason: e.to_string() })?;
    find_task_offsets(&data)
}

/// Little helper reading the u32 at `at`, if the slice holds it.
fn u32_at(data: &[u8], at: usize) -> Option<u32> {
    let bytes = data.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
}

/// The NUL-terminated name at `offset` in the string section.
fn name_at(strings: &[u8], offset: u32) -> &[u8] {
    let rest = strings.get(offset as usize..).unwrap_or_default();
    let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    &rest[..end]
}

/// Bytes that follow the 12-byte common header of a type of `kind` with `vlen` items.
fn trailer_len(kind: u32, vlen: usize) -> Option<usize> {
    Some(match kind {
        // INT: one u32 of encoding. VAR, DECL_TAG: one u32.
        1 | 14 | 17 => 4,
        // PTR, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT, FUNC, FLOAT, TYPE_TAG.
        2 | 7..=12 | 16 | 18 => 0,
        // ARRAY: element type, index type, count.
        3 => 12,
        // STRUCT, UNION, DATASEC, ENUM64: 12 bytes per item.
        4 | 5 | 15 | 19 => vlen * 12,
        // ENUM, FUNC_PROTO: 8 bytes per item.
        6 | 13 => vlen * 8,
        _ => return None,
    })
}

/// Finds the offsets in raw BTF data (little-endian, as on every host shaper runs on).
pub fn find_task_offsets(data: &[u8]) -> Result<TaskOffsets, BtfError> {
    let header = |at| u32_at(data, at).ok_or(BtfError::Header);
    if data.len() < 24 || u16::from_le_bytes([data[0], data[1]]) != BTF_MAGIC {
        return Err(BtfError::Header);
    }
    let hdr_len = header(4)? as usize;
    let (type_off, type_len) = (header(8)? as usize, header(12)? as usize);
    let (str_off, str_len) = (header(16)? as usize, header(20)? as usize);
    let section = |off: usize, len: usize| {
        let start = hdr_len.checked_add(off)?;
        data.get(start..start.checked_add(len)?)
    };
    let types = section(type_off, type_len).ok_or(BtfError::Header)?;
    let strings = section(str_off, str_len).ok_or(BtfError::Header)?;
    let mut at = 0usize;
    let mut id = 1u32;
    while at < types.len() {
        let (Some(name_off), Some(info)) = (u32_at(types, at), u32_at(types, at + 4)) else {
            return Err(BtfError::Truncated(id));
        };
        let (kind, vlen) = ((info >> 24) & 0x1f, (info & 0xffff) as usize);
        let trailer = trailer_len(kind, vlen).ok_or(BtfError::UnknownKind { id, kind })?;
        let members = at + 12;
        let next =
            members.checked_add(trailer).filter(|&n| n <= types.len()).ok_or(BtfError::Truncated(id))?;
        if kind == KIND_STRUCT && name_at(strings, name_off) == b"task_struct" {
            if let Some(offsets) = task_members(types, strings, members, vlen, info >> 31 == 1) {
                return Ok(offsets);
            }
        }
        at = next;
        id += 1;
    }
    Err(BtfError::NotFound)
}

/// The two fields among a struct's `vlen` members starting at `at`.
fn task_members(
    types: &[u8],
    strings: &[u8],
    at: usize,
    vlen: usize,
    bitfields: bool,
) -> Option<TaskOffsets> {
    let (mut group_leader, mut comm) = (None, None);
    for i in 0..vlen {
        let member = at + i * 12;
        let name = name_at(strings, u32_at(types, member)?);
        let raw = u32_at(types, member + 8)?;
        // With kind_flag set the low 24 bits are the bit offset.
        let bits = if bitfields { raw & 0x00ff_ffff } else { raw };
        let slot = match name {
            b"group_leader" => &mut group_leader,
            b"comm" => &mut comm,
            _ => continue,
        };
        *slot = (bits % 8 == 0).then_some(bits / 8);
    }
    Some(TaskOffsets { group_leader: group_leader?, comm: comm? })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A BTF blob with an INT, a struct `task_struct` and the given strings.
    fn blob(members: &[(&str, u32)], kind_flag: bool) -> Vec<u8> {
        let mut strings = vec![0u8];
        let mut name = |s: &str| {
            let off = strings.len() as u32;
            strings.extend_from_slice(s.as_bytes());
            strings.push(0);
            off
        };
        let mut types = Vec::new();
        let mut push = |v: u32| types.extend_from_slice(&v.to_le_bytes());
        // type 1: int
        push(name("int"));
        push(1 << 24);
        push(4);
        push(32);
        // type 2: struct task_struct
        push(name("task_struct"));
        push((KIND_STRUCT << 24) | (u32::from(kind_flag) << 31) | members.len() as u32);
        push(4096);
        for (member, byte_offset) in members {
            push(name(member));
            push(1);
            push(byte_offset * 8);
        }
        let mut out = Vec::new();
        out.extend_from_slice(&BTF_MAGIC.to_le_bytes());
        out.extend_from_slice(&[1, 0]);
        for v in [24u32, 0, types.len() as u32, types.len() as u32, strings.len() as u32] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&types);
        out.extend_from_slice(&strings);
        out
    }

    #[test]
    fn finds_the_offsets_in_a_crafted_blob() {
        let data = blob(&[("state", 24), ("group_leader", 1600), ("comm", 2000)], false);
        assert_eq!(find_task_offsets(&data), Ok(TaskOffsets { group_leader: 1600, comm: 2000 }));
        let data = blob(&[("group_leader", 8), ("comm", 16)], true);
        assert_eq!(find_task_offsets(&data), Ok(TaskOffsets { group_leader: 8, comm: 16 }));
    }

    #[test]
    fn missing_fields_and_bad_data_are_errors() {
        assert_eq!(find_task_offsets(&blob(&[("comm", 16)], false)), Err(BtfError::NotFound));
        assert_eq!(find_task_offsets(b"not btf at all, not btf at all"), Err(BtfError::Header));
        let mut data = blob(&[("group_leader", 8), ("comm", 16)], false);
        data.truncate(40);
        assert!(find_task_offsets(&data).is_err());
    }

    #[test]
    fn reads_the_running_kernel() {
        // Every kernel shaper supports has BTF; the offsets are plausible ones.
        if !Path::new(VMLINUX_BTF).exists() {
            println!("skipped: no {VMLINUX_BTF}");
            return;
        }
        let offsets = task_offsets().unwrap();
        assert!(offsets.group_leader > 0 && offsets.comm > 0, "{offsets:?}");
    }
}
