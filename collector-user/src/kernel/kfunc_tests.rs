use super::*;

const NEW: i32 = 0x4b46_0001;
const NEXT: i32 = 0x4b46_0002;
const KFUNCS: [(i32, &str); 2] = [(NEW, "kfunc_new"), (NEXT, "kfunc_next")];

fn insn(code: u8, regs: u8, off: i16, imm: i32) -> [u8; 8] {
    let mut insn = [code, regs, 0, 0, 0, 0, 0, 0];
    insn[2..4].copy_from_slice(&off.to_le_bytes());
    insn[4..8].copy_from_slice(&imm.to_le_bytes());
    insn
}

/// A 64-bit little-endian ELF file with the given sections: (type, flags, contents).
fn elf(sections: &[(u32, u64, Vec<u8>)]) -> Vec<u8> {
    let mut file = vec![0u8; 64];
    file[0..4].copy_from_slice(ELF_MAGIC);
    file[4] = ELFCLASS64;
    file[5] = ELFDATA2LSB;
    let mut placed = Vec::new();
    for (_, _, contents) in sections {
        placed.push((file.len(), contents.len()));
        file.extend_from_slice(contents);
    }
    let table = file.len();
    file.extend_from_slice(&[0; 64]); // section 0: SHT_NULL
    for ((kind, flags, _), (offset, size)) in sections.iter().zip(&placed) {
        let mut header = [0u8; 64];
        header[4..8].copy_from_slice(&kind.to_le_bytes());
        header[8..16].copy_from_slice(&flags.to_le_bytes());
        header[0x18..0x20].copy_from_slice(&(*offset as u64).to_le_bytes());
        header[0x20..0x28].copy_from_slice(&(*size as u64).to_le_bytes());
        file.extend_from_slice(&header);
    }
    file[0x28..0x30].copy_from_slice(&(table as u64).to_le_bytes());
    file[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
    file[0x3c..0x3e].copy_from_slice(&(sections.len() as u16 + 1).to_le_bytes());
    file
}

fn code(insns: &[[u8; 8]]) -> Vec<u8> {
    insns.concat()
}

fn resolve(name: &str) -> Option<u32> {
    match name {
        "kfunc_new" => Some(64081),
        "kfunc_next" => Some(64084),
        _ => None,
    }
}

fn section(file: &[u8], index: usize) -> &[u8] {
    let table = u64::from_le_bytes(file[0x28..0x30].try_into().unwrap()) as usize;
    let header = table + index * 64;
    let offset = u64::from_le_bytes(file[header + 0x18..header + 0x20].try_into().unwrap());
    let size = u64::from_le_bytes(file[header + 0x20..header + 0x28].try_into().unwrap());
    &file[offset as usize..(offset + size) as usize]
}

#[test]
fn exact_placeholder_calls_in_code_become_kfunc_calls() {
    let program = code(&[
        insn(0xb7, 0x01, 0, 0), // r1 = 0
        insn(CALL, 0, 0, NEW),
        insn(CALL, 0, 0, 1),      // a real helper: bpf_map_lookup_elem
        insn(CALL, 0x10, 0, NEW), // a BPF-to-BPF call with that offset: not ours
        insn(0x18, 0, 0, NEXT),   // a 64-bit load of the same number: not a call
        insn(CALL, 0, 0, NEXT),
        insn(0x95, 0, 0, 0), // exit
    ]);
    let data = code(&[insn(CALL, 0, 0, NEW)]);
    let mut file = elf(&[
        (SHT_PROGBITS, SHF_EXECINSTR, program.clone()),
        (SHT_PROGBITS, 0, data.clone()),
    ]);
    let patched = patch_calls(&mut file, &KFUNCS, resolve).unwrap();
    assert_eq!(
        patched,
        Patched {
            calls: 2,
            missing: vec![]
        }
    );
    let expected = code(&[
        insn(0xb7, 0x01, 0, 0),
        insn(CALL, 0x20, 0, 64081),
        insn(CALL, 0, 0, 1),
        insn(CALL, 0x10, 0, NEW),
        insn(0x18, 0, 0, NEXT),
        insn(CALL, 0x20, 0, 64084),
        insn(0x95, 0, 0, 0),
    ]);
    assert_eq!(section(&file, 1), &expected[..]);
    assert_eq!(section(&file, 2), &data[..], "data is not code: left alone");
}

#[test]
fn a_function_the_kernel_lacks_is_named_and_its_calls_left_as_they_are() {
    let program = code(&[
        insn(CALL, 0, 0, NEW),
        insn(CALL, 0, 0, NEXT),
        insn(CALL, 0, 0, NEXT),
    ]);
    let mut file = elf(&[(SHT_PROGBITS, SHF_EXECINSTR, program.clone())]);
    let only_new = |name: &str| (name == "kfunc_new").then_some(7);
    let patched = patch_calls(&mut file, &KFUNCS, only_new).unwrap();
    assert_eq!(
        patched,
        Patched {
            calls: 1,
            missing: vec!["kfunc_next"]
        }
    );
    assert_eq!(&section(&file, 1)[8..], &program[8..]);
}

#[test]
fn malformed_objects_are_errors_not_panics() {
    let good = elf(&[(SHT_PROGBITS, SHF_EXECINSTR, code(&[insn(CALL, 0, 0, NEW)]))]);
    let mut not_elf = good.clone();
    not_elf[0] = 0;
    let mut big_endian = good.clone();
    big_endian[5] = 2;
    let mut section_past_end = good.clone();
    let table = good.len() - 2 * 64;
    let size_field = table + 64 + 0x20;
    section_past_end[size_field..size_field + 8].copy_from_slice(&u64::MAX.to_le_bytes());
    let mut table_past_end = good.clone();
    table_past_end[0x28..0x30].copy_from_slice(&(u64::MAX - 8).to_le_bytes());
    for (what, mut file) in [
        ("not ELF", not_elf),
        ("big-endian", big_endian),
        ("section past the end", section_past_end),
        ("table past the end", table_past_end),
        ("truncated", good[..40].to_vec()),
        ("empty", Vec::new()),
    ] {
        let result = patch_calls(&mut file, &KFUNCS, resolve);
        assert!(
            matches!(result, Err(KfuncError::Malformed(_))),
            "{what}: {result:?}"
        );
    }
}

/// The daemon's own object has the placeholders only where the programs call kfuncs:
/// patching it with every function missing changes nothing.
#[test]
fn the_daemons_objects_parse_and_nothing_else_is_touched() {
    for object in [
        crate::kernel::accounting::TASK_STORAGE_PROGRAMS,
        crate::kernel::accounting::THREAD_HASH_PROGRAMS,
    ] {
        if object.is_empty() {
            continue; // built with AYA_BUILD_SKIP
        }
        let mut copy = object.to_vec();
        let patched = patch_calls(&mut copy, &collector_common::kfunc::ALL, |_| None).unwrap();
        assert_eq!(patched.calls, 0);
        assert_eq!(copy, object);
    }
}
