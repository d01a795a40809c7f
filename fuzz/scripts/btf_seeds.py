#!/usr/bin/env python3
"""Writes the seed corpus of the `btf` fuzz target: small BTF blobs with every struct,
member and enumerator `kernel::layout::resolve` looks up (a pre-6.2 and a 6.2+ memory
counter layout), plus one of every BTF kind, so the fuzzer starts from inputs that go
all the way through the resolver. With `--findings`, writes instead the smallest inputs
of the bugs the fuzzer found (all fixed; kept in corpus/btf/ as regression seeds). Run
from the fuzz/ directory."""
import struct
import sys

INT, PTR, ARRAY, STRUCT, UNION, ENUM, FWD, TYPEDEF, VOLATILE, CONST = 1, 2, 3, 4, 5, 6, 7, 8, 9, 10
RESTRICT, FUNC, FUNC_PROTO, VAR, DATASEC, FLOAT, DECL_TAG, TYPE_TAG, ENUM64 = range(11, 20)


class Btf:
    def __init__(self):
        self.strings = b"\0"
        self.types = []  # encoded type records; id = index + 1

    def s(self, name):
        if not name:
            return 0
        off = len(self.strings)
        self.strings += name.encode() + b"\0"
        return off

    def add(self, name, kind, vlen=0, size_or_type=0, extra=b"", kind_flag=0):
        info = (kind << 24) | vlen | (kind_flag << 31)
        self.types.append(struct.pack("<III", self.s(name), info, size_or_type) + extra)
        return len(self.types)

    def composite(self, name, size, members, union=False, kind_flag=0):
        extra = b"".join(struct.pack("<III", self.s(n), t, off) for n, t, off in members)
        return self.add(name, UNION if union else STRUCT, len(members), size, extra, kind_flag)

    def enum(self, name, values, wide=False):
        if wide:
            extra = b"".join(
                struct.pack("<III", self.s(n), v & 0xFFFFFFFF, (v >> 32) & 0xFFFFFFFF)
                for n, v in values
            )
            return self.add(name, ENUM64, len(values), 8, extra)
        extra = b"".join(struct.pack("<Ii", self.s(n), v) for n, v in values)
        return self.add(name, ENUM, len(values), 4, extra)

    def blob(self):
        types = b"".join(self.types)
        header = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(types), len(types), len(self.strings))
        return header + types + self.strings


def layout(percpu_counter, cgrp_id=2, mm_filepages=0):
    b = Btf()
    i32 = b.add("int", INT, 0, 4, struct.pack("<I", 32))
    i64 = b.add("long long", INT, 0, 8, struct.pack("<I", 64))
    ptr = b.add("", PTR, 0, 0)
    u64 = b.add("u64", TYPEDEF, 0, i64)
    cu64 = b.add("", CONST, 0, u64)
    se = b.composite("sched_entity", 256, [("load", i64, 0), ("sum_exec_runtime", cu64, 8 * 64)])
    anon = b.composite("", 16, [("cgroups", ptr, 0), ("mm", ptr, 64)])
    b.composite(
        "task_struct",
        4096,
        [
            ("flags", i32, 8 * 0x2C),
            ("se", se, 8 * 0x80),
            ("pid", i32, 8 * 0x5A0),
            ("tgid", i32, 8 * 0x5A4),
            ("utime", u64, 8 * 0x600),
            ("stime", u64, 8 * 0x608),
            ("start_time", u64, 8 * 0x650),
            ("", anon, 8 * 0x700),
            ("signal", ptr, 8 * 0x800),
        ],
    )
    b.composite("cgroup_subsys_state", 200, [("cgroup", ptr, 0)])
    b.composite("cgroup", 2048, [("self", ptr, 0), ("kn", ptr, 8 * 0x100)])
    b.composite("kernfs_node", 128, [("id", u64, 8 * 0x40)])
    b.composite(
        "signal_struct",
        1024,
        [("utime", u64, 8 * 0x300), ("stime", u64, 8 * 0x308), ("sum_sched_runtime", u64, 8 * 0x310)],
    )
    b.composite("css_set", 512, [("subsys", ptr, 0), ("dfl_cgrp", ptr, 8 * 0x88)])
    if percpu_counter:
        counter = b.composite("percpu_counter", 40, [("lock", i32, 0), ("count", i64, 64)])
        b.composite("mm_struct", 2048, [("rss_stat", counter, 8 * 0x380)])
    else:
        stat = b.composite("mm_rss_stat", 32, [("count", i64, 0)])
        b.composite("mm_struct", 2048, [("rss_stat", stat, 8 * 0x380)])
    b.enum(
        "cgroup_subsys_id",
        [("cpuset_cgrp_id", 0), ("cpu_cgrp_id", 1), ("cpuacct_cgrp_id", cgrp_id), ("memory_cgrp_id", 4)],
    )
    b.enum("", [("MM_FILEPAGES", mm_filepages), ("MM_ANONPAGES", 1), ("MM_SWAPENTS", 2), ("MM_SHMEMPAGES", 3)])
    return b.blob()


