#!/usr/bin/env python3
"""Per-event BPF run time of the sched_switch program, build against build, in one run.

    sudo python3 benchmarks/per-switch-by-build.py NEW_BINARY OLD_BINARY [ROUNDS]

The pipe runs in a Nomad 1.7+ task cgroup (cgroup v1 `nomad/<alloc>.<task>` in cpu,
cpuacct and memory, or cgroup v2 `nomad.slice/share.slice/<alloc>.<task>.scope`), so
that each daemon tracks it and every switch takes the accounting path, not the
untracked one. Arms, interleaved round by round so that each sees the same machine: the empty program
(`NEW --empty-probe`), NEW with threads' state in task storage, NEW with the 5.10
build's hash map (`ebpf.thread_state = "hash"`), and OLD (any earlier build). Each arm
starts the daemon without pins, runs a pinned `perf bench sched pipe -l 100000`, and
reads the program's run_cnt and run_time_ns from /proc/<pid>/fdinfo of its program
descriptor (kernel.bpf_stats_enabled=1 meanwhile, restored after). Prints medians.
The full `cargo xtask bench` measures one build; this compares builds, which the issue
on kernels asked for ("before and after, next to the empty program, in one run").
"""
import glob
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid


def config(extra):
    f = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
    f.write('[ebpf]\npin_root = ""\n' + extra)
    f.close()
    return f.name


def tracing_prog_stats(pid):
    """{prog_id: (run_cnt, run_time_ns)} of the process's tracing programs (type 26:
    tp_btf, and the task iterator, which runs only when asked)."""
    stats = {}
    for fd in glob.glob(f"/proc/{pid}/fd/*"):
        try:
            if os.readlink(fd) != "anon_inode:bpf-prog":
                continue
            info = open(f"/proc/{pid}/fdinfo/{os.path.basename(fd)}").read()
        except OSError:
            continue
        kv = dict(re.findall(r"(\w+):\s+(\S+)", info))
        if kv.get("prog_type") == "26":
            stats[kv["prog_id"]] = (int(kv.get("run_cnt", 0)), int(kv.get("run_time_ns", 0)))
    return stats


def switch_delta(before, after):
    """(runs, ns) of the program that ran most between the two readings: sched_switch."""
    deltas = [
        (a[0] - before[i][0], a[1] - before[i][1]) for i, a in after.items() if i in before
    ]
    return max(deltas, default=(0, 0))


def task_cgroup():
    """Creates a Nomad-style task cgroup; returns its cgroup.procs files and a cleanup."""
    name = f"{uuid.uuid4()}.bench"
    if os.path.isdir("/sys/fs/cgroup/cpuacct"):
        parents = [f"/sys/fs/cgroup/{c}/nomad" for c in ("cpu", "cpuacct", "memory")]
        dirs = [f"{p}/{name}" for p in parents]
    else:
        parents = ["/sys/fs/cgroup/nomad.slice", "/sys/fs/cgroup/nomad.slice/share.slice"]
        dirs = [f"{parents[-1]}/{name}.scope"]
    made = [p for p in parents if not os.path.isdir(p)]
    for d in parents + dirs:
        os.makedirs(d, exist_ok=True)

    def cleanup():
        for d in list(reversed(dirs)) + list(reversed(made)):
            try:
                os.rmdir(d)
            except OSError:
                pass

    return [f"{d}/cgroup.procs" for d in dirs], cleanup


def main():
    new, old = sys.argv[1], sys.argv[2]
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 5
    daemon = ["--source", "ebpf", "--listen", "127.0.0.1:0", "-c"]
    arms = {
        "empty program": [new, "--empty-probe"],
        "new, task storage": [new, *daemon, config('thread_state = "task_storage"\n')],
        "new, thread hash (5.10 build)": [new, *daemon, config('thread_state = "hash"\n')],
        "old": [old, *daemon, config("")],
    }
    stats_path = "/proc/sys/kernel/bpf_stats_enabled"
    original = open(stats_path).read()
    open(stats_path, "w").write("1")
    per_event = {name: [] for name in arms}
    procs, cleanup = task_cgroup()
    join = " ".join(f"echo $$ > {p};" for p in procs)
    pipe = ["sh", "-c", f"{join} exec taskset -c 1 perf bench sched pipe -l 100000"]
    try:
        for _ in range(rounds):
            for name, cmd in arms.items():
                p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(2.0)
                before = tracing_prog_stats(p.pid)
                subprocess.run(pipe, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                after = tracing_prog_stats(p.pid)
                p.terminate()
                p.wait()
                runs, ns = switch_delta(before, after)
                if runs > 0:
                    per_event[name].append(ns / runs)
    finally:
        open(stats_path, "w").write(original)
        cleanup()
    print("| arm | ns per event, median (min–max) | rounds |")
    print("|---|---|---|")
    for name, values in per_event.items():
        if values:
            print(
                f"| {name} | {statistics.median(values):.1f} "
                f"({min(values):.1f}–{max(values):.1f}) | {len(values)} |"
            )
        else:
            print(f"| {name} | no runs counted | 0 |")


if __name__ == "__main__":
    main()
