//! Reading files beneath a fixed directory (a cgroup mount, /proc) without ever following
//! a symlink or `..` out of it.
//!
//! Every path the daemon opens is built from names it read from these trees itself, never
//! from request text; this module makes the guarantee structural: [`Tree`] holds the root
//! open as a directory fd and resolves relative paths with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)`. On kernels without openat2 (before 5.6)
//! it refuses any `..` component and opens the last component with `O_NOFOLLOW`.

use std::{
    ffi::{CStr, CString, OsStr, OsString},
    fs::File,
    io::{self, Read},
    os::{
        fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd},
        unix::ffi::{OsStrExt, OsStringExt},
    },
    path::{Component, Path, PathBuf},
    sync::atomic::{AtomicBool, Ordering},
};

/// A directory tree that files are read beneath.
#[derive(Debug)]
pub struct Tree {
    root: OwnedFd,
    path: PathBuf,
}

static NO_OPENAT2: AtomicBool = AtomicBool::new(false);

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))
}

/// Rejects absolute paths and `..`: names inside a tree are always relative and downward.
fn check_relative(rel: &Path) -> io::Result<()> {
    if rel
        .components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
    {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("refusing path outside the tree: {}", rel.display()),
        ))
    }
}

impl Tree {
    pub fn open(path: &Path) -> io::Result<Self> {
        let c = c_path(path)?;
        // SAFETY: c is a valid NUL-terminated string.
        let fd = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            // SAFETY: fd is a new descriptor we own.
            root: unsafe { OwnedFd::from_raw_fd(fd) },
            path: path.to_path_buf(),
        })
    }

    /// The tree's root as it was given.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens `rel` (relative to the root) with `flags` added to `O_CLOEXEC`.
    pub fn open_at(&self, rel: &Path, flags: libc::c_int) -> io::Result<OwnedFd> {
        open_beneath(self.root.as_fd(), rel, flags)
    }

    /// Reads the whole file `rel` into `buf` (cleared first).
    pub fn read_into(&self, rel: &Path, buf: &mut String) -> io::Result<()> {
        read_fd_into(self.open_at(rel, libc::O_RDONLY)?.as_fd(), buf)
    }

    /// Reads the whole file `rel` as raw bytes into `buf` (cleared first).
    pub fn read_bytes_into(&self, rel: &Path, buf: &mut Vec<u8>) -> io::Result<()> {
        buf.clear();
        let mut file = File::from(self.open_at(rel, libc::O_RDONLY)?);
        file.read_to_end(buf)?;
        Ok(())
    }

    pub fn read_to_string(&self, rel: &Path) -> io::Result<String> {
        let mut buf = String::new();
        self.read_into(rel, &mut buf)?;
        Ok(buf)
    }

    /// Names of the subdirectories of `rel` (symlinks and files are skipped).
    pub fn subdirs(&self, rel: &Path) -> io::Result<Vec<OsString>> {
        Ok(list_subdirs(self, rel)?
            .into_iter()
            .map(|d| d.name)
            .collect())
    }

    /// The subdirectories of `rel` with their inode numbers.
    pub fn subdirs_with_inodes(&self, rel: &Path) -> io::Result<Vec<SubDir>> {
        list_subdirs(self, rel)
    }

    /// (inode number, is a directory) of `rel`, without following a symlink.
    pub fn inode_of(&self, rel: &Path) -> io::Result<(u64, bool)> {
        let st = self.stat(rel)?;
        Ok((st.st_ino, st.st_mode & libc::S_IFMT == libc::S_IFDIR))
    }

    /// A number that changes whenever the set of subdirectories of `rel` does (one
    /// created, removed, or removed and created again under the same name), from one
    /// `readdir` pass and no allocation: [`inode_set_fingerprint`] of their inodes.
    /// (A directory's modification time would not do: cgroupfs leaves it unchanged when
    /// child cgroups come and go.)
    pub fn subdirs_fingerprint(&self, rel: &Path) -> io::Result<u64> {
        let mut inodes = InodeSet::default();
        visit_subdirs(self, rel, |_, inode| inodes.add(inode))?;
        Ok(inodes.fingerprint())
    }

    fn stat(&self, rel: &Path) -> io::Result<libc::stat64> {
        let fd = self.open_at(rel, libc::O_PATH)?;
        // SAFETY: zeroed stat filled by fstat on a valid descriptor.
        let mut st: libc::stat64 = unsafe { std::mem::zeroed() };
        if unsafe { libc::fstat64(fd.as_raw_fd(), &mut st) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(st)
    }
}

