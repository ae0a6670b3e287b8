//! The central view: the frame, the wgpu overlay (boxes, highlights, label plates), label text,
//! hit-testing for hover and click, and the HUD.

use eframe::egui::{self, Color32, Pos2, Rect, Vec2};

use super::ArvisApp;
use crate::pipeline::live::{SourceState, Stage};
use crate::render::overlay::{OverlayCallback, OverlayRect};
use crate::render::palette::{class_color, text_color_on};
use crate::render::region_plate;

const LABEL_FONT: f32 = 13.0;

fn color(rgb: [u8; 3]) -> Color32 {
    Color32::from_rgb(rgb[0], rgb[1], rgb[2])
}

/// Index of the smallest visible box containing `p` (image pixels).
fn hit_test(boxes: &[(usize, [f32; 4])], p: Pos2) -> Option<usize> {
    boxes
        .iter()
        .filter(|(_, b)| p.x >= b[0] && p.x <= b[2] && p.y >= b[1] && p.y <= b[3])
        .min_by(|a, b| area(&a.1).total_cmp(&area(&b.1)))
        .map(|(i, _)| *i)
}

fn area(b: &[f32; 4]) -> f32 {
    (b[2] - b[0]) * (b[3] - b[1])
}

/// Where the frame is drawn: fitted into `avail`, centred, aspect kept.
pub(super) fn fit(avail: Rect, size: (u32, u32)) -> Rect {
    let (w, h) = (size.0.max(1) as f32, size.1.max(1) as f32);
    let scale = (avail.width() / w).min(avail.height() / h);
    Rect::from_center_size(avail.center(), Vec2::new(w * scale, h * scale))
}

pub(super) fn central_ui(app: &mut ArvisApp, ui: &mut egui::Ui) {
    let avail = ui.available_rect_before_wrap();
    let response = ui.allocate_rect(avail, egui::Sense::click());
    let painter = ui.painter_at(avail);

    let Some(shown) = app.shown.clone() else {
        app.view = None;
        placeholder(app, &painter, avail);
        drop_hint(ui, &painter, avail);
        return;
    };
    let (w, h) = shown.frame.image.dimensions();
    let view = fit(avail, (w, h));
    app.view = Some(view);
    if let Some(tex) = &app.frame_texture {
        painter.image(
            tex.id,
            view,
            Rect::from_min_max(Pos2::ZERO, Pos2::new(1.0, 1.0)),
            Color32::WHITE,
        );
    }
    let scale = view.width() / w as f32;
    let ui_from_image = |x: f32, y: f32| Pos2::new(view.min.x + x * scale, view.min.y + y * scale);

    let visible: Vec<(usize, [f32; 4])> = shown
        .regions
        .iter()
        .enumerate()
        .filter(|(_, r)| app.settings.class_enabled(r.detection.class_id))
        .map(|(i, r)| (i, r.detection.bbox))
        .collect();
    app.hovered = response.hover_pos().and_then(|p| {
        let img = Pos2::new((p.x - view.min.x) / scale, (p.y - view.min.y) / scale);
        hit_test(&visible, img)
    });
    if response.clicked() {
        app.selected = if app.hovered == app.selected {
            None
        } else {
            app.hovered
        };
    }

    let ppp = ui.ctx().pixels_per_point();
    let view_px = view.size() * ppp;
    // Overlay coordinates: [0, 1] across the displayed frame.
    let view_from_ui = |p: Pos2| {
        [
            (p.x - view.min.x) / view.width(),
            (p.y - view.min.y) / view.height(),
        ]
    };
    let mut rects = Vec::with_capacity(visible.len() * 3);
    let mut texts = Vec::new();
    let names = app.status.class_names.clone();
    for &(i, b) in &visible {
        let region = &shown.regions[i];
        let d = &region.detection;
        let rgb = class_color(d.class_id);
        let c = color(rgb);
        let focused = app.selected == Some(i) || app.hovered == Some(i);
        let r = [
            b[0] / w as f32,
            b[1] / h as f32,
            b[2] / w as f32,
            b[3] / h as f32,
        ];
        if focused {
            rects.push(OverlayRect::new(r, c.gamma_multiply(0.15), 0.0, view_px));
        }
        let thickness = if focused { 4.0 } else { 2.0 } * ppp;
        rects.push(OverlayRect::new(r, c, thickness, view_px));

        let text = region_plate(
            region,
            &names,
            app.settings.plate_parts(app.status.gallery_decision),
        );
        if text.is_empty() {
            continue;
        }
        let galley = painter.layout_no_wrap(
            text,
            egui::FontId::proportional(LABEL_FONT),
            color(text_color_on(rgb)),
        );
        let top_left = ui_from_image(b[0], b[1]);
        let plate_size = galley.size() + Vec2::new(6.0, 2.0);
        // Above the box when it fits, else just inside its top edge.
        let mut plate = Rect::from_min_size(top_left - Vec2::new(0.0, plate_size.y), plate_size);
        if plate.min.y < view.min.y {
            plate = plate.translate(Vec2::new(0.0, plate_size.y));
        }
        if plate.max.x > view.max.x {
            plate = plate.translate(Vec2::new(view.max.x - plate.max.x, 0.0));
        }
        let [x0, y0] = view_from_ui(plate.min);
        let [x1, y1] = view_from_ui(plate.max);
        rects.push(OverlayRect::new([x0, y0, x1, y1], c, 0.0, view_px));
        texts.push((plate.min + Vec2::new(3.0, 1.0), galley));
    }
    OverlayCallback::paint(&painter, view, rects);
    for (pos, galley) in texts {
        painter.galley(pos, galley, Color32::WHITE);
    }

    if let SourceState::Failed { error, retry_in_ms } = &app.status.source {
        banner(&painter, avail, &failure_text(error, *retry_in_ms), true);
    }
    if app.settings.show_hud {
        hud_ui(app, ui, avail);
    }
    drop_hint(ui, &painter, avail);
}

