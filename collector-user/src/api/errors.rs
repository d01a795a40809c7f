//! Every way a request can fail, and the recovery that turns rejections into Nomad's
//! plain-text error responses. Nothing a client sends can produce a 500.

use std::convert::Infallible;

use warp::{
    http::{header, HeaderValue, StatusCode},
    hyper::Body,
    reject::Reject,
    reply::Response,
    Rejection,
};

/// Longest allocation ID echoed back in a 404 body (in characters).
pub const MAX_ECHOED_ID_CHARS: usize = 64;

/// Content type of every error body (what Go's `net/http` sniffs for Nomad's errors).
pub const TEXT_PLAIN: &str = "text/plain; charset=utf-8";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// The ID is already made safe to echo (see [`ApiError::unknown_allocation`]).
    #[error("Unknown allocation \"{0}\"")]
    UnknownAllocation(String),
    #[error("resource not found")]
    NotFound,
    #[error("Invalid method")]
    MethodNotAllowed,
    #[error("request body not allowed")]
    BodyNotAllowed,
    #[error("{0}")]
    BadRequest(String),
    /// ACLs are on and the request carries no token.
    #[error("Permission denied")]
    PermissionDenied,
    /// ACLs are on and the token is not one of the configured ones.
    #[error("ACL token not found")]
    TokenNotFound,
    #[error("URI too long")]
    UriTooLong,
}

impl Reject for ApiError {}

impl ApiError {
    /// The 404 for an allocation ID taken from the request: at most
    /// [`MAX_ECHOED_ID_CHARS`] characters are echoed, control characters replaced.
    pub fn unknown_allocation(id: &str) -> Self {
        ApiError::UnknownAllocation(sanitize_echo(id, MAX_ECHOED_ID_CHARS))
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::UnknownAllocation(_) | ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::BodyNotAllowed => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::PermissionDenied | ApiError::TokenNotFound => StatusCode::FORBIDDEN,
            ApiError::UriTooLong => StatusCode::URI_TOO_LONG,
        }
    }

    pub fn to_response(&self) -> Response {
        text_response(self.status(), self.to_string())
    }
}

/// A plain-text response.
pub fn text_response(status: StatusCode, body: String) -> Response {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(TEXT_PLAIN));
    response
}

/// Caps `text` at `max_chars` characters (appending `...` when cut) and replaces control
/// characters with U+FFFD, so request text can be echoed without injecting anything.
/// Control characters, and the invisible format characters that reorder or hide text
/// (bidirectional overrides and isolates, zero-width characters, BOM) so an echoed ID
/// can't make a message read as something else.
fn is_unsafe_to_echo(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{2069}'
            | '\u{FEFF}')
}

pub fn sanitize_echo(text: &str, max_chars: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max_chars * 4));
    let mut chars = text.chars();
    for c in chars.by_ref().take(max_chars) {
        out.push(if is_unsafe_to_echo(c) { '\u{FFFD}' } else { c });
    }
    if chars.next().is_some() {
        out.push_str("...");
    }
    out
}

/// Turns any rejection into a response (warp's `recover`).
pub async fn recover(rejection: Rejection) -> Result<Response, Infallible> {
    Ok(rejection_response(&rejection))
}

fn rejection_response(rejection: &Rejection) -> Response {
    let error = if let Some(error) = rejection.find::<ApiError>() {
        error.clone()
    } else if rejection.is_not_found() {
        ApiError::NotFound
    } else if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
        ApiError::MethodNotAllowed
    } else if rejection.find::<warp::reject::PayloadTooLarge>().is_some()
        || rejection.find::<warp::reject::LengthRequired>().is_some()
    {
        ApiError::BodyNotAllowed
    } else if rejection.find::<warp::reject::InvalidQuery>().is_some() {
        ApiError::BadRequest("invalid query string".to_owned())
    } else {
        // No filter of this API rejects otherwise; whatever it is, it came from the
        // request, so it is the client's error, never a 500.
        tracing::debug!(?rejection, "unexpected rejection");
        ApiError::BadRequest("bad request".to_owned())
    };
    error.to_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_is_capped_and_control_characters_replaced() {
        assert_eq!(sanitize_echo("abc", 64), "abc");
        assert_eq!(
            sanitize_echo("a\nb\r\u{1b}[31m", 64),
            "a\u{FFFD}b\u{FFFD}\u{FFFD}[31m"
        );
        let long = "x".repeat(500);
        let echoed = sanitize_echo(&long, 64);
        assert_eq!(echoed, format!("{}...", "x".repeat(64)));
        assert_eq!(sanitize_echo(&"é".repeat(64), 64), "é".repeat(64));
        assert_eq!(
            sanitize_echo("a\u{202E}b\u{200B}c", 64),
            "a\u{FFFD}b\u{FFFD}c"
        );
    }

    #[test]
    fn statuses() {
        assert_eq!(ApiError::unknown_allocation("x").status(), 404);
        assert_eq!(
            ApiError::unknown_allocation("x").to_string(),
            "Unknown allocation \"x\""
        );
        assert_eq!(ApiError::MethodNotAllowed.status(), 405);
        assert_eq!(ApiError::PermissionDenied.status(), 403);
        assert_eq!(ApiError::UriTooLong.status(), 414);
    }
}
