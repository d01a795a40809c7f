//! The few `bpf(2)` commands aya 0.14 does not wrap: batch map lookup and creating a
//! task iterator link whose iterator files are opened again every interval.

use std::{
    fs::File,
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
};

const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_ITER_CREATE: libc::c_long = 33;
const BPF_TRACE_ITER: u32 = 28;

/// `union bpf_attr` is at most this large for the commands used here; the kernel
/// requires every byte past the command's fields to be zero.
const ATTR_SIZE: usize = 128;

#[repr(C, align(8))]
struct Attr([u8; ATTR_SIZE]);

impl Attr {
    fn new() -> Self {
        Attr([0; ATTR_SIZE])
    }

    fn put_u32(&mut self, offset: usize, value: u32) {
        self.0[offset..offset + 4].copy_from_slice(&value.to_ne_bytes());
    }

    fn put_u64(&mut self, offset: usize, value: u64) {
        self.0[offset..offset + 8].copy_from_slice(&value.to_ne_bytes());
    }

    fn u32_at(&self, offset: usize) -> u32 {
        u32::from_ne_bytes(self.0[offset..offset + 4].try_into().expect("4 bytes"))
    }
}

fn bpf(cmd: libc::c_long, attr: &mut Attr) -> io::Result<libc::c_long> {
    // SAFETY: attr is a valid, writable bpf_attr-sized buffer for the whole call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.0.as_mut_ptr(),
            ATTR_SIZE as libc::c_uint,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// `BPF_LINK_CREATE` for an `iter/task` program over every task on the host (no
/// `bpf_iter_link_info`, which 5.10 does not take for task iterators).
pub fn task_iter_link_create(prog: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let mut attr = Attr::new();
    attr.put_u32(0, prog.as_raw_fd() as u32); // link_create.prog_fd
    attr.put_u32(8, BPF_TRACE_ITER); // link_create.attach_type
    let fd = bpf(BPF_LINK_CREATE, &mut attr)?;
    // SAFETY: the kernel returned a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// `BPF_LINK_CREATE` for an `iter/cgroup` program over every cgroup under (and with)
/// the open cgroup directory `cgroup`, parents before children.
pub fn cgroup_iter_link_create(
    prog: BorrowedFd<'_>,
    cgroup: BorrowedFd<'_>,
) -> io::Result<OwnedFd> {
    /// `BPF_CGROUP_ITER_DESCENDANTS_PRE` of `enum bpf_cgroup_iter_order`.
    const DESCENDANTS_PRE: u32 = 2;
    // union bpf_iter_link_info { ... struct { order; cgroup_fd; cgroup_id } cgroup; }
    let mut info = [0u8; 16];
    info[0..4].copy_from_slice(&DESCENDANTS_PRE.to_ne_bytes());
    info[4..8].copy_from_slice(&(cgroup.as_raw_fd() as u32).to_ne_bytes());
    let mut attr = Attr::new();
    attr.put_u32(0, prog.as_raw_fd() as u32); // link_create.prog_fd
    attr.put_u32(8, BPF_TRACE_ITER); // link_create.attach_type
    attr.put_u64(16, info.as_ptr() as u64); // link_create.iter_info
    attr.put_u32(24, info.len() as u32); // link_create.iter_info_len
    let fd = bpf(BPF_LINK_CREATE, &mut attr)?;
    // SAFETY: the kernel returned a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// `BPF_ITER_CREATE`: a new iterator over the link; reading it runs the program.
pub fn iter_create(link: BorrowedFd<'_>) -> io::Result<File> {
    let mut attr = Attr::new();
    attr.put_u32(0, link.as_raw_fd() as u32); // iter_create.link_fd
    let fd = bpf(BPF_ITER_CREATE, &mut attr)?;
    // SAFETY: as above.
    Ok(unsafe { File::from_raw_fd(fd as i32) })
}

thread_local! {
    /// [`lookup_array_prefix`]'s key buffer: the collector reads the counters every
    /// cycle, from one thread.
    static ARRAY_KEYS: std::cell::RefCell<Vec<u32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Reads elements `0..count` of an array map with one `BPF_MAP_LOOKUP_BATCH` (arrays
/// walk their keys in order, so the first `count` keys are exactly `0..count`). The
/// kernel writes raw bytes into the values: `V: aya::Pod` says any bytes are a `V`.
pub fn lookup_array_prefix<V: aya::Pod + Default>(
    map: BorrowedFd<'_>,
    count: u32,
    out: &mut Vec<V>,
) -> io::Result<()> {
    out.clear();
    if count == 0 {
        return Ok(());
    }
    out.resize(count as usize, V::default());
    let result = ARRAY_KEYS.with_borrow_mut(|keys| {
        // The keys the kernel writes back (0..count), kept for the next cycle's read.
        keys.resize(count as usize, 0);
        let mut out_batch: u32 = 0;
        let mut attr = Attr::new();
        attr.put_u64(8, &raw mut out_batch as u64); // batch.out_batch
        attr.put_u64(16, keys.as_mut_ptr() as u64); // batch.keys
        attr.put_u64(24, out.as_mut_ptr() as u64); // batch.values
        attr.put_u32(32, count); // batch.count
        attr.put_u32(36, map.as_raw_fd() as u32); // batch.map_fd
        let result = bpf(BPF_MAP_LOOKUP_BATCH, &mut attr);
        (result, attr.u32_at(32) as usize)
    });
    let (result, got) = result;
    match result {
        Ok(_) => {}
        // ENOENT: the array ended before `count` (a caller asking past max_entries).
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
        Err(e) => return Err(e),
    }
    out.truncate(got);
    Ok(())
}

/// Reads every entry of a hash map with `BPF_MAP_LOOKUP_BATCH`, a few syscalls in all
/// instead of two per entry. The kernel writes raw bytes into the keys and values:
/// `aya::Pod` says any bytes are a `K` and a `V`.
pub fn lookup_batch<K: aya::Pod + Default, V: aya::Pod + Default>(
    map: BorrowedFd<'_>,
    chunk: u32,
    out: &mut Vec<(K, V)>,
) -> io::Result<()> {
    out.clear();
    let chunk = chunk.max(1) as usize;
    let mut keys = vec![K::default(); chunk];
    let mut values = vec![V::default(); chunk];
    // Hash maps use a u32 bucket index as the batch token.
    let mut in_batch: u32 = 0;
    let mut out_batch: u32 = 0;
    let mut first = true;
    loop {
        let mut attr = Attr::new();
        attr.put_u64(0, if first { 0 } else { &raw const in_batch as u64 }); // batch.in_batch
        attr.put_u64(8, &raw mut out_batch as u64); // batch.out_batch
        attr.put_u64(16, keys.as_mut_ptr() as u64); // batch.keys
        attr.put_u64(24, values.as_mut_ptr() as u64); // batch.values
        attr.put_u32(32, chunk as u32); // batch.count
        attr.put_u32(36, map.as_fd().as_raw_fd() as u32); // batch.map_fd
        let result = bpf(BPF_MAP_LOOKUP_BATCH, &mut attr);
        let got = attr.u32_at(32) as usize;
        out.extend(
            keys[..got]
                .iter()
                .copied()
                .zip(values[..got].iter().copied()),
        );
        match result {
            Ok(_) => {}
            // ENOENT: the walk is complete (the last chunk may still carry entries).
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
            // ENOSPC: a bucket holds more entries than `chunk`; retry with room for it.
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && got == 0 => {
                return lookup_batch(map, (chunk * 2) as u32, out);
            }
            Err(e) => return Err(e),
        }
        in_batch = out_batch;
        first = false;
    }
}

/// (run count, run time ns) of a program, from `BPF_OBJ_GET_INFO_BY_FD` on a descriptor
/// the daemon holds: unlike listing programs by id, this needs no capability, so it keeps
/// working after the daemon drops its privileges.
pub fn prog_run_stats(prog: BorrowedFd<'_>) -> io::Result<(u64, u64)> {
    let info = prog_info(prog)?;
    Ok((info.run_cnt, info.run_time_ns))
}

/// The id of the program behind a descriptor.
pub fn prog_id(prog: BorrowedFd<'_>) -> io::Result<u32> {
    Ok(prog_info(prog)?.id)
}

fn prog_info(prog: BorrowedFd<'_>) -> io::Result<aya_obj::generated::bpf_prog_info> {
    // SAFETY: bpf_prog_info is plain data; all-zero is its documented initial state.
    let mut info: aya_obj::generated::bpf_prog_info = unsafe { std::mem::zeroed() };
    let mut attr = Attr::new();
    attr.put_u32(0, prog.as_raw_fd() as u32); // info.bpf_fd
    attr.put_u32(4, std::mem::size_of_val(&info) as u32); // info.info_len
    attr.put_u64(8, &raw mut info as u64); // info.info
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok(info)
}
