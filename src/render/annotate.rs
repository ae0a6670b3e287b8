//! Draw boxes and label plates into an RGB image on the CPU (for `--save` and video export).

use ab_glyph::{Font, FontRef, PxScale, ScaleFont};
use image::RgbImage;

use super::palette::{class_color, text_color_on};
use crate::search::{MatchView, Region};

/// What to draw for one box.
#[derive(Debug, Clone)]
pub struct BoxLabel {
    /// Picks the box's colour.
    pub class_id: usize,
    /// `[x1, y1, x2, y2]` in image pixels.
    pub bbox: [f32; 4],
    /// The plate's text (empty: no plate).
    pub text: String,
}

/// Draws boxes with labels, sized to the image like Ultralytics' annotator.
pub struct Annotator {
    font: FontRef<'static>,
}

impl Annotator {
    /// An annotator using egui's default proportional font, so exports look like the app.
    pub fn new() -> Option<Annotator> {
        FontRef::try_from_slice(epaint_default_fonts::UBUNTU_LIGHT)
            .ok()
            .map(|font| Annotator { font })
    }

    /// Draw every box, then every label (labels stay readable over neighbouring boxes).
    pub fn draw(&self, image: &mut RgbImage, boxes: &[BoxLabel]) {
        let (w, h) = image.dimensions();
        let line_px = (((w + h) as f32 / 2.0 * 0.003).round() as i32).max(2);
        let font_px = (((w + h) as f32 / 2.0 * 0.022).round()).max(12.0);
        for b in boxes {
            let color = class_color(b.class_id);
            let [x1, y1, x2, y2] = b.bbox.map(|v| v.round() as i32);
            for t in 0..line_px {
                draw_rect_outline(image, x1 + t, y1 + t, x2 - t, y2 - t, color);
            }
        }
        for b in boxes {
            if !b.text.is_empty() {
                let [x1, y1, _, _] = b.bbox.map(|v| v.round() as i32);
                self.draw_label(image, x1, y1, &b.text, class_color(b.class_id), font_px);
            }
        }
    }

    fn draw_label(
        &self,
        image: &mut RgbImage,
        x: i32,
        y: i32,
        text: &str,
        bg: [u8; 3],
        font_px: f32,
    ) {
        let font = self.font.as_scaled(PxScale::from(font_px));
        let pad = (font_px * 0.2).round() as i32;
        let text_w = text
            .chars()
            .map(|c| font.h_advance(font.glyph_id(c)))
            .sum::<f32>()
            .ceil() as i32;
        let plate_h = font.height().ceil() as i32 + pad;
        let plate_w = text_w + 2 * pad;
        // Above the box when there is room, else just inside its top edge.
        let top = if y - plate_h >= 0 { y - plate_h } else { y };
        let left = x.clamp(0, (image.width() as i32 - plate_w).max(0));
        fill_rect(image, left, top, left + plate_w, top + plate_h, bg);
        let fg = text_color_on(bg);
        let mut caret = left as f32 + pad as f32;
        let baseline = top as f32 + pad as f32 / 2.0 + font.ascent();
        for c in text.chars() {
            let id = font.glyph_id(c);
            let glyph = id
                .with_scale_and_position(PxScale::from(font_px), ab_glyph::point(caret, baseline));
            caret += font.h_advance(id);
            if let Some(outlined) = self.font.outline_glyph(glyph) {
                let bounds = outlined.px_bounds();
                outlined.draw(|gx, gy, coverage| {
                    let px = bounds.min.x as i32 + gx as i32;
                    let py = bounds.min.y as i32 + gy as i32;
                    blend(image, px, py, fg, coverage);
                });
            }
        }
    }
}

fn blend(image: &mut RgbImage, x: i32, y: i32, color: [u8; 3], alpha: f32) {
    if x < 0 || y < 0 || x >= image.width() as i32 || y >= image.height() as i32 {
        return;
    }
    let p = image.get_pixel_mut(x as u32, y as u32);
    for (channel, &target) in p.0.iter_mut().zip(&color) {
        *channel = (f32::from(*channel) * (1.0 - alpha) + f32::from(target) * alpha).round() as u8;
    }
}

fn fill_rect(image: &mut RgbImage, x1: i32, y1: i32, x2: i32, y2: i32, color: [u8; 3]) {
    let (w, h) = (image.width() as i32, image.height() as i32);
    for y in y1.max(0)..y2.min(h) {
        for x in x1.max(0)..x2.min(w) {
            image.put_pixel(x as u32, y as u32, image::Rgb(color));
        }
    }
}

