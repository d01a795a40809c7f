//! The query string and path segment decoding of the API: `Params::parse`,
//! `percent_decode`, `decode_path_segment`. What decodes must encode back to itself.
#![no_main]

use collector_user::api::models::{decode_path_segment, percent_decode, Params};
use libfuzzer_sys::fuzz_target;

/// Percent-encodes every byte but the unreserved ones.
fn encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 3);
    for &b in bytes {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Whether some `%` (outside a valid escape) is not followed by two hex digits.
fn malformed(input: &[u8]) -> bool {
    let mut i = 0;
    while i < input.len() {
        if input[i] == b'%' {
            match input.get(i + 1..i + 3) {
                Some(h) if h.iter().all(u8::is_ascii_hexdigit) => i += 3,
                _ => return true,
            }
        } else {
            i += 1;
        }
    }
    false
}

fn encode_params(p: &Params) -> String {
    let mut pairs = Vec::new();
    if let Some(task) = &p.task {
        pairs.push(format!("task={}", encode(task.as_bytes())));
    }
    if p.pretty {
        pairs.push("pretty".to_owned());
    }
    if let Some(format) = &p.format {
        pairs.push(format!("format={}", encode(format.as_bytes())));
    }
    pairs.push("region=global".to_owned());
    pairs.join("&")
}

fuzz_target!(init: collector_fuzz::catch_stack_overflow(), |data: &[u8]| {
    for plus_as_space in [false, true] {
        match percent_decode(data, plus_as_space) {
            Some(decoded) => {
                assert!(!malformed(data));
                assert!(decoded.len() <= data.len());
                let again = percent_decode(encode(&decoded).as_bytes(), plus_as_space);
                assert_eq!(again.as_deref(), Some(&decoded[..]));
            }
            None => assert!(malformed(data)),
        }
    }

    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let segment = decode_path_segment(raw);
    match percent_decode(data, false).and_then(|b| String::from_utf8(b).ok()) {
        Some(decoded) => assert_eq!(segment, decoded),
        None => assert_eq!(segment, raw),
    }

    if let Ok(params) = Params::parse(raw) {
        let query = encode_params(&params);
        assert_eq!(Params::parse(&query), Ok(params), "{query}");
    }
});
