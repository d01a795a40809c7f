//! `/proc/meminfo`: the host's memory, as Nomad (gopsutil) reports it.

use crate::{model::host::HostMemoryStats, procfs::ParseError};

/// The number before an optional `kB` unit in a `/proc/meminfo` line, in bytes.
fn meminfo_bytes(rest: &str) -> Option<u64> {
    let mut fields = rest.split_ascii_whitespace();
    let value: u64 = fields.next()?.parse().ok()?;
    match fields.next() {
        Some("kB") => value.checked_mul(1024),
        None => Some(value),
        Some(_) => None,
    }
}

/// Parses `/proc/meminfo` as gopsutil does for Nomad: `Used = Total - Available` (not
/// `Total - Free`: page cache the kernel can drop is not "used"). Kernels before 3.14 have
/// no `MemAvailable`; there `Available` is estimated as `Free + Buffers + Cached`.
pub fn parse_meminfo(text: &str) -> Result<HostMemoryStats, ParseError> {
    const F: &str = "meminfo";
    let (mut total, mut free, mut available, mut buffers, mut cached) =
        (None, None, None, None, None);
    for line in text.lines() {
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        let (slot, field) = match key {
            "MemTotal" => (&mut total, "MemTotal"),
            "MemFree" => (&mut free, "MemFree"),
            "MemAvailable" => (&mut available, "MemAvailable"),
            "Buffers" => (&mut buffers, "Buffers"),
            "Cached" => (&mut cached, "Cached"),
            _ => continue,
        };
        *slot = Some(meminfo_bytes(rest).ok_or(ParseError::Invalid { file: F, field })?);
    }
    let total = total.ok_or(ParseError::Missing {
        file: F,
        field: "MemTotal",
    })?;
    let free = free.ok_or(ParseError::Missing {
        file: F,
        field: "MemFree",
    })?;
    let available = available.unwrap_or_else(|| {
        free.saturating_add(buffers.unwrap_or(0))
            .saturating_add(cached.unwrap_or(0))
    });
    Ok(HostMemoryStats {
        total,
        available,
        used: total.saturating_sub(available),
        free,
    })
}