fn draw_rect_outline(image: &mut RgbImage, x1: i32, y1: i32, x2: i32, y2: i32, color: [u8; 3]) {
    if x2 < x1 || y2 < y1 {
        return;
    }
    fill_rect(image, x1, y1, x2 + 1, y1 + 1, color);
    fill_rect(image, x1, y2, x2 + 1, y2 + 1, color);
    fill_rect(image, x1, y1, x1 + 1, y2 + 1, color);
    fill_rect(image, x2, y1, x2 + 1, y2 + 1, color);
}

/// The file name of a gallery path, for compact labels.
pub fn short_name(path: &str) -> &str {
    std::path::Path::new(path)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or(path)
}

/// Which parts of a region's label plate to show.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlateParts {
    /// The class name.
    pub class: bool,
    /// The detection score.
    pub score: bool,
    /// The known item (and text item) the region is, when the decision names one.
    pub best_match: bool,
    /// When a region is named as an item.
    pub view: MatchView,
}

impl PlateParts {
    /// Everything, as exported videos show it.
    pub fn all(view: MatchView) -> PlateParts {
        PlateParts {
            class: true,
            score: true,
            best_match: true,
            view,
        }
    }
}

/// A region's label plate (see [`plate_text`]); `labels` are the detector's class names.
pub fn region_plate(region: &Region, labels: &[String], parts: PlateParts) -> String {
    let d = &region.detection;
    plate_text(
        parts
            .class
            .then(|| labels.get(d.class_id).map_or("?", String::as_str)),
        parts.score.then_some(d.score),
        region.track_id,
        region
            .known_item(&parts.view.decision)
            .filter(|_| parts.best_match)
            .map(|k| (k.label, k.score)),
        region
            .text_item(&parts.view.decision)
            .filter(|_| parts.best_match)
            .map(|t| (t.label.as_str(), t.score)),
    )
}

/// A label for each region, drawn the way [`region_plate`] words it.
pub fn region_labels(regions: &[&Region], labels: &[String], parts: PlateParts) -> Vec<BoxLabel> {
    regions
        .iter()
        .map(|r| BoxLabel {
            class_id: r.detection.class_id,
            bbox: r.detection.bbox,
            text: region_plate(r, labels, parts),
        })
        .collect()
}

/// The text of a box's label plate, the same in the app, snapshots and exported videos:
/// `person 0.93 #3  ≈ red-mug 0.87  "extinguisher" 0.28` (each part optional: the known item
/// after `≈`, a text-defined item in quotes).
pub fn plate_text(
    label: Option<&str>,
    score: Option<f32>,
    track_id: Option<u64>,
    best_match: Option<(&str, f32)>,
    text_item: Option<(&str, f32)>,
) -> String {
    let mut parts: Vec<String> = Vec::new();
    if let Some(l) = label {
        parts.push(l.to_string());
    }
    if let Some(s) = score {
        parts.push(format!("{s:.2}"));
    }
    if let Some(id) = track_id {
        parts.push(format!("#{id}"));
    }
    let mut text = parts.join(" ");
    if let Some((name, s)) = best_match {
        if !text.is_empty() {
            text.push_str("  ");
        }
        text.push_str(&format!("≈ {name} {s:.2}"));
    }
    if let Some((name, s)) = text_item {
        if !text.is_empty() {
            text.push_str("  ");
        }
        text.push_str(&format!("\"{name}\" {s:.2}"));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_box_edges_in_class_colour_and_a_label() {
        let mut img = RgbImage::new(200, 200);
        let annot = Annotator::new().expect("built-in font parses");
        annot.draw(
            &mut img,
            &[BoxLabel {
                class_id: 5,
                bbox: [50.0, 80.0, 150.0, 180.0],
                text: "bus 0.81".into(),
            }],
        );
        let c = class_color(5);
        assert_eq!(img.get_pixel(50, 130).0, c, "left edge");
        assert_eq!(
            img.get_pixel(149, 179).0,
            c,
            "bottom-right corner inside the line"
        );
        assert_eq!(img.get_pixel(100, 130).0, [0, 0, 0], "interior untouched");
        // The plate sits above the box and holds text pixels of the contrasting colour.
        let plate: Vec<_> = (50..120)
            .flat_map(|x| (60..80).map(move |y| (x, y)))
            .map(|(x, y)| img.get_pixel(x, y).0)
            .collect();
        assert!(
            plate.iter().filter(|p| **p == c).count() > 100,
            "plate filled"
        );
        assert!(plate.iter().any(|p| *p != c), "text drawn on plate");
    }

    #[test]
    fn boxes_outside_the_image_do_not_panic() {
        let mut img = RgbImage::new(10, 10);
        let annot = Annotator::new().expect("font");
        annot.draw(
            &mut img,
            &[BoxLabel {
                class_id: 0,
                bbox: [-50.0, -50.0, 500.0, 500.0],
                text: "person 0.99".into(),
            }],
        );
    }
}
