//! The kernel side: BTF offsets, loading and attaching the eBPF programs, pinning, and
//! reading their output.
pub mod accounting;
pub mod btf;
pub mod features;
pub mod kfunc;
pub mod layout;
pub mod pins;
pub mod sys;

pub use accounting::{
    attach_empty_probe, AttachedPrograms, EmptyProbe, KernelAccounting, KernelError, KernelOptions,
    KernelStats, ProgramRunStats, CGROUP_WALK_RING_BYTES,
};
pub use features::{Feature, KernelFeatures, ThreadStateChoice, ThreadStateStore};
pub use layout::Attribution;
