//! `/proc/self/mountinfo`: the cgroup mounts (`CgroupMounts::parse_mountinfo`) and the
//! mount holding a data directory (`find_mount`), over the same text.
#![no_main]

use std::path::Path;

use collector_user::{
    cgroup::{CgroupMounts, HostKind, V1_CONTROLLERS},
    procfs::find_mount,
};
use libfuzzer_sys::fuzz_target;

/// Paths the daemon asks `find_mount` about (data dirs) and the root.
const PATHS: &[&str] = &[
    "/",
    "/var/lib/nomad",
    "/var/lib/nomad/alloc",
    "/sys/fs/cgroup",
    "/a b",
];

/// Whether `path` is `mountpoint` or below it, by whole components.
fn beneath(path: &str, mountpoint: &str) -> bool {
    mountpoint == "/" || Path::new(path).starts_with(mountpoint)
}

fuzz_target!(init: collector_fuzz::catch_stack_overflow(), |data: &[u8]| {
    // The daemon reads mountinfo as UTF-8 (`Tree::read_to_string`).
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };

    let mounts = CgroupMounts::parse_mountinfo(text);
    for controller in mounts.v1.keys() {
        assert!(
            V1_CONTROLLERS.contains(&controller.as_str()),
            "{controller:?} is not a v1 controller"
        );
    }
    let kind = mounts.kind();
    assert_eq!(kind == HostKind::None, mounts.v1.is_empty() && mounts.v2.is_none());
    assert_eq!(kind == HostKind::V2, mounts.v1.is_empty() && mounts.v2.is_some());
    // A second parse of the same text gives the same mounts.
    assert_eq!(CgroupMounts::parse_mountinfo(text), mounts);

    let mut queries: Vec<&str> = PATHS.to_vec();
    // Also ask about the mount points the text itself names.
    queries.extend(text.lines().filter_map(|l| l.split(' ').nth(4)).take(8));
    for path in queries {
        if let Some(mount) = find_mount(text, path) {
            assert!(
                beneath(path, &mount.mountpoint),
                "{path:?} is not on the mount {:?} found for it",
                mount.mountpoint
            );
        }
    }
});
