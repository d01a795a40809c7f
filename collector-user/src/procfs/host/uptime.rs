//! `/proc/uptime`: seconds since boot.

use crate::procfs::ParseError;

/// Seconds since boot: the first field of `/proc/uptime`.
pub fn parse_uptime(text: &str) -> Result<f64, ParseError> {
    const F: &str = "uptime";
    let seconds: f64 = text
        .split_ascii_whitespace()
        .next()
        .ok_or(ParseError::Missing {
            file: F,
            field: "uptime",
        })?
        .parse()
        .map_err(|_| ParseError::Invalid {
            file: F,
            field: "uptime",
        })?;
    if seconds.is_finite() && seconds >= 0.0 {
        Ok(seconds)
    } else {
        Err(ParseError::Invalid {
            file: F,
            field: "uptime",
        })
    }
}
