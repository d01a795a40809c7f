//! `/proc/<pid>/mountinfo`: the one parser of its lines and the one decoder of its octal
//! escapes, shared by the host's disk figures ([`find_mount`]) and the cgroup mounts
//! (`crate::cgroup::CgroupMounts::parse_mountinfo`).

use std::{borrow::Cow, ffi::OsString, os::unix::ffi::OsStringExt, path::PathBuf};

/// The fields of one mountinfo line that this crate uses, still escaped as the kernel
/// wrote them (decode with [`unescape`], [`unescape_str`] or [`unescape_path`]).
///
/// A line is `id parent major:minor root mount-point options [optional…] - fstype source
/// super-options` (proc(5)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MountInfoLine<'a> {
    /// The fifth field.
    pub mount_point: &'a str,
    /// The first field after the `-` separator; `None` if the line has no separator.
    pub fstype: Option<&'a str>,
    /// The mount source (`/dev/sda1`, `tmpfs`, `cgroup`, …).
    pub source: Option<&'a str>,
    /// The per-superblock options (`rw,cpu,cpuacct` for a v1 cgroup hierarchy).
    pub super_options: Option<&'a str>,
}

impl<'a> MountInfoLine<'a> {
    /// Splits one line; `None` when it has fewer than five fields.
    pub fn parse(line: &'a str) -> Option<Self> {
        let mut fields = line.split(' ');
        let mount_point = fields.nth(4)?;
        let mut after = fields.skip_while(|f| *f != "-").skip(1);
        Some(Self {
            mount_point,
            fstype: after.next(),
            source: after.next(),
            super_options: after.next(),
        })
    }

    /// Every line of a mountinfo text that has a mount point.
    pub fn lines(text: &'a str) -> impl Iterator<Item = Self> + 'a {
        text.lines().filter_map(Self::parse)
    }
}

/// Undoes mountinfo's octal escapes (`\040` for a space, `\011` tab, `\012` newline,
/// `\134` backslash). A backslash not followed by three octal digits of a byte value
/// (`\9`, `\04` at the end, `\777`) is kept as it is.
pub fn unescape(field: &str) -> Cow<'_, [u8]> {
    let bytes = field.as_bytes();
    if !bytes.contains(&b'\\') {
        return Cow::Borrowed(bytes);
    }
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let byte = bytes
            .get(i + 1..i + 4)
            .filter(|_| bytes[i] == b'\\')
            .filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)))
            .and_then(|d| {
                let value = d.iter().fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
                u8::try_from(value).ok()
            });
        match byte {
            Some(byte) => {
                out.push(byte);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    Cow::Owned(out)
}

/// [`unescape`] as text; bytes that are not UTF-8 become U+FFFD.
pub fn unescape_str(field: &str) -> Cow<'_, str> {
    match unescape(field) {
        Cow::Borrowed(_) => Cow::Borrowed(field),
        Cow::Owned(bytes) => Cow::Owned(String::from_utf8_lossy(&bytes).into_owned()),
    }
}

/// [`unescape`] as a path, byte for byte.
pub fn unescape_path(field: &str) -> PathBuf {
    PathBuf::from(OsString::from_vec(unescape(field).into_owned()))
}

/// Whether the absolute path `path` lies on or below `mountpoint` (by whole components:
/// `/data` holds `/data/x` but not `/database`).
fn is_beneath(path: &str, mountpoint: &str) -> bool {
    mountpoint == "/"
        || path
            .strip_prefix(mountpoint)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// The mount holding a path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    /// The mount source (`/dev/sda1`, `tmpfs`, …), which gopsutil reports as the device.
    pub device: String,
    pub mountpoint: String,
}

/// The mount of `/proc/<pid>/mountinfo` that holds the absolute, canonical `path`: the
/// longest mount point that is a prefix of it; of equal ones the last, which is mounted
/// over the others.
pub fn find_mount(mountinfo: &str, path: &str) -> Option<Mount> {
    let mut best: Option<(Cow<'_, str>, &str)> = None;
    for line in MountInfoLine::lines(mountinfo) {
        let source = line.source.unwrap_or("none");
        let mountpoint = unescape_str(line.mount_point);
        if is_beneath(path, &mountpoint)
            && best
                .as_ref()
                .is_none_or(|(b, _)| mountpoint.len() >= b.len())
        {
            best = Some((mountpoint, source));
        }
    }
    best.map(|(mountpoint, source)| Mount {
        device: unescape_str(source).into_owned(),
        mountpoint: mountpoint.into_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
30 27 8:17 / /data rw,relatime shared:5 master:2 - xfs /dev/sdb1 rw
31 30 0:40 / /data/nomad\\040alloc rw - tmpfs tmpfs rw
32 27 8:33 / /data rw - ext4 /dev/sdc1 rw
";

    #[test]
    fn mount_of_a_path() {
        let m = |path| find_mount(MOUNTINFO, path).map(|m| (m.device, m.mountpoint));
        let pair = |d: &str, p: &str| Some((d.to_string(), p.to_string()));
        assert_eq!(m("/var/lib/nomad"), pair("/dev/sda1", "/"));
        assert_eq!(m("/"), pair("/dev/sda1", "/"));
        assert_eq!(
            m("/database"),
            pair("/dev/sda1", "/"),
            "prefix by component"
        );
        assert_eq!(
            m("/data/x"),
            pair("/dev/sdc1", "/data"),
            "the later mount is on top"
        );
        assert_eq!(m("/data"), pair("/dev/sdc1", "/data"));
        assert_eq!(m("/data/nomad alloc/a"), pair("tmpfs", "/data/nomad alloc"));
        assert_eq!(m("/proc/1"), pair("proc", "/proc"));
        assert_eq!(find_mount("", "/x"), None);
        assert_eq!(find_mount("garbage\n1 2\n", "/x"), None);
        assert_eq!(unescape_str("a\\011b\\134c\\9"), "a\tb\\c\\9");
    }

    #[test]
    fn unescapes_octal_and_keeps_other_backslashes() {
        assert_eq!(
            unescape_path(r"/a\040b\011c\134d"),
            PathBuf::from("/a b\tc\\d")
        );
        assert_eq!(unescape_path(r"/x\9y\04"), PathBuf::from(r"/x\9y\04"));
        assert_eq!(unescape_path(r"/end\"), PathBuf::from(r"/end\"));
        assert_eq!(unescape_path(r"/big\777"), PathBuf::from(r"/big\777"));
        assert!(matches!(unescape("/plain"), Cow::Borrowed(_)));
    }

    #[test]
    fn line_fields() {
        let line = MountInfoLine::parse(
            "32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid shared:10 - cgroup cgroup rw,cpu,cpuacct",
        )
        .unwrap();
        assert_eq!(
            line,
            MountInfoLine {
                mount_point: "/sys/fs/cgroup/cpu,cpuacct",
                fstype: Some("cgroup"),
                source: Some("cgroup"),
                super_options: Some("rw,cpu,cpuacct"),
            }
        );
        let no_separator = MountInfoLine::parse("1 2 3 4 /m opts").unwrap();
        assert_eq!((no_separator.fstype, no_separator.source), (None, None));
        assert_eq!(MountInfoLine::parse("1 2 3 4"), None);
    }
}
