//! What the filters hand the handlers: the query parameters this API understands, and
//! the percent-decoding of a query string and a path segment. Imported by both
//! [`filters`](super::filters) and [`handlers`](super::handlers), as warp's `todos`
//! example keeps its `ListOptions` in `models`.

use super::errors::ApiError;

/// The query parameters this API understands; others (Nomad clients send `region`,
/// `namespace`, `stale`, …) are ignored.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Params {
    /// `?task=<name>`.
    pub task: Option<String>,
    /// `?pretty` (any value but `0`, as Nomad: `?pretty=0` does not indent).
    pub pretty: bool,
    /// `?format=prometheus` on `/v1/metrics`.
    pub format: Option<String>,
}

impl Params {
    /// Parses a raw query string (`application/x-www-form-urlencoded`). A malformed
    /// percent escape, a non-UTF-8 value or a repeated `task`/`format` is an error.
    pub fn parse(raw: &str) -> Result<Self, ApiError> {
        let invalid = || ApiError::BadRequest("invalid query string".to_owned());
        let mut params = Params::default();
        for pair in raw.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let key = decode_form(key).ok_or_else(invalid)?;
            let value = decode_form(value).ok_or_else(invalid)?;
            let slot = match key.as_str() {
                "pretty" => {
                    params.pretty = value != "0";
                    continue;
                }
                "task" => &mut params.task,
                "format" => &mut params.format,
                _ => continue,
            };
            if slot.is_some() {
                return Err(ApiError::BadRequest(format!(
                    "query parameter \"{key}\" given more than once"
                )));
            }
            *slot = Some(value);
        }
        Ok(params)
    }
}

/// Percent-decodes `input`; `None` for a malformed escape.
pub fn percent_decode(input: &[u8], plus_as_space: bool) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        match input[i] {
            b'%' => {
                let hex = input.get(i + 1..i + 3)?;
                let hi = (hex[0] as char).to_digit(16)?;
                let lo = (hex[1] as char).to_digit(16)?;
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            b'+' if plus_as_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    Some(out)
}

fn decode_form(input: &str) -> Option<String> {
    String::from_utf8(percent_decode(input.as_bytes(), true)?).ok()
}

/// A path segment percent-decoded when that gives valid UTF-8, else as given.
pub fn decode_path_segment(raw: &str) -> String {
    percent_decode(raw.as_bytes(), false)
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .unwrap_or_else(|| raw.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters() {
        assert_eq!(Params::parse("").unwrap(), Params::default());
        let p = Params::parse("task=web.frontend&pretty").unwrap();
        assert_eq!(p.task.as_deref(), Some("web.frontend"));
        assert!(p.pretty);
        assert!(Params::parse("pretty=true").unwrap().pretty);
        assert!(!Params::parse("pretty=0").unwrap().pretty);
        assert_eq!(
            Params::parse("task=a%20b+c&region=global")
                .unwrap()
                .task
                .as_deref(),
            Some("a b c")
        );
        assert!(Params::parse("task=%zz").is_err());
        assert!(Params::parse("task=%ff").is_err());
        assert!(Params::parse("task=a&task=b").is_err());
        assert_eq!(
            Params::parse("format=prometheus")
                .unwrap()
                .format
                .as_deref(),
            Some("prometheus")
        );
    }

    #[test]
    fn path_segments() {
        assert_eq!(decode_path_segment("..%2F..%2Fetc"), "../../etc");
        assert_eq!(decode_path_segment("%ff%fe"), "%ff%fe");
        assert_eq!(decode_path_segment("100%"), "100%");
        assert_eq!(decode_path_segment("a+b"), "a+b");
    }
}
