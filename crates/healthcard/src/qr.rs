//! QR rendering of a payload: an SVG string for screens and the portal, and a greyscale
//! bitmap (one byte per pixel) for printing pipelines and for decoding in tests. Error
//! correction level M (15%): a phone screen scanned at a counter is rarely damaged, and M keeps
//! the code small. `QrCode::new` picks the alphanumeric mode for `HC1:` + base32 by itself.

use crate::CodeError;
use qrcode::{Color, EcLevel, QrCode};

/// Quiet zone around the symbol, in modules (ISO/IEC 18004 asks for 4).
const QUIET_ZONE: usize = 4;

fn symbol(payload: &str) -> Result<QrCode, CodeError> {
    QrCode::with_error_correction_level(payload.as_bytes(), EcLevel::M)
        .map_err(|e| CodeError::Malformed(format!("the payload does not fit a QR code: {e}")))
}

/// An SVG document of at least `min_size` pixels square.
pub fn svg(payload: &str, min_size: u32) -> Result<String, CodeError> {
    Ok(symbol(payload)?
        .render::<qrcode::render::svg::Color>()
        .min_dimensions(min_size, min_size)
        .quiet_zone(true)
        .build())
}

/// A square greyscale bitmap (0 dark, 255 light), `scale` pixels per module, quiet zone
/// included: `(side, pixels)` with `pixels.len() == side * side`, rows top to bottom.
pub fn greyscale(payload: &str, scale: usize) -> Result<(usize, Vec<u8>), CodeError> {
    let code = symbol(payload)?;
    let width = code.width();
    let colors = code.to_colors();
    let scale = scale.max(1);
    let side = (width + 2 * QUIET_ZONE) * scale;
    let mut pixels = vec![255u8; side * side];
    for (index, color) in colors.iter().enumerate() {
        if *color != Color::Dark {
            continue;
        }
        let (x, y) = ((index % width + QUIET_ZONE) * scale, (index / width + QUIET_ZONE) * scale);
        for row in y..y + scale {
            pixels[row * side + x..row * side + x + scale].fill(0);
        }
    }
    Ok((side, pixels))
}