/// Opens `rel` beneath the directory `dir` with `flags` added to `O_CLOEXEC`: never
/// through a symlink, a magic link or `..`, so the result is inside `dir`'s tree.
pub fn open_beneath(dir: BorrowedFd<'_>, rel: &Path, flags: libc::c_int) -> io::Result<OwnedFd> {
    check_relative(rel)?;
    let rel = if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    };
    let c = c_path(rel)?;
    let flags = flags | libc::O_CLOEXEC;
    if !NO_OPENAT2.load(Ordering::Relaxed) {
        // SAFETY: open_how is plain data; zero is valid for every field.
        let mut how: libc::open_how = unsafe { std::mem::zeroed() };
        how.flags = flags as u64;
        how.resolve =
            libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;
        // SAFETY: valid dirfd, path and open_how for the duration of the call.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dir.as_raw_fd(),
                c.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        if fd >= 0 {
            // SAFETY: a new descriptor we own.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) });
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::ENOSYS) {
            return Err(err);
        }
        NO_OPENAT2.store(true, Ordering::Relaxed);
    }
    // SAFETY: as above.
    let fd = unsafe { libc::openat(dir.as_raw_fd(), c.as_ptr(), flags | libc::O_NOFOLLOW) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Reads all of `fd` into `buf` (cleared first) with plain `read(2)` calls into the
/// reused buffer. Unlike `read_to_string`, it does not ask the size first: pseudo-files
/// have none, and the extra `fstat` + `lseek` per read showed in profiles.
pub fn read_fd_into(fd: BorrowedFd<'_>, buf: &mut String) -> io::Result<()> {
    let mut bytes = std::mem::take(buf).into_bytes();
    bytes.clear();
    let read = read_fd_bytes(fd, &mut bytes);
    match String::from_utf8(bytes) {
        Ok(text) => {
            *buf = text;
            read
        }
        Err(e) => {
            // Keep the allocation for the next read; report the bad content.
            let mut bytes = e.into_bytes();
            bytes.clear();
            *buf = String::from_utf8(bytes).expect("an empty buffer is UTF-8");
            read.and(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "file content is not UTF-8",
            )))
        }
    }
}

fn read_fd_bytes(fd: BorrowedFd<'_>, bytes: &mut Vec<u8>) -> io::Result<()> {
    loop {
        if bytes.capacity() - bytes.len() < 1024 {
            bytes.reserve(4096);
        }
        let spare = bytes.spare_capacity_mut();
        // SAFETY: reads at most spare.len() bytes into memory owned by `bytes`.
        let n = unsafe { libc::read(fd.as_raw_fd(), spare.as_mut_ptr().cast(), spare.len()) };
        match n {
            0 => return Ok(()),
            n if n > 0 => {
                // SAFETY: the kernel initialized n bytes past the old length.
                unsafe { bytes.set_len(bytes.len() + n as usize) };
            }
            _ => {
                let err = io::Error::last_os_error();
                if err.kind() != io::ErrorKind::Interrupted {
                    return Err(err);
                }
            }
        }
    }
}

