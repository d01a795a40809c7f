//! Token check. ACLs are on when at least one token is configured; tokens come from
//! `X-Nomad-Token` or `Authorization: Bearer <token>` (Nomad's headers, in Nomad's order).

use std::fmt;

use subtle::{Choice, ConstantTimeEq};
use warp::http::{header, HeaderMap};

use super::errors::ApiError;

/// Nomad's token header.
pub const TOKEN_HEADER: &str = "x-nomad-token";

/// The accepted tokens. Held in an `ArcSwap` by [`super::ApiState`] so that a reload
/// (SIGHUP) replaces them without a restart.
#[derive(Clone, Default)]
pub struct Acl {
    tokens: Vec<Box<[u8]>>,
}

impl fmt::Debug for Acl {
    // Never prints a token.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Acl")
            .field("tokens", &self.tokens.len())
            .finish()
    }
}

impl Acl {
    /// ACLs off: every request is allowed.
    pub fn disabled() -> Self {
        Self::default()
    }

    /// ACLs on when `tokens` holds at least one non-empty token.
    pub fn new<I, T>(tokens: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: AsRef<str>,
    {
        Self {
            tokens: tokens
                .into_iter()
                .filter(|t| !t.as_ref().is_empty())
                .map(|t| t.as_ref().as_bytes().into())
                .collect(),
        }
    }

    pub fn enabled(&self) -> bool {
        !self.tokens.is_empty()
    }

    /// How many tokens are accepted.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// True if `candidate` is one of the tokens. Compares against every token in constant
    /// time per token (only a token's length can show in the timing).
    pub fn accepts(&self, candidate: &[u8]) -> bool {
        let mut found = Choice::from(0);
        for token in &self.tokens {
            found |= token.as_ref().ct_eq(candidate);
        }
        found.into()
    }

    /// Checks a request's headers: `Ok` when ACLs are off or the token is accepted.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        if !self.enabled() {
            return Ok(());
        }
        match request_token(headers) {
            None => Err(ApiError::PermissionDenied),
            Some(token) if self.accepts(token) => Ok(()),
            Some(_) => Err(ApiError::TokenNotFound),
        }
    }
}

/// The token a request carries: `X-Nomad-Token`, else `Authorization: Bearer …`.
/// An empty value counts as no token (Nomad's anonymous token).
pub fn request_token(headers: &HeaderMap) -> Option<&[u8]> {
    if let Some(value) = headers.get(TOKEN_HEADER) {
        let token = value.as_bytes().trim_ascii();
        if !token.is_empty() {
            return Some(token);
        }
    }
    let value = headers.get(header::AUTHORIZATION)?.as_bytes().trim_ascii();
    const BEARER: &[u8] = b"bearer ";
    if value.len() > BEARER.len() && value[..BEARER.len()].eq_ignore_ascii_case(BEARER) {
        let token = value[BEARER.len()..].trim_ascii();
        if !token.is_empty() {
            return Some(token);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use warp::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn off_without_tokens() {
        let acl = Acl::new(Vec::<String>::new());
        assert!(!acl.enabled());
        assert_eq!(acl.check(&HeaderMap::new()), Ok(()));
        assert!(!Acl::new([""]).enabled());
    }

    #[test]
    fn on_with_tokens_from_either_header() {
        let acl = Acl::new(["first-token", "second-token"]);
        assert!(acl.enabled());
        assert_eq!(
            acl.check(&HeaderMap::new()),
            Err(ApiError::PermissionDenied)
        );
        assert_eq!(
            acl.check(&headers(&[("x-nomad-token", "")])),
            Err(ApiError::PermissionDenied)
        );
        assert_eq!(
            acl.check(&headers(&[("x-nomad-token", "nope-nope")])),
            Err(ApiError::TokenNotFound)
        );
        assert_eq!(
            acl.check(&headers(&[("x-nomad-token", "second-token")])),
            Ok(())
        );
        assert_eq!(
            acl.check(&headers(&[("authorization", "Bearer first-token")])),
            Ok(())
        );
        assert_eq!(
            acl.check(&headers(&[("authorization", "bearer  first-token ")])),
            Ok(())
        );
        assert_eq!(
            acl.check(&headers(&[("authorization", "Basic Zmlyc3QtdG9rZW4=")])),
            Err(ApiError::PermissionDenied)
        );
        // A prefix or an extension of a token is not the token.
        assert!(!acl.accepts(b"first-toke"));
        assert!(!acl.accepts(b"first-tokenn"));
    }

    #[test]
    fn debug_never_shows_tokens() {
        let acl = Acl::new(["super-secret-token"]);
        let text = format!("{acl:?}");
        assert!(!text.contains("secret"), "{text}");
    }
}
