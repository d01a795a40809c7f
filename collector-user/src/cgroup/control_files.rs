//! Control files kept open per cgroup directory and re-read with `pread` from offset 0.
//!
//! Every task's cgroup memory, throttling, pressure and OOM files are read every
//! interval. Opening a cgroupfs file (path walk, a new `struct file`, kernfs' open-file
//! and seq_file state) and closing it again costs several times the read itself, so a
//! file is opened once and kept; each read regenerates its content, since a cgroup
//! control file is a seq_file that shows its state afresh when read from offset 0.
//!
//! What that costs: one descriptor per file, and in the kernel the open file and the
//! seq_file's buffer (one page, allocated at the first read and kept until the close),
//! about 5 KiB per file, charged to the daemon's memory cgroup. A global budget keeps
//! the descriptors well inside the open-files limit; past it files are opened per read.
//!
//! A file that does not exist is remembered too, and looked for again only every
//! [`ABSENT_RETRY`] reads: a kernel without `memory.peak` should not cost a failed open
//! per task per interval.

use std::{
    fs::File,
    io,
    os::{fd::OwnedFd, unix::fs::FileExt},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Mutex,
    },
};

/// Reads of an absent file answered from memory before it is looked for again.
pub const ABSENT_RETRY: u8 = 60;

/// Files kept open by every [`ControlFiles`], and how many may be.
static KEPT: AtomicUsize = AtomicUsize::new(0);
static BUDGET: AtomicUsize = AtomicUsize::new(DEFAULT_BUDGET);
/// For a soft open-files limit of 1024 (the usual default) with room for everything else.
const DEFAULT_BUDGET: usize = 512;

/// Lets up to `files` control files stay open in all (the daemon sets it from its
/// open-files limit at start-up).
pub fn set_budget(files: usize) {
    BUDGET.store(files, Ordering::Relaxed);
}

/// Control files kept open now, in all.
pub fn kept() -> usize {
    KEPT.load(Ordering::Relaxed)
}

/// One file name's state in a directory.
#[derive(Debug)]
struct Entry {
    name: &'static str,
    state: State,
}

#[derive(Debug)]
enum State {
    Open(File),
    /// Not there at the last open; looked for again after this many reads.
    Absent {
        retry_in: u8,
    },
}

impl Drop for Entry {
    fn drop(&mut self) {
        if matches!(self.state, State::Open(_)) {
            KEPT.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// The kept control files of one cgroup directory.
#[derive(Debug, Default)]
pub struct ControlFiles {
    entries: Mutex<Vec<Entry>>,
}

fn absent() -> io::Error {
    io::Error::from_raw_os_error(libc::ENOENT)
}

impl ControlFiles {
    /// Reads file `name` whole into `text`: through the kept descriptor, else opened
    /// with `open` (and kept when the budget allows). An error leaves nothing kept for
    /// the file, so the next read opens it again; a missing file reads as `ENOENT`.
    pub fn read(
        &self,
        name: &'static str,
        open: impl FnOnce() -> io::Result<OwnedFd>,
        text: &mut String,
    ) -> io::Result<()> {
        // A poisoned lock only means another reader panicked mid-read: the list is
        // still a valid list of entries.
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        // Names are the readers' literals: the address usually settles it.
        if let Some(i) = entries
            .iter()
            .position(|e| std::ptr::eq(e.name, name) || e.name == name)
        {
            match &mut entries[i].state {
                State::Open(file) => {
                    let read = pread_into(file, text);
                    if read.is_err() {
                        entries.swap_remove(i);
                    }
                    return read;
                }
                State::Absent { retry_in } if *retry_in > 0 => {
                    *retry_in -= 1;
                    return Err(absent());
                }
                State::Absent { .. } => {
                    entries.swap_remove(i);
                }
            }
        }
        let file = match open() {
            Ok(fd) => File::from(fd),
            Err(e) => {
                if e.raw_os_error() == Some(libc::ENOENT) {
                    entries.push(Entry {
                        name,
                        state: State::Absent {
                            retry_in: ABSENT_RETRY,
                        },
                    });
                }
                return Err(e);
            }
        };
        pread_into(&file, text)?;
        if KEPT.load(Ordering::Relaxed) < BUDGET.load(Ordering::Relaxed) {
            KEPT.fetch_add(1, Ordering::Relaxed);
            entries.push(Entry {
                name,
                state: State::Open(file),
            });
        }
        Ok(())
    }

    /// Closes the kept file (or forgets the absent one) of this name: a file no longer
    /// read, whose descriptor and kernel memory would otherwise stay. A later read opens
    /// the file again.
    pub fn close(&self, name: &str) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.retain(|e| e.name != name);
    }

    /// The names of the entries, kept open or known absent.
    #[cfg(test)]
    pub fn names(&self) -> Vec<&'static str> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.iter().map(|e| e.name).collect()
    }
}

thread_local! {
    /// The read buffer, kept at its full length so that no read zero-fills it again.
    static BYTES: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0; 4096]);
}