/// (inode number, is a directory) of an open descriptor.
pub fn fd_inode(fd: BorrowedFd<'_>) -> io::Result<(u64, bool)> {
    // SAFETY: zeroed stat filled by fstat on a valid descriptor.
    let mut st: libc::stat64 = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat64(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((st.st_ino, st.st_mode & libc::S_IFMT == libc::S_IFDIR))
}

/// Accumulates an order-independent fingerprint of a set of inode numbers.
#[derive(Default)]
struct InodeSet {
    sum: u64,
    count: u64,
}

impl InodeSet {
    fn add(&mut self, inode: u64) {
        self.sum = self.sum.wrapping_add(mix(inode));
        self.count += 1;
    }

    fn fingerprint(&self) -> u64 {
        self.sum ^ mix(self.count)
    }
}

/// splitmix64's finalizer: spreads consecutive inode numbers over all 64 bits, so that
/// the sum of a set rarely equals the sum of another.
fn mix(x: u64) -> u64 {
    let x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    let x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The fingerprint [`Tree::subdirs_fingerprint`] gives for subdirectories with these
/// inodes, whatever their order.
pub fn inode_set_fingerprint(inodes: impl IntoIterator<Item = u64>) -> u64 {
    let mut set = InodeSet::default();
    for inode in inodes {
        set.add(inode);
    }
    set.fingerprint()
}

/// A subdirectory: its name and inode number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubDir {
    pub name: OsString,
    pub inode: u64,
}

impl SubDir {
    /// The name as UTF-8; cgroup names that are not UTF-8 are never Nomad's.
    pub fn name_str(&self) -> Option<&str> {
        self.name.to_str()
    }
}

/// Closes a `DIR*` (and with it the descriptor it owns) exactly once.
struct DirStream(*mut libc::DIR);

impl Drop for DirStream {
    fn drop(&mut self) {
        // SAFETY: self.0 came from a successful fdopendir and is closed only here.
        unsafe { libc::closedir(self.0) };
    }
}

/// Subdirectories of `rel` beneath `tree` (symlinks and files are skipped), with the
/// inode numbers `readdir` gives for free in `d_ino` (on cgroupfs the same number `stat`
/// returns: the cgroup id), which saves an `open`+`fstat` per directory.
fn list_subdirs(tree: &Tree, rel: &Path) -> io::Result<Vec<SubDir>> {
    let mut out = Vec::new();
    visit_subdirs(tree, rel, |name, inode| {
        out.push(SubDir {
            name: OsString::from_vec(name.to_vec()),
            inode,
        });
    })?;
    Ok(out)
}

/// Calls `visit(name, inode)` for each subdirectory of `rel` beneath `tree` (symlinks and
/// files skipped), in `readdir` order.
fn visit_subdirs(tree: &Tree, rel: &Path, mut visit: impl FnMut(&[u8], u64)) -> io::Result<()> {
    let fd = tree.open_at(rel, libc::O_RDONLY | libc::O_DIRECTORY)?;
    let raw = fd.as_raw_fd();
    // SAFETY: raw is a valid directory descriptor; on success the DIR* owns it.
    let dir = unsafe { libc::fdopendir(raw) };
    if dir.is_null() {
        return Err(io::Error::last_os_error()); // `fd` still owns and closes the descriptor
    }
    let _ = fd.into_raw_fd(); // now owned by `dir`
    let stream = DirStream(dir);
    loop {
        // SAFETY: errno is thread-local; clearing it tells end-of-directory from an error.
        unsafe { *libc::__errno_location() = 0 };
        // SAFETY: stream.0 is a valid DIR* until the stream is dropped.
        let entry = unsafe { libc::readdir64(stream.0) };
        if entry.is_null() {
            let err = io::Error::last_os_error();
            if err.raw_os_error().unwrap_or(0) != 0 {
                return Err(err);
            }
            return Ok(());
        }
        // SAFETY: entry points to a valid dirent64 until the next readdir on this stream.
        let (d_type, d_ino, name) = unsafe {
            let entry = &*entry;
            (
                entry.d_type,
                entry.d_ino,
                CStr::from_ptr(entry.d_name.as_ptr()).to_bytes(),
            )
        };
        if name == b"." || name == b".." {
            continue;
        }
        match d_type {
            libc::DT_DIR => visit(name, d_ino),
            libc::DT_UNKNOWN => {
                // Filesystems that do not fill d_type: ask, without following a symlink.
                if let Ok((inode, true)) = tree.inode_of(&rel.join(OsStr::from_bytes(name))) {
                    visit(name, inode);
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_beneath_and_refuses_to_escape() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        std::fs::write(dir.path().join("a/b/file"), "hello").unwrap();
        std::fs::write(dir.path().join("outside"), "secret").unwrap();
        std::os::unix::fs::symlink("../../outside", dir.path().join("a/b/link")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("a"), dir.path().join("a/dirlink")).unwrap();

        let tree = Tree::open(&dir.path().join("a")).unwrap();
        assert_eq!(tree.read_to_string(Path::new("b/file")).unwrap(), "hello");
        assert!(
            tree.read_to_string(Path::new("b/link")).is_err(),
            "symlink followed"
        );
        assert!(
            tree.read_to_string(Path::new("../outside")).is_err(),
            ".. followed"
        );
        assert!(
            tree.read_to_string(Path::new("/etc/hostname")).is_err(),
            "absolute path followed"
        );
        assert!(
            tree.read_to_string(Path::new("dirlink/b/file")).is_err(),
            "dir symlink followed"
        );
        let mut subdirs = tree.subdirs(Path::new("")).unwrap();
        subdirs.sort();
        assert_eq!(
            subdirs,
            vec![OsString::from("b")],
            "symlinked dir listed as a subdir"
        );
        let (ino, is_dir) = tree.inode_of(Path::new("b")).unwrap();
        assert!(is_dir && ino > 0);
    }

    #[test]
    fn lists_directories_with_the_inode_stat_gives() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        std::fs::create_dir(dir.path().join("c")).unwrap();
        std::fs::write(dir.path().join("file"), "x").unwrap();
        std::os::unix::fs::symlink("c", dir.path().join("link")).unwrap();
        let tree = Tree::open(dir.path()).unwrap();
        let mut found = tree.subdirs_with_inodes(Path::new("")).unwrap();
        found.sort_by(|a, b| a.name.cmp(&b.name));
        let names: Vec<_> = found.iter().map(|d| d.name.to_str().unwrap()).collect();
        assert_eq!(names, ["a", "c"]);
        for d in &found {
            assert_eq!(d.inode, tree.inode_of(Path::new(&d.name)).unwrap().0);
        }
        assert_eq!(
            tree.subdirs_with_inodes(Path::new("a")).unwrap()[0].name,
            "b"
        );
        let err = tree.subdirs_with_inodes(Path::new("missing")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(
            tree.subdirs_with_inodes(Path::new("link")).is_err(),
            "symlink followed"
        );
    }

    #[test]
    fn the_subdirs_fingerprint_changes_with_the_set_of_subdirectories() {
        let dir = tempfile::tempdir().unwrap();
        let tree = Tree::open(dir.path()).unwrap();
        let fingerprint = || tree.subdirs_fingerprint(Path::new("")).unwrap();
        let empty = fingerprint();
        std::fs::create_dir(dir.path().join("a")).unwrap();
        std::fs::write(dir.path().join("file"), "x").unwrap();
        let one = fingerprint();
        assert_ne!(one, empty, "a new directory");
        std::fs::create_dir(dir.path().join("b")).unwrap();
        let two = fingerprint();
        assert_ne!(two, one);
        let listed = tree.subdirs_with_inodes(Path::new("")).unwrap();
        assert_eq!(
            two,
            inode_set_fingerprint(listed.iter().rev().map(|d| d.inode)),
            "the same set in any order gives the same fingerprint"
        );
        assert_ne!(
            inode_set_fingerprint([1, 2]),
            inode_set_fingerprint([1, 3]),
            "a directory recreated under the same name has a new inode"
        );
        std::fs::remove_dir(dir.path().join("b")).unwrap();
        std::fs::remove_dir(dir.path().join("a")).unwrap();
        assert_eq!(fingerprint(), empty, "back to the same set");
    }
}