def every_kind():
    b = Btf()
    i32 = b.add("int", INT, 0, 4, struct.pack("<I", 32))
    b.add("", PTR, 0, i32)
    b.add("", ARRAY, 0, 0, struct.pack("<III", i32, i32, 16))
    bits = b.composite("flags", 4, [("a", i32, (1 << 24) | 0), ("b", i32, (3 << 24) | 1)], kind_flag=1)
    b.composite("u", 8, [("x", i32, 0), ("y", bits, 0)], union=True)
    b.add("fwd", FWD, 0, 0)
    b.add("", VOLATILE, 0, i32)
    b.add("", RESTRICT, 0, i32)
    proto = b.add("", FUNC_PROTO, 2, i32, struct.pack("<II", b.s("p"), i32) + struct.pack("<II", 0, 0))
    b.add("f", FUNC, 0, proto)
    var = b.add("v", VAR, 0, i32, struct.pack("<I", 1))
    b.add(".data", DATASEC, 1, 4, struct.pack("<III", var, 0, 4))
    b.add("double", FLOAT, 0, 8)
    b.add("tag", DECL_TAG, 0, var, struct.pack("<i", -1))
    b.add("user", TYPE_TAG, 0, i32)
    b.enum("big", [("E_BIG", 1 << 40), ("E_NEG", -2)], wide=True)
    return b.blob()


def nested_offset_overflow():
    """`task_struct.se.sum_exec_runtime` whose bit offsets add up past 2^32."""
    b = Btf()
    i64 = b.add("long", INT, 0, 8, struct.pack("<I", 64))
    se = b.composite("sched_entity", 8, [("sum_exec_runtime", i64, 0x200)])
    b.composite("task_struct", 8, [("se", se, 0xFFFFFF00)])
    return b.blob()


def anonymous_offset_overflow():
    """`task_struct.pid` inside an anonymous struct, offsets adding up past 2^32."""
    b = Btf()
    i32 = b.add("int", INT, 0, 4, struct.pack("<I", 32))
    anon = b.composite("", 8, [("pid", i32, 0x200)])
    b.composite("task_struct", 8, [("", anon, 0xFFFFFF00)])
    return b.blob()


def anonymous_self_reference():
    """`task_struct` whose first member is an anonymous member of type task_struct."""
    b = Btf()
    i32 = b.add("int", INT, 0, 4, struct.pack("<I", 32))
    b.composite("task_struct", 16, [("", 2, 0), ("pid", i32, 64)])
    return b.blob()


def anonymous_exponential(levels=48):
    """A chain of structs, each with two anonymous members of the next: a member that is
    not there is looked for along 2^levels paths."""
    b = Btf()
    i32 = b.add("int", INT, 0, 4, struct.pack("<I", 32))
    for i in range(levels):
        nxt = 2 + i + 1
        members = [("", nxt, 0), ("", nxt, 0)] if i < levels - 1 else [("x", i32, 0)]
        b.composite("task_struct" if i == 0 else "", 8, members)
    return b.blob()


def main():
    if sys.argv[1:] == ["--findings"]:
        out, blobs = "corpus/btf", [
            ("btf-nested-offset-overflow", nested_offset_overflow()),
            ("btf-anonymous-offset-overflow", anonymous_offset_overflow()),
            ("btf-anonymous-self-reference", anonymous_self_reference()),
            ("btf-anonymous-exponential", anonymous_exponential()),
            ("layout-cgrp-id-overflow", layout(True, cgrp_id=1 << 29)),
            ("layout-mm-counter-overflow", layout(True, mm_filepages=1 << 30)),
        ]
    else:
        out, blobs = "corpus/btf", [
            ("layout-6.2", layout(True)),
            ("layout-pre-6.2", layout(False)),
            ("every-kind", every_kind()),
        ]
    for name, blob in blobs:
        with open(f"{out}/{name}", "wb") as f:
            f.write(blob)


if __name__ == "__main__":
    main()