/// Reads the whole file from offset 0 into `text` (cleared first).
///
/// A cgroup control file (other than the PID lists) shows its whole content as one
/// seq_file record, and seq_file hands a record out in full when the buffer has room:
/// a read shorter than the buffer is the end, which saves the second `pread` that
/// would only return 0.
fn pread_into(file: &File, text: &mut String) -> io::Result<()> {
    text.clear();
    BYTES.with(|bytes| {
        let bytes = &mut *bytes.borrow_mut();
        let len = pread_bytes(file, bytes)?;
        let read = std::str::from_utf8(&bytes[..len])
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "file content is not UTF-8"))?;
        text.push_str(read);
        Ok(())
    })
}

/// Reads into `bytes` from offset 0 until a short read; returns the length read.
fn pread_bytes(file: &File, bytes: &mut Vec<u8>) -> io::Result<usize> {
    let mut len = 0;
    loop {
        match file.read_at(&mut bytes[len..], len as u64) {
            Ok(n) => {
                len += n;
                if len < bytes.len() {
                    return Ok(len);
                }
                let grown = bytes.len() * 2;
                bytes.resize(grown, 0);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn open(path: &std::path::Path) -> impl FnOnce() -> io::Result<OwnedFd> + '_ {
        move || File::open(path).map(OwnedFd::from)
    }

    /// A file `name` holding `content` in a temp dir, read once through new
    /// `ControlFiles` (which then keep it): the dir, the file's path, the files, and
    /// the text read.
    fn read_once(
        name: &'static str,
        content: &str,
    ) -> (tempfile::TempDir, std::path::PathBuf, ControlFiles, String) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        std::fs::write(&path, content).unwrap();
        let files = ControlFiles::default();
        let mut text = String::new();
        files.read(name, open(&path), &mut text).unwrap();
        (dir, path, files, text)
    }

    #[test]
    fn a_closed_file_is_no_longer_kept_and_opens_again_when_read() {
        let (_dir, path, files, mut text) = read_once("memory.usage_in_bytes", "7\n");
        let entries = |files: &ControlFiles| files.names().len();
        assert_eq!(entries(&files), 1);
        files.close("memory.peak");
        assert_eq!(entries(&files), 1, "another name closes nothing");
        files.close("memory.usage_in_bytes");
        assert_eq!(entries(&files), 0);
        std::fs::write(&path, "8\n").unwrap();
        files
            .read("memory.usage_in_bytes", open(&path), &mut text)
            .unwrap();
        assert_eq!(text, "8\n");
        assert_eq!(entries(&files), 1);
    }

    #[test]
    fn a_kept_file_is_read_again_from_the_start() {
        let (_dir, path, files, mut text) = read_once("memory.current", "100\n");
        assert_eq!(text, "100\n");
        let before = kept();
        // Rewritten in place: the kept descriptor sees the new content, no reopen.
        let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all(b"250\n").unwrap();
        files
            .read("memory.current", || panic!("must not reopen"), &mut text)
            .unwrap();
        assert_eq!(text, "250\n");
        assert_eq!(kept(), before);
    }

    #[test]
    fn content_longer_than_the_buffer_is_read_whole() {
        let long: String = (0..2000).map(|i| format!("key{i} {i}\n")).collect();
        let (_dir, _path, _files, text) = read_once("memory.stat", &long);
        assert_eq!(text, long);
    }

    #[test]
    fn an_absent_file_is_looked_for_again_only_after_the_retry_count() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("memory.peak");
        let files = ControlFiles::default();
        let mut text = String::new();
        let err = files
            .read("memory.peak", open(&path), &mut text)
            .unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
        std::fs::write(&path, "7\n").unwrap();
        for _ in 0..ABSENT_RETRY {
            let err = files
                .read(
                    "memory.peak",
                    || panic!("must not look again yet"),
                    &mut text,
                )
                .unwrap_err();
            assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
        }
        files.read("memory.peak", open(&path), &mut text).unwrap();
        assert_eq!(text, "7\n", "found once it appeared");
    }

    #[test]
    fn a_failed_read_keeps_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cpu.stat");
        std::fs::write(&path, [0xff, 0xfe]).unwrap();
        let files = ControlFiles::default();
        let mut text = String::new();
        assert!(files.read("cpu.stat", open(&path), &mut text).is_err());
        std::fs::write(&path, "nr_throttled 3\n").unwrap();
        files.read("cpu.stat", open(&path), &mut text).unwrap();
        assert_eq!(text, "nr_throttled 3\n");
    }
}