fn failure_text(error: &str, retry_in_ms: Option<u64>) -> String {
    match retry_in_ms {
        Some(ms) => format!("{error}\nreconnecting in {:.1} s…", ms as f64 / 1e3),
        None => error.to_string(),
    }
}

fn banner(painter: &egui::Painter, avail: Rect, text: &str, error: bool) {
    let galley = painter.layout(
        text.to_string(),
        egui::FontId::proportional(16.0),
        if error {
            Color32::from_rgb(255, 190, 190)
        } else {
            Color32::LIGHT_GRAY
        },
        avail.width() - 40.0,
    );
    let rect = Rect::from_center_size(avail.center(), galley.size() + Vec2::splat(24.0));
    painter.rect_filled(rect, 6.0, Color32::from_black_alpha(200));
    painter.galley(rect.min + Vec2::splat(12.0), galley, Color32::WHITE);
}

fn placeholder(app: &ArvisApp, painter: &egui::Painter, avail: Rect) {
    let text = match &app.status.source {
        SourceState::Failed { error, retry_in_ms } => failure_text(error, *retry_in_ms),
        SourceState::Opening => format!("opening {}…", app.status.source_label),
        _ => "Drop an image (lookup), a video (playback) or a folder (add to the index) here,\n\
              or choose Open… or a camera above."
            .to_string(),
    };
    let failed = matches!(app.status.source, SourceState::Failed { .. });
    banner(painter, avail, &text, failed);
}

fn drop_hint(ui: &egui::Ui, painter: &egui::Painter, avail: Rect) {
    if ui.ctx().input(|i| !i.raw.hovered_files.is_empty()) {
        painter.rect_filled(avail, 0.0, Color32::from_black_alpha(160));
        painter.text(
            avail.center(),
            egui::Align2::CENTER_CENTER,
            "Drop to open: image → lookup · video → play · folder → add to index",
            egui::FontId::proportional(20.0),
            Color32::WHITE,
        );
    }
}

/// One short line for the HUD; the side panel shows failures in full, and a cut line says so.
pub(super) fn stage_text(stage: &Stage) -> String {
    let line = match stage {
        Stage::Off => "not loaded".into(),
        Stage::Loading(m) => format!("loading: {m}"),
        Stage::Ready(m) => m.clone(),
        Stage::Absent(m) => format!("none yet: {m}"),
        Stage::Failed(m) => format!("unavailable: {m}"),
    };
    let first = line.lines().next().unwrap_or_default();
    let cut = first.chars().count() > 72 || line.lines().count() > 1;
    match (cut, stage) {
        (true, Stage::Failed(_) | Stage::Absent(_)) => format!(
            "{}… (whole message and fix in the side panel)",
            first.chars().take(48).collect::<String>()
        ),
        (true, _) => format!("{}…", first.chars().take(71).collect::<String>()),
        (false, _) => first.to_string(),
    }
}

