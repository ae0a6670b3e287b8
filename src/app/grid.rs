//! Several sources at once: a grid of live views, each with its frame, the wgpu overlay (boxes
//! and label plates) and a HUD line of its own (fps, latency, drops, state). A click on a view
//! focuses it (it fills the window, the others keep running); another click, or Esc, shows
//! them all again.

use eframe::egui::{self, Color32, Pos2, Rect, Vec2};
use eframe::egui_wgpu::RenderState;

use super::ArvisApp;
use super::view::fit;
use crate::pipeline::live::{GridCell, GridStatus, SourceState};
use crate::render::overlay::{FrameTexture, OverlayCallback, OverlayRect};
use crate::render::palette::{class_color, text_color_on};
use crate::render::region_plate;

const LABEL_FONT: f32 = 12.0;

/// The grid as the window shows it.
#[derive(Default)]
pub(super) struct GridView {
    /// The sources as given (saved in the settings to reopen).
    pub(super) sources: Vec<String>,
    /// The pipeline's cells, as last read.
    pub(super) status: GridStatus,
    textures: Vec<Option<FrameTexture>>,
    /// The shot each texture holds.
    shown: Vec<u64>,
    /// The view filling the window, if one was clicked.
    pub(super) focused: Option<usize>,
    /// Where the grid was last drawn (screen points).
    pub(super) rect: Option<Rect>,
}

impl GridView {
    pub(super) fn new(sources: Vec<String>) -> GridView {
        GridView {
            sources,
            ..GridView::default()
        }
    }

    /// Take the pipeline's cells and upload the frames that are new; returns how many of them
    /// had detections.
    pub(super) fn poll(&mut self, status: GridStatus, rs: Option<&RenderState>) -> u64 {
        let n = status.cells.len();
        self.textures.resize_with(n, || None);
        self.shown.resize(n, 0);
        let mut with_detections = 0;
        for (i, cell) in status.cells.iter().enumerate() {
            let Some(shot) = &cell.shot else { continue };
            if self.shown[i] == shot.seq {
                continue;
            }
            self.shown[i] = shot.seq;
            if shot.detected && !shot.regions.is_empty() {
                with_detections += 1;
            }
            if let Some(rs) = rs {
                self.textures[i] = Some(FrameTexture::upload(
                    rs,
                    self.textures[i].take(),
                    &shot.frame.image,
                ));
            }
        }
        self.status = status;
        with_detections
    }

    /// Whether every source has shown a detected frame and none will show another (still
    /// images, files that ended): a scripted run has all it will get.
    pub(super) fn all_done(&self) -> bool {
        !self.status.cells.is_empty()
            && self
                .status
                .cells
                .iter()
                .all(|c| c.status.finished() && c.shot.as_ref().is_some_and(|s| s.detected))
    }
}

/// Columns and rows for `n` views: as square as it gets, never taller than wide.
pub fn layout(n: usize) -> (usize, usize) {
    let cols = ((n.max(1) as f64).sqrt().ceil() as usize).max(1);
    (cols, n.max(1).div_ceil(cols))
}

/// The views' rectangles in `avail`, row by row.
pub fn cell_rects(avail: Rect, n: usize) -> Vec<Rect> {
    let (cols, rows) = layout(n);
    let size = Vec2::new(avail.width() / cols as f32, avail.height() / rows as f32);
    (0..n)
        .map(|i| {
            let min = avail.min + Vec2::new((i % cols) as f32 * size.x, (i / cols) as f32 * size.y);
            Rect::from_min_size(min, size).shrink(2.0)
        })
        .collect()
}

/// One view's HUD line: name, state, processed fps, capture → result latency, drops.
pub fn hud_line(cell: &GridCell) -> String {
    let s = &cell.status;
    let state = match &s.state {
        SourceState::Running => format!("{:.1} fps", cell.processed_fps),
        SourceState::Failed {
            retry_in_ms: Some(ms),
            ..
        } => format!("lost, retrying in {:.1} s", *ms as f64 / 1e3),
        SourceState::Failed { error, .. } => format!("failed: {error}"),
        SourceState::Opening => "opening".into(),
        SourceState::Ended => "ended".into(),
        SourceState::Paused => "paused".into(),
        SourceState::Idle => "idle".into(),
    };
    let mut line = format!("{} · {state}", crate::render::short_name(&cell.name));
    if let Some(shot) = &cell.shot {
        line.push_str(&format!(" · {:.0} ms", shot.latency_ms));
    }
    line.push_str(&format!(" · dropped {}", s.dropped));
    if s.reconnects > 0 {
        line.push_str(&format!(" · reconnects {}", s.reconnects));
    }
    line
}

