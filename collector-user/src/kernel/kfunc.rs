//! Kfunc calls for programs built with aya 0.14, which can neither emit nor relocate
//! them (aya-rs/aya#432): a program calls a kernel function as if it were a helper whose
//! id is a placeholder from `collector_common::kfunc`, and [`patch_calls`] rewrites each
//! such `call` in a copy of the object, before aya parses it, into what libbpf would
//! have produced: `src_reg = BPF_PSEUDO_KFUNC_CALL`, `imm` = the function's BTF type id
//! in the running kernel's `vmlinux` BTF (`off` 0: vmlinux, not a module).
//!
//! aya's loader leaves such calls alone: it relocates only BPF-to-BPF calls
//! (`src_reg = BPF_PSEUDO_CALL`). The kernel then checks the call as it would libbpf's:
//! the function must exist, be registered for the program's type, and get arguments of
//! its BTF prototype. The cgroup walk (`tracked_cgroup_threads`) calls the css task
//! iterator's kfuncs this way on 6.7+.
//!
//! Only executable sections are patched, and only exact placeholder calls: `code` 0x85
//! (`BPF_JMP | BPF_CALL | BPF_K`), both registers 0, `off` 0.

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum KfuncError {
    #[error("malformed eBPF object: {0}")]
    Malformed(&'static str),
}

/// What [`patch_calls`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Patched {
    /// Calls rewritten into kfunc calls.
    pub calls: usize,
    /// Kernel functions called by the object that this kernel's BTF lacks: their calls
    /// are left as placeholders, which the verifier rejects (as an unknown helper), so
    /// only the programs that call them fail to load.
    pub missing: Vec<&'static str>,
}

const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
const ELFCLASS64: u8 = 2;
const ELFDATA2LSB: u8 = 1;
const SHT_PROGBITS: u32 = 1;
const SHF_EXECINSTR: u64 = 4;
const SECTION_HEADER_SIZE: usize = 64;
const INSN_SIZE: usize = 8;
/// `BPF_JMP | BPF_CALL | BPF_K`.
const CALL: u8 = 0x85;
/// `src_reg` of a call to a kernel function by BTF id.
const BPF_PSEUDO_KFUNC_CALL: u8 = 2;

/// Rewrites the placeholder calls of `kfuncs` (placeholder, function name) in the
/// 64-bit little-endian ELF `object`, resolving each name with `btf_id`.
pub fn patch_calls(
    object: &mut [u8],
    kfuncs: &[(i32, &'static str)],
    btf_id: impl Fn(&str) -> Option<u32>,
) -> Result<Patched, KfuncError> {
    let resolved: Vec<(i32, &'static str, Option<u32>)> = kfuncs
        .iter()
        .map(|&(placeholder, name)| (placeholder, name, btf_id(name)))
        .collect();
    let mut patched = Patched::default();
    for (offset, size) in executable_sections(object)? {
        let code = object
            .get_mut(offset..offset + size)
            .ok_or(KfuncError::Malformed("a section runs past the end"))?;
        for insn in code.chunks_exact_mut(INSN_SIZE) {
            let imm = i32::from_le_bytes([insn[4], insn[5], insn[6], insn[7]]);
            if insn[0] != CALL || insn[1] != 0 || insn[2] != 0 || insn[3] != 0 {
                continue;
            }
            let Some(&(_, name, id)) = resolved.iter().find(|(p, _, _)| *p == imm) else {
                continue;
            };
            match id.and_then(|id| i32::try_from(id).ok()) {
                Some(id) => {
                    insn[1] = BPF_PSEUDO_KFUNC_CALL << 4;
                    insn[4..8].copy_from_slice(&id.to_le_bytes());
                    patched.calls += 1;
                }
                None => {
                    if !patched.missing.contains(&name) {
                        patched.missing.push(name);
                    }
                }
            }
        }
    }
    Ok(patched)
}

/// (file offset, size) of each executable `SHT_PROGBITS` section: the programs' code.
fn executable_sections(object: &[u8]) -> Result<Vec<(usize, usize)>, KfuncError> {
    let bytes = |offset: usize, len: usize| {
        object
            .get(offset..offset + len)
            .ok_or(KfuncError::Malformed("truncated"))
    };
    let u16_at = |offset| bytes(offset, 2).map(|b| u16::from_le_bytes([b[0], b[1]]) as usize);
    let u32_at = |offset| bytes(offset, 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    let u64_at =
        |offset| bytes(offset, 8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")));
    let usize_at = |offset| {
        u64_at(offset).and_then(|value| {
            usize::try_from(value).map_err(|_| KfuncError::Malformed("offset out of range"))
        })
    };
    if bytes(0, 4)? != ELF_MAGIC {
        return Err(KfuncError::Malformed("not an ELF file"));
    }
    if bytes(4, 2)? != [ELFCLASS64, ELFDATA2LSB] {
        return Err(KfuncError::Malformed("not a 64-bit little-endian ELF file"));
    }
    let table = usize_at(0x28)?; // e_shoff
    let entry_size = u16_at(0x3a)?; // e_shentsize
    let count = u16_at(0x3c)?; // e_shnum
    if count > 0 && entry_size != SECTION_HEADER_SIZE {
        return Err(KfuncError::Malformed("unexpected section header size"));
    }
    let mut sections = Vec::new();
    for index in 0..count {
        let header = table
            .checked_add(index * SECTION_HEADER_SIZE)
            .ok_or(KfuncError::Malformed("offset out of range"))?;
        let kind = u32_at(header + 4)?;
        let flags = u64_at(header + 8)?;
        if kind != SHT_PROGBITS || flags & SHF_EXECINSTR == 0 {
            continue;
        }
        let offset = usize_at(header + 0x18)?;
        let size = usize_at(header + 0x20)?;
        if offset
            .checked_add(size)
            .is_none_or(|end| end > object.len())
        {
            return Err(KfuncError::Malformed("a section runs past the end"));
        }
        sections.push((offset, size));
    }
    Ok(sections)
}

#[cfg(test)]
#[path = "kfunc_tests.rs"]
mod tests;
