//! `/proc/cpuinfo`: the `cpu MHz` of each processor, the last of Nomad's frequency sources.

/// `(processor, cpu MHz)` for every processor block of `/proc/cpuinfo` that has a
/// `cpu MHz` line (x86 has one; arm64 has none).
pub fn parse_cpuinfo_mhz(text: &str) -> Vec<(u32, f64)> {
    let mut out = Vec::new();
    let mut processor = None;
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        match key.trim_end() {
            "processor" => processor = value.trim().parse::<u32>().ok(),
            "cpu MHz" => {
                if let (Some(cpu), Ok(mhz)) = (processor, value.trim().parse::<f64>()) {
                    if mhz.is_finite() && mhz > 0.0 {
                        out.push((cpu, mhz));
                    }
                }
            }
            _ => {}
        }
    }
    out
}
