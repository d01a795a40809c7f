//! What runs inside the guest: the initramfs's `/init` (mounts, then the test script in
//! a chroot of the host's files) and the test script (one test at a time, results into
//! the shared folder).

use std::{fmt::Write as _, path::Path};

use super::suite::Case;

/// Mount tags of the two 9p shares, as the QEMU command line names them.
pub const HOST_ROOT_TAG: &str = "hostroot";
pub const RESULTS_TAG: &str = "results";

/// The kernel command line parameter that tells `/init` where the results share goes
/// (the same path as on the host, so the script written there is found by its path).
pub const RESULTS_PARAM: &str = "nomad_vm.results";

/// The script's name in the results folder.
pub const SCRIPT: &str = "run.sh";
/// Written by the script when every test has run.
pub const DONE: &str = "done";

/// `/init`: busybox applets, the modules in order, the host's `/` read-only over 9p with
/// a tmpfs overlay on top (host-built binaries run at the same paths), the guest's own
/// proc/sys/dev, pure cgroup v2 on /sys/fs/cgroup, bpffs, the results share, then the
/// script in a chroot with its output on the virtio console. It stays PID 1 (a chroot,
/// not switch_root) so that it can reap orphans and power off at the end.
pub fn init_script(modules: &[String]) -> String {
    let mut insmods = String::new();
    for module in modules {
        let file = Path::new(module)
            .file_name()
            .and_then(|f| f.to_str())
            .unwrap_or(module)
            .trim_end_matches(".xz")
            .trim_end_matches(".zst");
        writeln!(
            insmods,
            "insmod /lib/modules/{file} || echo \"nomad-vm: insmod {file} failed\""
        )
        .unwrap();
    }
    format!(
        r#"#!/bin/busybox sh
/bin/busybox mkdir -p /usr/bin /usr/sbin /sbin
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
stop() {{ echo "nomad-vm: $*"; sync; poweroff -f; echo o > /proc/sysrq-trigger; sleep 10; }}
{insmods}
R=
for arg in $(cat /proc/cmdline); do
  case "$arg" in {RESULTS_PARAM}=*) R="${{arg#*=}}" ;; esac
done
[ -n "$R" ] || stop "no {RESULTS_PARAM}= on the kernel command line"
i=0
while [ ! -e /dev/hvc0 ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
mkdir -p /mnt/host /mnt/rw /mnt/root
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=524288,cache=loose {HOST_ROOT_TAG} /mnt/host || stop "cannot mount the host's files"
mount -t tmpfs -o mode=755 tmpfs /mnt/rw
mkdir -p /mnt/rw/upper /mnt/rw/work
mount -t overlay -o lowerdir=/mnt/host,upperdir=/mnt/rw/upper,workdir=/mnt/rw/work overlay /mnt/root || stop "cannot mount the overlay"
N=/mnt/root
mount -t proc proc $N/proc
mount -t sysfs sysfs $N/sys
mount -t devtmpfs devtmpfs $N/dev
mkdir -p $N/dev/pts $N/dev/shm
mount -t devpts devpts $N/dev/pts
mount -t tmpfs tmpfs $N/dev/shm
mount -t tmpfs tmpfs $N/tmp
mount -t tmpfs tmpfs $N/run
mount -t cgroup2 cgroup2 $N/sys/fs/cgroup || stop "cannot mount cgroup2"
mount -t bpf bpf $N/sys/fs/bpf || stop "cannot mount bpffs"
mount -t debugfs debugfs $N/sys/kernel/debug 2>/dev/null
mount -t tracefs tracefs $N/sys/kernel/tracing 2>/dev/null
mkdir -p "$N$R"
mount -t 9p -o trans=virtio,version=9p2000.L,msize=524288 {RESULTS_TAG} "$N$R" || stop "cannot mount the results share"
ip link set lo up
chroot $N /bin/sh "$R/{SCRIPT}" > /dev/hvc0 2>&1 &
wait $!
stop "tests finished"
"#
    )
}

/// What the test script needs to know.
pub struct Plan<'a> {
    pub results: &'a Path,
    pub workspace: &'a Path,
    pub daemon: &'a Path,
    pub cases: &'a [Case],
    pub test_timeout_s: u64,
    pub ci: bool,
}

/// The test script: a short start-up of the daemon by hand (its eBPF log lines are
/// reported), then each case alone under `timeout`, its output in `<n>.log` and
/// `<exit code> <seconds>` in `<n>.rc`.
pub fn run_script(plan: &Plan) -> String {
    let r = plan.results.display();
    let mut script = format!(
        r#"set -u
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root
export NOMAD_COLLECTOR_BIN='{daemon}'
{ci}
cd '{workspace}'
echo "guest: kernel $(uname -r), $(nproc) CPUs, $(( $(sed -n 's/^MemTotal: *\([0-9]*\).*/\1/p' /proc/meminfo) / 1024 )) MiB, cgroup2 controllers: $(cat /sys/fs/cgroup/cgroup.controllers)"
echo "==> the daemon started by hand for a few seconds (its log: {r}/daemon.log)"
RUST_LOG=info,collector_user=debug "$NOMAD_COLLECTOR_BIN" --no-pin --listen 127.0.0.1:4650 > '{r}/daemon.log' 2>&1 &
daemon=$!
sleep 12
kill -TERM $daemon 2>/dev/null
wait $daemon
"#,
        daemon = plan.daemon.display(),
        workspace = plan.workspace.display(),
        ci = if plan.ci {
            "export CI=true"
        } else {
            "unset CI"
        },
    );
    for (i, case) in plan.cases.iter().enumerate() {
        write!(
            script,
            r#"echo "==> [{n}/{total}] {name}"
start=$(date +%s)
timeout -k 10 {timeout} '{binary}' --exact '{name}' --test-threads=1 > '{r}/{i}.log' 2>&1
rc=$?
took=$(( $(date +%s) - start ))
echo "$rc $took" > '{r}/{i}.rc'
echo "<== {name}: exit $rc after $took s"
"#,
            n = i + 1,
            total = plan.cases.len(),
            name = case.name,
            binary = case.binary.display(),
            timeout = plan.test_timeout_s,
        )
        .unwrap();
    }
    writeln!(script, "echo finished > '{r}/{DONE}'\nsync").unwrap();
    script
}
