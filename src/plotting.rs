//! Fonts for the plots of `bench` and `simulate`. The font is embedded, so plotting needs no
//! fontconfig or freetype on the machine (the runtime images carry the binary only).

use std::sync::Once;

use plotters::style::{register_font, FontStyle};

/// DejaVu Sans (see assets/fonts/LICENSE).
const SANS: &[u8] = include_bytes!("../assets/fonts/DejaVuSans.ttf");

/// Registers the embedded font as `sans-serif`; cheap after the first call.
pub fn ensure_fonts() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if register_font("sans-serif", FontStyle::Normal, SANS).is_err() {
            tracing::warn!("the embedded font could not be registered: plots will lack text");
        }
    });
}
