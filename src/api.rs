//! The names a client sees on the wire, defined once: multipart part names, response headers and
//! query parameters. The server, the OpenAPI document, the benchmark client and the tests use them.

/// The person photo part of `POST /tryon`.
pub const PERSON_PART: &str = "person_image";
/// The garment product photo part.
pub const CLOTH_PART: &str = "cloth_image";
/// The optional garment mask part (white = garment).
pub const MASK_PART: &str = "cloth_mask";
/// The optional person mask part of diffusion models (white = repaint).
pub const PERSON_MASK_PART: &str = "person_mask";
/// The seed a diffusion request was sampled with (the client's, or a drawn one).
pub const SEED_HEADER: &str = "x-seed";

/// The request id, taken from the client when it is a short visible-ASCII token, else made here.
pub const REQUEST_ID_HEADER: &str = "x-request-id";
/// The model that answered.
pub const MODEL_HEADER: &str = "x-model";
/// How many requests ran in the answering batch.
pub const BATCH_SIZE_HEADER: &str = "x-batch-size";
/// Milliseconds from admission to the start of the batch.
pub const QUEUE_TIME_HEADER: &str = "x-queue-time-ms";
/// Milliseconds of the batch's forward pass.
pub const INFERENCE_TIME_HEADER: &str = "x-inference-time-ms";

/// Every response header a successful `/tryon` carries, for the OpenAPI check.
pub const TRYON_HEADERS: &[&str] = &[
    REQUEST_ID_HEADER,
    MODEL_HEADER,
    BATCH_SIZE_HEADER,
    QUEUE_TIME_HEADER,
    INFERENCE_TIME_HEADER,
];

/// Longest client string the server repeats back (in an error message or a log line).
pub const MAX_ECHO_CHARS: usize = 200;

/// A client string made safe to repeat: at most [`MAX_ECHO_CHARS`] characters, control
/// characters escaped, and an ellipsis where it was cut.
pub fn echo(s: &str) -> String {
    let mut out: String = s
        .chars()
        .take(MAX_ECHO_CHARS)
        .flat_map(char::escape_default)
        .collect();
    if s.chars().nth(MAX_ECHO_CHARS).is_some() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_cuts_long_strings_and_escapes_control_characters() {
        assert_eq!(echo("image/png"), "image/png");
        assert_eq!(echo("a\nb"), "a\\nb");
        let long = "x".repeat(60_000);
        let e = echo(&long);
        assert_eq!(e.chars().count(), MAX_ECHO_CHARS + 1);
        assert!(e.ends_with('…'));
    }
}