/// The HUD lines, also used by tests.
pub(super) fn hud_lines(app: &ArvisApp) -> Vec<String> {
    let s = &app.status;
    // Rates are only meaningful while frames flow (not for a still, a pause or an ended file).
    let flowing = s.source == SourceState::Running
        && app
            .shown_at
            .is_some_and(|t| t.elapsed() < std::time::Duration::from_secs(2));
    let rate = |fps: f64| {
        if flowing {
            format!("{fps:.1}")
        } else {
            "–".to_string()
        }
    };
    let mut lines = vec![format!(
        "display {} fps · capture {} fps · inference {} fps",
        rate(app.display_fps),
        rate(s.capture_fps),
        rate(s.inference_fps)
    )];
    if let Some(t) = app.shown.as_ref().map(|s| s.timings) {
        lines.push(format!(
            "ms: queue {:.1} · pre {:.1} · infer {:.1} · post {:.1} · match {:.1}",
            t.wait_ms, t.preprocess_ms, t.infer_ms, t.postprocess_ms, t.match_ms
        ));
        lines.push(format!(
            "capture→screen {:.0} ms (capture→snapshot {:.0} ms)",
            app.screen_latency_ms, t.pipeline_ms
        ));
    }
    lines.push(format!(
        "dropped: {} before detection · {} before matching",
        s.counters.dropped_before_detect, s.counters.dropped_before_embed
    ));
    if s.counters.regions_matched > 0 {
        lines.push(format!(
            "CLIP crops: {} for {} regions (per-track embedding)",
            s.counters.crops_embedded, s.counters.regions_matched
        ));
    }
    lines.push(format!("detector: {}", stage_text(&s.detector)));
    if app.settings.matching {
        lines.push(format!("CLIP: {}", stage_text(&s.embedder)));
        let index = match &s.index {
            Stage::Ready(m) => format!("{m} in {}", app.settings.gallery_shown()),
            other => stage_text(other),
        };
        lines.push(format!("index: {index}"));
    }
    if let Some(info) = &s.source_info {
        lines.push(format!("source: {} ({})", info.name, info.format));
    }
    for g in app.gpus.latest() {
        lines.push(format!(
            "GPU {}: {} · {} / {} MiB in use",
            g.index, g.name, g.memory_used_mib, g.memory_total_mib
        ));
    }
    lines
}

fn hud_ui(app: &ArvisApp, ui: &egui::Ui, avail: Rect) {
    let lines = hud_lines(app);
    // Bottom-left: label plates sit at the tops of boxes.
    egui::Area::new(egui::Id::unique("arvis-hud"))
        .pivot(egui::Align2::LEFT_BOTTOM)
        .fixed_pos(avail.left_bottom() + Vec2::new(8.0, -8.0))
        .order(egui::Order::Foreground)
        .interactable(false)
        .show(ui.ctx(), |ui| {
            egui::Frame::NONE
                .fill(Color32::from_black_alpha(170))
                .inner_margin(6.0)
                .corner_radius(4.0)
                .show(ui, |ui| {
                    for line in lines {
                        ui.label(
                            egui::RichText::new(line)
                                .monospace()
                                .size(12.0)
                                .color(Color32::from_gray(230)),
                        );
                    }
                });
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fit_keeps_aspect_and_centres() {
        let r = fit(
            Rect::from_min_size(Pos2::ZERO, Vec2::new(800.0, 400.0)),
            (400, 400),
        );
        assert_eq!(
            r,
            Rect::from_min_size(Pos2::new(200.0, 0.0), Vec2::new(400.0, 400.0))
        );
    }

    #[test]
    fn hit_test_prefers_the_smallest_box() {
        let boxes = [(0, [0.0, 0.0, 100.0, 100.0]), (1, [10.0, 10.0, 30.0, 30.0])];
        assert_eq!(hit_test(&boxes, Pos2::new(20.0, 20.0)), Some(1));
        assert_eq!(hit_test(&boxes, Pos2::new(50.0, 50.0)), Some(0));
        assert_eq!(hit_test(&boxes, Pos2::new(150.0, 50.0)), None);
    }
}
