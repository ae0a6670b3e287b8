//! Per-class colours (Ultralytics' palette, so users see familiar colours).

const PALETTE: [u32; 20] = [
    0xFF3838, 0xFF9D97, 0xFF701F, 0xFFB21D, 0xCFD231, 0x48F90A, 0x92CC17, 0x3DDB86, 0x1A9334,
    0x00D4BB, 0x2C99A8, 0x00C2FF, 0x344593, 0x6473FF, 0x0018EC, 0x8438FF, 0x520085, 0xCB38FF,
    0xFF95C8, 0xFF37C7,
];

/// RGB colour for a class id.
pub fn class_color(class_id: usize) -> [u8; 3] {
    let c = PALETTE[class_id % PALETTE.len()];
    [(c >> 16) as u8, (c >> 8) as u8, c as u8]
}

/// Black or white, whichever reads better on `bg`.
pub fn text_color_on(bg: [u8; 3]) -> [u8; 3] {
    let luma = 0.299 * f32::from(bg[0]) + 0.587 * f32::from(bg[1]) + 0.114 * f32::from(bg[2]);
    if luma > 160.0 {
        [0, 0, 0]
    } else {
        [255, 255, 255]
    }
}
