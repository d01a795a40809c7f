//! Reading files beneath a fixed directory (a cgroup mount, /proc) without ever following
//! a symlink or `..` out of it.
//!
//! Every path the daemon opens is built from names it read from these trees itself, never
//! from request text; this module makes the guarantee structural: [`Tree`] holds the root
//! open as a directory fd and resolves relative paths with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)`. On kernels without openat2 (before 5.6)
//! it refuses any `..` component and opens the last component with `O_NOFOLLOW`.

use std::{
    ffi::{OsStr, OsString},
    fs::File,
    io::{self, Read},
    mem::MaybeUninit,
    os::{
        fd::{AsFd, BorrowedFd, OwnedFd},
        unix::ffi::{OsStrExt, OsStringExt},
    },
    path::{Component, Path, PathBuf},
    sync::atomic::{AtomicBool, Ordering},
};

use rustix::{
    fs::{FileType, Mode, OFlags, RawDir, ResolveFlags, Stat},
    io::Errno,
};

/// A directory tree that files are read beneath.
#[derive(Debug)]
pub struct Tree {
    root: OwnedFd,
    path: PathBuf,
}

static NO_OPENAT2: AtomicBool = AtomicBool::new(false);

/// `libc` open flags (as callers pass them) as rustix's.
fn oflags(flags: libc::c_int) -> OFlags {
    OFlags::from_bits_retain(flags as u32)
}

/// (inode number, is a directory) of a `stat` result.
fn inode_and_kind(st: &Stat) -> (u64, bool) {
    (st.st_ino, FileType::from_raw_mode(st.st_mode).is_dir())
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
        let root = rustix::fs::open(
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Self {
            root,
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
        fd_inode(self.open_at(rel, libc::O_PATH)?.as_fd())
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
    let flags = oflags(flags) | OFlags::CLOEXEC;
    if !NO_OPENAT2.load(Ordering::Relaxed) {
        let resolve =
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
        match rustix::fs::openat2(dir, rel, flags, Mode::empty(), resolve) {
            Ok(fd) => return Ok(fd),
            Err(Errno::NOSYS) => NO_OPENAT2.store(true, Ordering::Relaxed),
            Err(errno) => return Err(errno.into()),
        }
    }
    Ok(rustix::fs::openat(
        dir,
        rel,
        flags | OFlags::NOFOLLOW,
        Mode::empty(),
    )?)
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
        // Reads into the spare capacity and extends the length by what was read.
        match rustix::io::read(fd, rustix::buffer::spare_capacity(bytes)) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(Errno::INTR) => {}
            Err(errno) => return Err(errno.into()),
        }
    }
}

/// (inode number, is a directory) of an open descriptor.
pub fn fd_inode(fd: BorrowedFd<'_>) -> io::Result<(u64, bool)> {
    Ok(inode_and_kind(&rustix::fs::fstat(fd)?))
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
    // getdents64 into one buffer on the stack: no allocation per entry or per pass.
    let mut buf = [MaybeUninit::<u8>::uninit(); DIRENT_BUFFER];
    let mut entries = RawDir::new(fd, &mut buf);
    while let Some(entry) = entries.next() {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        let file_type = entry.file_type();
        if file_type == FileType::Directory {
            visit(name, entry.ino());
        } else if file_type == FileType::Unknown {
            // Filesystems that do not fill d_type: ask, without following a symlink.
            if let Ok((inode, true)) = tree.inode_of(&rel.join(OsStr::from_bytes(name))) {
                visit(name, inode);
            }
        }
    }
    Ok(())
}

/// Bytes of directory entries read per `getdents64` call (glibc's `readdir` uses 32 KiB).
const DIRENT_BUFFER: usize = 32 * 1024;

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