fn color(rgb: [u8; 3]) -> Color32 {
    Color32::from_rgb(rgb[0], rgb[1], rgb[2])
}

pub(super) fn grid_ui(app: &mut ArvisApp, ui: &mut egui::Ui) {
    let avail = ui.available_rect_before_wrap();
    let Some(grid) = app.grid.as_mut() else {
        return;
    };
    grid.rect = Some(avail);
    let grid = &*grid;
    let n = grid.status.cells.len();
    if n == 0 {
        ui.painter_at(avail).text(
            avail.center(),
            egui::Align2::CENTER_CENTER,
            format!("opening {} sources…", grid.sources.len()),
            egui::FontId::proportional(18.0),
            Color32::from_gray(160),
        );
        return;
    }
    let shown: Vec<usize> = match grid.focused.filter(|&i| i < n) {
        Some(i) => vec![i],
        None => (0..n).collect(),
    };
    let rects = cell_rects(avail, shown.len());
    let names = app.status.class_names.clone();
    let parts = app.settings.plate_parts(app.status.gallery_decision);
    let ppp = ui.ctx().pixels_per_point();
    let mut clicked = None;
    for (&i, &cell_rect) in shown.iter().zip(&rects) {
        let response = ui.interact(
            cell_rect,
            egui::Id::unique(("arvis-grid-cell", i)),
            egui::Sense::click(),
        );
        if response.clicked() {
            clicked = Some(i);
        }
        let painter = ui.painter_at(cell_rect);
        painter.rect_filled(cell_rect, 0.0, Color32::from_gray(12));
        let Some(grid) = app.grid.as_ref() else {
            return;
        };
        let cell = &grid.status.cells[i];
        if let (Some(shot), Some(Some(tex))) = (&cell.shot, grid.textures.get(i)) {
            let (w, h) = shot.frame.image.dimensions();
            let view = fit(cell_rect, (w, h));
            painter.image(
                tex.id,
                view,
                Rect::from_min_max(Pos2::ZERO, Pos2::new(1.0, 1.0)),
                Color32::WHITE,
            );
            let scale = view.width() / w as f32;
            let view_px = view.size() * ppp;
            let mut rects = Vec::with_capacity(shot.regions.len() * 2);
            let mut texts = Vec::new();
            for region in &shot.regions {
                let d = &region.detection;
                if !app.settings.class_enabled(d.class_id) {
                    continue;
                }
                let b = d.bbox;
                let rgb = class_color(d.class_id);
                let c = color(rgb);
                let r = [
                    b[0] / w as f32,
                    b[1] / h as f32,
                    b[2] / w as f32,
                    b[3] / h as f32,
                ];
                rects.push(OverlayRect::new(r, c, 2.0 * ppp, view_px));
                let text = region_plate(region, &names, parts);
                if text.is_empty() {
                    continue;
                }
                let galley = painter.layout_no_wrap(
                    text,
                    egui::FontId::proportional(LABEL_FONT),
                    color(text_color_on(rgb)),
                );
                let top_left = Pos2::new(view.min.x + b[0] * scale, view.min.y + b[1] * scale);
                let plate_size = galley.size() + Vec2::new(4.0, 2.0);
                let mut plate =
                    Rect::from_min_size(top_left - Vec2::new(0.0, plate_size.y), plate_size);
                if plate.min.y < view.min.y {
                    plate = plate.translate(Vec2::new(0.0, plate_size.y));
                }
                if plate.max.x > view.max.x {
                    plate = plate.translate(Vec2::new(view.max.x - plate.max.x, 0.0));
                }
                let to_view = |p: Pos2| {
                    [
                        (p.x - view.min.x) / view.width(),
                        (p.y - view.min.y) / view.height(),
                    ]
                };
                let [x0, y0] = to_view(plate.min);
                let [x1, y1] = to_view(plate.max);
                rects.push(OverlayRect::new([x0, y0, x1, y1], c, 0.0, view_px));
                texts.push((plate.min + Vec2::new(2.0, 1.0), galley));
            }
            OverlayCallback::paint(&painter, view, rects);
            for (pos, galley) in texts {
                painter.galley(pos, galley, Color32::WHITE);
            }
        }
        // The HUD line: along the view's top, on a dark strip so it reads over any frame.
        let failed = matches!(cell.status.state, SourceState::Failed { .. });
        if let SourceState::Failed { error, .. } = &cell.status.state {
            // Why it is lost, over the view (its last frame, if any, stays under it).
            let galley = painter.layout(
                error.clone(),
                egui::FontId::proportional(13.0),
                Color32::from_rgb(255, 170, 150),
                cell_rect.width() - 24.0,
            );
            let at = cell_rect.center() - galley.size() / 2.0;
            painter.rect_filled(
                Rect::from_min_size(at, galley.size()).expand(6.0),
                4.0,
                Color32::from_black_alpha(200),
            );
            painter.galley(at, galley, Color32::WHITE);
        }
        let galley = painter.layout_no_wrap(
            hud_line(cell),
            egui::FontId::monospace(12.0),
            if failed {
                Color32::from_rgb(255, 140, 120)
            } else {
                Color32::from_gray(230)
            },
        );
        let strip = Rect::from_min_size(
            cell_rect.min,
            Vec2::new(cell_rect.width(), galley.size().y + 6.0),
        );
        painter.rect_filled(strip, 0.0, Color32::from_black_alpha(170));
        painter.galley(strip.min + Vec2::new(6.0, 3.0), galley, Color32::WHITE);
        if response.hovered() {
            painter.rect_stroke(
                cell_rect,
                0.0,
                egui::Stroke::new(1.0, Color32::from_gray(120)),
                egui::StrokeKind::Inside,
            );
        }
    }
    // What serves them all: the one detector and how frames reach it.
    if app.settings.show_hud
        && let Some(grid) = app.grid.as_ref()
    {
        let schedule = match grid.status.schedule.as_deref() {
            // Why not batched: on the CPU a batch costs what its frames do; on a GPU the
            // detector line says what kept its batch twin out.
            Some("one at a time") => "one at a time (batched only on a GPU, see doctor)",
            Some(other) => other,
            None => "starting",
        };
        let text = format!(
            "{} sources · detection {schedule} · detector: {}",
            n,
            super::view::stage_text(&app.status.detector)
        );
        let painter = ui.painter_at(avail);
        let galley =
            painter.layout_no_wrap(text, egui::FontId::monospace(12.0), Color32::from_gray(230));
        let plate = Rect::from_min_size(
            avail.left_bottom() - Vec2::new(0.0, galley.size().y + 6.0),
            galley.size() + Vec2::new(12.0, 6.0),
        );
        painter.rect_filled(plate, 0.0, Color32::from_black_alpha(170));
        painter.galley(plate.min + Vec2::new(6.0, 3.0), galley, Color32::WHITE);
    }
    if let (Some(i), Some(grid)) = (clicked, app.grid.as_mut()) {
        grid.focused = if grid.focused == Some(i) {
            None
        } else {
            Some(i)
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views_are_laid_out_as_square_as_they_go() {
        assert_eq!(layout(1), (1, 1));
        assert_eq!(layout(2), (2, 1));
        assert_eq!(layout(4), (2, 2));
        assert_eq!(layout(5), (3, 2));
        let rects = cell_rects(Rect::from_min_size(Pos2::ZERO, Vec2::new(800.0, 600.0)), 4);
        assert_eq!(rects.len(), 4);
        assert!(rects[3].min.x >= 400.0 && rects[3].min.y >= 300.0);
        for (i, a) in rects.iter().enumerate() {
            for b in &rects[i + 1..] {
                assert!(!a.intersects(*b), "{a:?} {b:?}");
            }
        }
    }
}
