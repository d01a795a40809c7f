//! Dropping privileges once the eBPF programs are attached and the listener is bound.
//!
//! After start-up the daemon needs no capability at all: it reads world-readable files in
//! cgroupfs and /proc, and uses eBPF objects through descriptors it already holds (which
//! the kernel does not re-check). So it clears every capability set (effective,
//! permitted, inheritable, ambient and the bounding set), sets `no_new_privs`, and can
//! switch to an unprivileged user. This must run before any other thread exists:
//! capabilities are per thread, and threads started later inherit the dropped sets.

use std::{ffi::CString, io};

use caps::{CapSet, CapsHashSet};
use rustix::thread::CapabilitySet;

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

/// A failure of the `caps` crate, which reports errors as text.
fn caps_error(step: &'static str) -> impl FnOnce(caps::errors::CapsError) -> SecurityError {
    move |err| SecurityError::Sys {
        step,
        source: io::Error::other(err),
    }
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
    // SAFETY: `passwd` is plain data (integers and pointers) for which all zeroes is a
    // valid value; getpwnam_r fills it.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16384];
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: `c_name` is NUL-terminated, `pwd` and `result` are writable, `buf` is valid
    // for `buf.len()` bytes, and all of them outlive the call; the strings that `pwd`
    // points to afterwards live in `buf`, and only its integer fields are read below.
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

/// The capabilities of `keep` that the `caps` crate knows (every one this daemon keeps).
fn capability_set(keep: &[u32]) -> CapsHashSet {
    caps::all()
        .into_iter()
        .filter(|cap| keep.contains(&u32::from(cap.index())))
        .collect()
}

/// Whether a thread without capabilities is refused every `bpf(2)` command, even on
/// descriptors it holds: kernels before 6.5 check `unprivileged_bpf_disabled` for every
/// command (Debian's 5.10 sets it), later ones only for loading programs and creating
/// maps. Probed on a short-lived thread that drops its own capabilities (they are
/// per-thread), with a lookup on an invalid descriptor: `EPERM` is the refusal, `EBADF`
/// means the command got past that check.
pub fn bpf_needs_capability() -> bool {
    std::thread::spawn(|| {
        // Permitted (which clears effective with it), then inheritable: this thread only.
        if caps::clear(None, CapSet::Permitted).is_err()
            || caps::clear(None, CapSet::Inheritable).is_err()
        {
            return false;
        }
        // union bpf_attr for BPF_MAP_LOOKUP_ELEM: map_fd, pad, key, value, flags.
        let mut attr = [0u64; 4];
        attr[0] = u64::from(u32::MAX); // map_fd = -1
                                       // SAFETY: `attr` is a zeroed buffer of the size passed, valid for the whole call;
                                       // with map_fd -1 the kernel reads it and writes nothing.
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

/// Switches the whole process (glibc applies set*id to every thread) to `uid`/`gid`,
/// with `gid` as its only supplementary group.
fn switch_user(uid: libc::uid_t, gid: libc::gid_t) -> Result<(), SecurityError> {
    // SAFETY: one group read from a local that outlives the call.
    check("setgroups", unsafe { libc::setgroups(1, &gid) })?;
    // SAFETY: takes a plain integer.
    check("setgid", unsafe { libc::setgid(gid) })?;
    // SAFETY: takes a plain integer.
    check("setuid", unsafe { libc::setuid(uid) })
}

/// Drops every capability but those in `keep` (see [`bpf_needs_capability`]),
/// optionally switching to `user` first.
pub fn drop_privileges(user: Option<&str>, keep: &[u32]) -> Result<(), SecurityError> {
    // The bounding set first: emptying it needs CAP_SETPCAP, which is gone once the user
    // changes. Effective capabilities are untouched by this, so setuid below still works.
    if !keep.is_empty() && user.is_some() {
        // Keep the permitted set across setuid, to retain `keep` below.
        caps::securebits::set_keepcaps(true).map_err(caps_error("prctl(PR_SET_KEEPCAPS)"))?;
    }
    // By number up to the kernel's last, including any the `caps` crate does not name yet
    // (hence rustix, which also keeps the errno).
    for cap in (0..=last_cap()).filter(|cap| !keep.contains(cap)) {
        let Some(set) = 1u64.checked_shl(cap).map(CapabilitySet::from_bits_retain) else {
            continue;
        };
        match rustix::thread::remove_capability_from_bounding_set(set) {
            // EINVAL: a capability this kernel does not know. EPERM: started without
            // CAP_SETPCAP (an unprivileged user), whose bounding set cannot give it
            // anything under no_new_privs anyway.
            Ok(()) | Err(rustix::io::Errno::INVAL | rustix::io::Errno::PERM) => {}
            Err(errno) => {
                return Err(SecurityError::Sys {
                    step: "prctl(PR_CAPBSET_DROP)",
                    source: errno.into(),
                })
            }
        }
    }
    if let Some(name) = user {
        let (uid, gid) = lookup_user(name)?;
        switch_user(uid, gid)?;
        info!(user = name, uid, gid, "switched user");
    }
    rustix::thread::set_no_new_privs(true).map_err(|errno| SecurityError::Sys {
        step: "prctl(PR_SET_NO_NEW_PRIVS)",
        source: errno.into(),
    })?;
    // Kernels before 4.3 have no ambient set: nothing to clear there.
    let _ = caps::clear(None, CapSet::Ambient);
    // Effective first: a permitted set smaller than the effective one is refused.
    let kept = capability_set(keep);
    caps::set(None, CapSet::Effective, &kept).map_err(caps_error("capset (effective)"))?;
    caps::set(None, CapSet::Permitted, &kept).map_err(caps_error("capset (permitted)"))?;
    caps::clear(None, CapSet::Inheritable).map_err(caps_error("capset (inheritable)"))?;
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
