//! Errors of the /proc and /sys readers.

use std::{io, path::PathBuf};

use thiserror::Error;

/// A /proc or /sys file did not have the shape the kernel documents. Carries only static
/// text so that building one never allocates: the hot readers may hit many of them.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("{file}: {field} is missing")]
    Missing {
        file: &'static str,
        field: &'static str,
    },
    #[error("{file}: {field} is not a valid number")]
    Invalid {
        file: &'static str,
        field: &'static str,
    },
}

/// Reading a file failed for a reason other than its process having exited (which the
/// readers report as `Ok(None)`, not as an error).
#[derive(Debug, Error)]
pub enum ProcError {
    #[error("reading {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("parsing {}: {source}", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: ParseError,
    },
}

/// Whether `err` means that the process whose /proc directory was being read has gone:
/// its directory no longer resolves (`ENOENT`), or it exited between open and read
/// (`ESRCH`). Both are the normal end of a process, not a failure.
pub(crate) fn is_gone(err: &io::Error) -> bool {
    matches!(err.raw_os_error(), Some(libc::ENOENT) | Some(libc::ESRCH))
}
