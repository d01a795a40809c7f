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
use tracing::info;

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

/// Drops every capability, optionally switching to `user` first.
pub fn drop_privileges(user: Option<&str>) -> Result<(), SecurityError> {
    // SAFETY: prctl/setgroups/setgid/setuid/capset take plain integers or pointers to
    // values that live for the call.
    unsafe {
        // The bounding set first: emptying it needs CAP_SETPCAP, which is gone once the
        // user changes. Effective capabilities are untouched by this, so setuid below
        // still works.
        for cap in 0..=last_cap() {
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
        let data = [CapData::default(); 2];
        check(
            "capset",
            libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) as libc::c_int,
        )?;
    }
    let left = effective_capabilities();
    if left.trim_start_matches('0').is_empty() {
        info!("dropped every capability (no_new_privs set)");
        Ok(())
    } else {
        Err(SecurityError::StillPrivileged(left))
    }
}
