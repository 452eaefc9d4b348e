//! Bearer-token authentication of the API routes (`--api-key`).

use axum::http::{header, HeaderMap};
use subtle::ConstantTimeEq;

use crate::error::ApiError;

/// Checks `Authorization: Bearer <token>` against the configured key, when there is one. The
/// scheme is case-insensitive (RFC 9110 §11.1); the token is compared in constant time.
pub fn check_api_key(expected: Option<&str>, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(expected) = expected else {
        return Ok(());
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    match given {
        Some(token) if bool::from(token.as_bytes().ct_eq(expected.as_bytes())) => Ok(()),
        _ => Err(ApiError::Unauthorized),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn with(value: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_static(value));
        h
    }

    #[test]
    fn api_key_needs_the_exact_bearer_token() {
        assert!(check_api_key(None, &HeaderMap::new()).is_ok());
        assert!(check_api_key(Some("s3cret"), &HeaderMap::new()).is_err());
        assert!(check_api_key(Some("s3cret"), &with("Bearer s3cre")).is_err());
        assert!(check_api_key(Some("s3cret"), &with("Bearer s3cret")).is_ok());
        assert!(check_api_key(Some("s3cret"), &with("Basic s3cret")).is_err());
    }

    #[test]
    fn the_scheme_is_case_insensitive() {
        assert!(check_api_key(Some("s3cret"), &with("bearer s3cret")).is_ok());
        assert!(check_api_key(Some("s3cret"), &with("BEARER s3cret")).is_ok());
    }
}
