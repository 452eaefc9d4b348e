//! Request ids: a client's `x-request-id` is kept only when it is a short visible-ASCII token;
//! otherwise it is replaced by a fresh one, so that nothing long or odd is echoed or logged.

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;

use crate::api::REQUEST_ID_HEADER;

/// Longest request id taken from a client.
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// Whether a client's request id may be kept.
pub fn acceptable(id: &[u8]) -> bool {
    !id.is_empty() && id.len() <= MAX_REQUEST_ID_LEN && id.iter().all(|b| b.is_ascii_graphic())
}

/// Drops an unacceptable `x-request-id` before the id layer, which then makes a fresh one.
pub async fn sanitize(mut request: Request, next: Next) -> Response {
    let headers = request.headers_mut();
    let keep = {
        let mut ids = headers.get_all(REQUEST_ID_HEADER).iter();
        match (ids.next(), ids.next()) {
            (Some(id), None) => acceptable(id.as_bytes()),
            (None, _) => true,
            _ => false,
        }
    };
    if !keep {
        headers.remove(REQUEST_ID_HEADER);
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_short_visible_ascii_ids_are_kept() {
        assert!(acceptable(b"abc-123_XYZ.42"));
        assert!(!acceptable(b""));
        assert!(!acceptable(b"has space"));
        assert!(!acceptable("é".as_bytes()));
        assert!(!acceptable(&[b'a'; MAX_REQUEST_ID_LEN + 1]));
        assert!(acceptable(&[b'a'; MAX_REQUEST_ID_LEN]));
    }
}
