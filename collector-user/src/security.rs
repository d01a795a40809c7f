//! Dropping privileges once the eBPF programs are attached and the listener is bound.
//!
//! After start-up the daemon needs no capability at all: it reads world-readable files in
//! cgroupfs and /proc, and uses eBPF objects through descriptors it already holds (which
//! the kernel does not re-check). So it clears every capability set (effective,
//! permitted, inheritable, ambient and the bounding set), sets `no_new_privs`, and can
//! switch to an unprivileged user. This must run before any other thread exists:
//! capabilities are per thread, and threads started later inherit the dropped sets.

use std::{ffi::CString, io};

use thiserror::Error;
use tracing::{info, warn};

#[derive(Debug, Error)]
pub enum SecurityError {
    #[error("unknown user `{0}`")]
    UnknownUser(String),
    #[error("{step}: {source}")]
    Sys {
        step: &'static str,
        source: io::Error,
    },
    #[error("capabilities are still held after dropping them: {0}")]
    StillPrivileged(String),
}

fn check(step: &'static str, rc: libc::c_int) -> Result<(), SecurityError> {
    if rc < 0 {
        Err(SecurityError::Sys {
            step,
            source: io::Error::last_os_error(),
        })
    } else {
        Ok(())
    }
}

/// (uid, gid) of `name`.
fn lookup_user(name: &str) -> Result<(libc::uid_t, libc::gid_t), SecurityError> {
    let c_name = CString::new(name).map_err(|_| SecurityError::UnknownUser(name.to_owned()))?;
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16384];
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: all pointers are valid for the sizes given.
    let rc = unsafe {
        libc::getpwnam_r(
            c_name.as_ptr(),
            &mut pwd,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 || result.is_null() {
        return Err(SecurityError::UnknownUser(name.to_owned()));
    }
    Ok((pwd.pw_uid, pwd.pw_gid))
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(63)
}

/// The effective capability mask of this thread, from /proc.
pub fn effective_capabilities() -> String {
    std::fs::read_to_string("/proc/thread-self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:").map(|v| v.trim().to_owned()))
        })
        .unwrap_or_default()
}

/// `CAP_BPF` (Linux 5.8+).
pub const CAP_BPF: u32 = 39;

/// Whether a thread without capabilities is refused every `bpf(2)` command, even on
/// descriptors it holds: kernels before 6.5 check `unprivileged_bpf_disabled` for every
/// command (Debian's 5.10 sets it), later ones only for loading programs and creating
/// maps. Probed on a short-lived thread that drops its own capabilities (they are
/// per-thread), with a lookup on an invalid descriptor: `EPERM` is the refusal, `EBADF`
/// means the command got past that check.
pub fn bpf_needs_capability() -> bool {
    std::thread::spawn(|| {
        let mut header = CapHeader {
            version: LINUX_CAPABILITY_VERSION_3,
            pid: 0,
        };
        let data = [CapData::default(); 2];
        // SAFETY: capset with a valid header and two data structs (version 3); it changes
        // only this thread's capabilities.
        let rc = unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) };
        if rc < 0 {
            return false;
        }
        // union bpf_attr for BPF_MAP_LOOKUP_ELEM: map_fd, pad, key, value, flags.
        let mut attr = [0u64; 4];
        attr[0] = u64::from(u32::MAX); // map_fd = -1
                                       // SAFETY: attr is a valid, zeroed buffer of the size passed, for the whole call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                1, // BPF_MAP_LOOKUP_ELEM
                attr.as_mut_ptr(),
                std::mem::size_of_val(&attr) as libc::c_uint,
            )
        };
        rc < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
    })
    .join()
    .unwrap_or(false)
}

/// Drops every capability but those in `keep` (see [`bpf_needs_capability`]),
/// optionally switching to `user` first.
pub fn drop_privileges(user: Option<&str>, keep: &[u32]) -> Result<(), SecurityError> {
    // SAFETY: prctl/setgroups/setgid/setuid/capset take plain integers or pointers to
    // values that live for the call.
    unsafe {
        // The bounding set first: emptying it needs CAP_SETPCAP, which is gone once the
        // user changes. Effective capabilities are untouched by this, so setuid below
        // still works.
        if !keep.is_empty() && user.is_some() {
            // Keep the permitted set across setuid, to retain `keep` below.
            check(
                "prctl(PR_SET_KEEPCAPS)",
                libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0),
            )?;
        }
        for cap in (0..=last_cap()).filter(|cap| !keep.contains(cap)) {
            let rc = libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0);
            // EINVAL: a capability this kernel does not know. EPERM: started without
            // CAP_SETPCAP (an unprivileged user), whose bounding set cannot give it
            // anything under no_new_privs anyway.
            let errno = io::Error::last_os_error().raw_os_error();
            if rc < 0 && errno != Some(libc::EINVAL) && errno != Some(libc::EPERM) {
                check("prctl(PR_CAPBSET_DROP)", rc)?;
            }
        }
        if let Some(name) = user {
            let (uid, gid) = lookup_user(name)?;
            check("setgroups", libc::setgroups(1, &gid))?;
            check("setgid", libc::setgid(gid))?;
            check("setuid", libc::setuid(uid))?;
            info!(user = name, uid, gid, "switched user");
        }
        check(
            "prctl(PR_SET_NO_NEW_PRIVS)",
            libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0),
        )?;
        let _ = libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        );
        let mut header = CapHeader {
            version: LINUX_CAPABILITY_VERSION_3,
            pid: 0,
        };
        let mut data = [CapData::default(); 2];
        for &cap in keep {
            let bit = 1u32 << (cap % 32);
            data[(cap / 32) as usize].effective |= bit;
            data[(cap / 32) as usize].permitted |= bit;
        }
        check(
            "capset",
            libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) as libc::c_int,
        )?;
    }
    let left = u64::from_str_radix(effective_capabilities().trim(), 16).unwrap_or(u64::MAX);
    let allowed = keep.iter().fold(0u64, |mask, &cap| mask | 1 << cap);
    if left & !allowed != 0 {
        return Err(SecurityError::StillPrivileged(format!("{left:016x}")));
    }
    if keep.is_empty() {
        info!("dropped every capability (no_new_privs set)");
    } else {
        warn!(
            kept = ?keep,
            "dropped every capability but CAP_BPF (no_new_privs set): this kernel refuses \
             every bpf() command to a process without it, even reading its own maps"
        );
    }
    Ok(())
}
