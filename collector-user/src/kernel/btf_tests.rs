use super::*;

/// BTF with the given types (each: name offset, info, size or type, extra words) and
/// string section.
fn btf(types: &[(u32, u32, u32, &[u32])], strings: &[u8]) -> Vec<u8> {
    let mut tdata = Vec::new();
    for (name, info, size_or_type, extra) in types {
        for word in [*name, *info, *size_or_type].iter().chain(extra.iter()) {
            tdata.extend_from_slice(&word.to_le_bytes());
        }
    }
    let mut data = Vec::new();
    data.extend_from_slice(&MAGIC.to_le_bytes());
    data.extend_from_slice(&[1, 0]); // version, flags
    for word in [
        24,
        0,
        tdata.len() as u32,
        tdata.len() as u32,
        strings.len() as u32,
    ] {
        data.extend_from_slice(&word.to_le_bytes());
    }
    data.extend_from_slice(&tdata);
    data.extend_from_slice(strings);
    data
}

#[test]
fn functions_are_found_by_name_and_nothing_else_is_one() {
    let strings = b"\0int\0foo\0bar\0";
    let data = btf(
        &[
            (1, KIND_INT << 24, 4, &[32]),            // [1] int
            (0, KIND_FUNC_PROTO << 24, 1, &[]),       // [2] int (void)
            (5, KIND_FUNC << 24, 2, &[]),             // [3] foo
            (9, (KIND_TYPEDEF << 24), 1, &[]),        // [4] typedef int bar
            (9, (KIND_FUNC << 24) | 1 << 16, 2, &[]), // [5] bar (global linkage)
        ],
        strings,
    );
    let btf = Btf::parse(&data).unwrap();
    assert_eq!(btf.func_id("foo"), Some(3));
    assert_eq!(
        btf.func_id("bar"),
        Some(5),
        "a typedef of the same name is not it"
    );
    assert_eq!(btf.func_id("int"), None);
    assert_eq!(btf.func_id("baz"), None);
}

/// The running kernel's BTF has its functions (the css task iterator's kfuncs from 6.7
/// on), and no function of a made-up name.
#[test]
fn the_running_kernels_functions_are_found() {
    // Every kernel the daemon supports has BTF (CONFIG_DEBUG_INFO_BTF), as do these
    // machines.
    let btf = Btf::from_sys_fs().unwrap();
    assert!(btf.func_id("schedule").is_some());
    assert_eq!(btf.func_id("nomad_collector_no_such_function"), None);
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut parts = release
        .trim()
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let version = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    for (_, name) in collector_common::kfunc::ALL {
        assert_eq!(
            btf.func_id(name).is_some(),
            version >= (6, 7),
            "{name} on {version:?}"
        );
    }
}
