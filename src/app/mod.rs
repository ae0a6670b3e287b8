//! The desktop app: an eframe window on wgpu showing the live source with the detection overlay,
//! region matches, a HUD and settings. All inference runs in the [`Pipeline`]'s threads; the UI
//! only reads the newest immutable snapshot, uploads its frame into one reused texture and draws.

mod browse;
mod grid;

pub use grid::{cell_rects as grid_cell_rects, hud_line as grid_hud_line, layout as grid_layout};

/// Where a frame of `size` is drawn in `avail`: fitted, centred, aspect kept.
pub fn fit_rect(avail: egui::Rect, size: (u32, u32)) -> egui::Rect {
    view::fit(avail, size)
}
mod panels;
pub mod settings;
mod snapshot;
mod view;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use eframe::egui;
use eframe::egui_wgpu::RenderState;

use crate::detect::DetectOptions;
use crate::pipeline::live::{
    LiveOptions, LoadedDetector, LoadedEncoder, Loaders, Pipeline, PipelineConfig, PipelineStatus,
    RateMeter, Snapshot, SourceCommand, SourceState, Stage,
};
use crate::render::overlay::{self, FrameTexture};
use crate::search::{GalleryLocation, GalleryStore};
use crate::source::SourceSpec;
use settings::Settings;

/// How the app was started.
#[derive(Debug, Clone, Default)]
pub struct AppOptions {
    /// `camera`, `camera:N`, a stream URL or a path; two or more are shown as a grid; none
    /// reopens the last source (or grid).
    pub sources: Vec<String>,
    /// Gallery index directory (overrides the saved setting).
    pub index: Option<PathBuf>,
    /// Where crops added from the view are saved (overrides the saved setting).
    pub gallery_images: Option<PathBuf>,
    /// Save a screenshot of the window here once `exit_after_frames` frames with detections
    /// were shown (or after the first such frame when that is not set).
    pub screenshot: Option<PathBuf>,
    /// Quit after this many frames with detections (scripted runs, smoke tests).
    pub exit_after_frames: Option<u64>,
    /// Ignore saved settings (tests, a clean start).
    pub fresh_settings: bool,
    /// Process every frame of a file in order, none dropped (the pipeline's replay mode): a
    /// video plays slower than real time when detection is slower than its frame rate.
    pub every_frame: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Level {
    Info,
    Error,
}

struct Message {
    text: String,
    level: Level,
    at: Instant,
}

/// Thumbnails of gallery matches, read from the index through the UI's own read-only handle.
#[derive(Default)]
struct Thumbs {
    index: Option<(GalleryLocation, Box<dyn GalleryStore>)>,
    textures: HashMap<i64, Option<egui::TextureHandle>>,
    /// A gallery that could not be opened, and when: not retried every frame (a catalogue
    /// server that is down would stall the window for its connect timeout each time).
    failed: Option<(GalleryLocation, std::time::Instant)>,
}

impl Thumbs {
    fn get(
        &mut self,
        ctx: &egui::Context,
        gallery: &GalleryLocation,
        id: i64,
    ) -> Option<egui::TextureHandle> {
        if self.index.as_ref().is_none_or(|(d, _)| d != gallery) {
            let recent = self.failed.as_ref().is_some_and(|(g, at)| {
                g == gallery && at.elapsed() < std::time::Duration::from_secs(30)
            });
            if recent {
                return None;
            }
            self.textures.clear();
            self.index = match crate::search::store::open_any(gallery) {
                Ok(i) => Some((gallery.clone(), i)),
                Err(_) => {
                    self.failed = Some((gallery.clone(), std::time::Instant::now()));
                    None
                }
            };
        }
        if let Some(t) = self.textures.get(&id) {
            return t.clone();
        }
        let texture = self
            .index
            .as_ref()
            .and_then(|(_, index)| index.thumbnail(id).ok().flatten())
            .and_then(|jpeg| {
                crate::source::decode_image_bytes(&jpeg, crate::source::DecodeLimits::default())
                    .ok()
            })
            .map(|img| {
                let size = [img.width() as usize, img.height() as usize];
                let color = egui::ColorImage::from_rgb(size, img.as_raw());
                ctx.load_texture(format!("thumb-{id}"), color, egui::TextureOptions::LINEAR)
            });
        self.textures.insert(id, texture.clone());
        texture
    }
}

/// The desktop app: the live pipeline's newest snapshot on screen, with the overlay, panels and HUD.
pub struct ArvisApp {
    pipeline: Pipeline,
    settings: Settings,
    render_state: Option<RenderState>,
    frame_texture: Option<FrameTexture>,
    shown: Option<Arc<Snapshot>>,
    status: PipelineStatus,
    display_rate: RateMeter,
    display_fps: f64,
    /// Capture to first paint of the shown frame.
    screen_latency_ms: f64,
    hovered: Option<usize>,
    selected: Option<usize>,
    /// Where the frame was last drawn (screen points).
    view: Option<egui::Rect>,
    thumbs: Thumbs,
    messages: Vec<Message>,
    browser: Option<browse::Browser>,
    cameras: Option<Vec<(u32, String)>>,
    options: AppOptions,
    frames_with_detections: u64,
    screenshot_pending: bool,
    screenshot_done: Arc<std::sync::atomic::AtomicBool>,
    last_index_job_finished: bool,
    /// Seek position while the slider is being dragged.
    seek_drag: Option<f64>,
    /// When the newest frame reached the screen.
    shown_at: Option<Instant>,
    /// When `run` was called, to report how long the window took to come up.
    launched: Option<Instant>,
    /// GPU name and memory in use, polled where an NVIDIA driver is loaded.
    gpus: crate::runtime::gpu_info::GpuMonitor,
    /// Several sources side by side, when more than one is open.
    grid: Option<grid::GridView>,
    /// What the "Add source…" box holds while it is open.
    add_source: Option<String>,
}

fn save_color_image(image: &egui::ColorImage, path: &std::path::Path) -> Result<(), String> {
    let [w, h] = image.size;
    let rgba: Vec<u8> = image.pixels.iter().flat_map(|c| c.to_array()).collect();
    let img = image::RgbaImage::from_raw(w as u32, h as u32, rgba)
        .ok_or_else(|| "empty screenshot".to_string())?;
    // Temp file beside it and a rename, as every output: never a half-written PNG at `path`.
    let out = crate::sink::AtomicOutput::new("--screenshot", path).map_err(|e| e.to_string())?;
    img.save(out.temp_path()).map_err(|e| e.to_string())?;
    out.commit().map_err(|e| e.to_string())
}

fn live_options(s: &Settings) -> LiveOptions {
    LiveOptions {
        detect: DetectOptions {
            conf: s.conf,
            iou: s.iou,
            max_det: 300,
            classes: s.classes.clone(),
        },
        index: s.gallery(),
        match_enabled: s.matching,
        match_k: s.match_k,
        gallery_images: s.gallery_images_dir.clone(),
    }
}

impl ArvisApp {
    /// Start the pipeline with `loaders` and open what `options` asks for.
    pub fn new(cc: &eframe::CreationContext<'_>, loaders: Loaders, options: AppOptions) -> Self {
        let mut settings = if options.fresh_settings {
            Settings::default()
        } else {
            cc.storage
                .and_then(|s| eframe::get_value::<Settings>(s, settings::KEY))
                .unwrap_or_default()
                .sanitized()
        };
        if let Some(dir) = &options.index {
            settings.index_dir = dir.clone();
        }
        if let Some(dir) = &options.gallery_images {
            settings.gallery_images_dir = dir.clone();
        }
        let render_state = cc.wgpu_render_state.clone();
        if let Some(rs) = &render_state {
            overlay::install(rs);
        }
        let ctx = cc.egui_ctx.clone();
        let pipeline = Pipeline::start(
            loaders,
            live_options(&settings),
            PipelineConfig {
                notify: Arc::new(move || ctx.request_repaint()),
                lockstep: options.every_frame,
                ..PipelineConfig::default()
            },
        );
        pipeline.send(SourceCommand::SetLoop(settings.loop_video));
        let mut app = ArvisApp {
            pipeline,
            settings,
            render_state,
            frame_texture: None,
            shown: None,
            status: PipelineStatus::default(),
            display_rate: RateMeter::default(),
            display_fps: 0.0,
            screen_latency_ms: 0.0,
            hovered: None,
            selected: None,
            view: None,
            thumbs: Thumbs::default(),
            messages: Vec::new(),
            browser: None,
            cameras: None,
            screenshot_pending: false,
            screenshot_done: Arc::default(),
            frames_with_detections: 0,
            last_index_job_finished: true,
            launched: LAUNCHED.get().copied(),
            seek_drag: None,
            shown_at: None,
            gpus: crate::runtime::gpu_info::GpuMonitor::start(Duration::from_secs(2)),
            grid: None,
            add_source: None,
            options,
        };
        let given = app.options.sources.clone();
        match given.as_slice() {
            [] if app.settings.grid_sources.len() >= 2 => {
                app.show_grid(app.settings.grid_sources.clone());
            }
            [] => {
                if let Some(source) = app.settings.last_source.clone() {
                    app.open_source(&source);
                }
            }
            [one] => app.open_source(one),
            many => app.show_grid(many.to_vec()),
        }
        app
    }

    /// Which grid view fills the window, if one was clicked.
    pub fn grid_focused(&self) -> Option<usize> {
        self.grid.as_ref().and_then(|g| g.focused)
    }

    /// Where the grid was last drawn (screen points).
    pub fn grid_rect(&self) -> Option<egui::Rect> {
        self.grid.as_ref().and_then(|g| g.rect)
    }

    /// The grid, when several sources are shown (for tests and the HUD).
    pub fn grid(&self) -> Option<&crate::pipeline::live::GridStatus> {
        self.grid.as_ref().map(|g| &g.status)
    }

    /// Show `sources` side by side (two or more; one is opened in the single view). Each is
    /// checked first: one that cannot be named is an error message and is left out.
    pub fn show_grid(&mut self, sources: Vec<String>) {
        let mut specs = Vec::new();
        let mut kept = Vec::new();
        for s in sources {
            match SourceSpec::parse(&s) {
                Ok(spec) => {
                    kept.push(spec.to_arg());
                    specs.push(spec);
                }
                Err(e) => self.error(e.to_string()),
            }
        }
        if specs.len() < 2 {
            self.close_grid();
            if let Some(spec) = specs.pop() {
                self.open_spec(spec);
            }
            return;
        }
        // The grid has the detector; the single view's source is closed meanwhile.
        self.pipeline.send(SourceCommand::Close);
        self.shown = None;
        // Saved whole (passwords too) so that they reopen; shown masked everywhere.
        self.settings.grid_sources.clone_from(&kept);
        self.pipeline.set_grid(specs);
        self.grid = Some(grid::GridView::new(kept));
    }

    /// Back to the single view (empty until a source is opened).
    pub fn close_grid(&mut self) {
        if self.grid.take().is_some() {
            self.pipeline.set_grid(Vec::new());
        }
        self.settings.grid_sources.clear();
    }

    /// Add a source: to the grid; or, with one source open, a grid of it and this one; or,
    /// with none, as the single view.
    pub fn add_source(&mut self, source: &str) {
        // One that cannot be named changes nothing (the others keep running as they are).
        if let Err(e) = SourceSpec::parse(source.trim()) {
            self.error(e.to_string());
            return;
        }
        let mut list = match &self.grid {
            Some(g) => g.sources.clone(),
            None => self.settings.last_source.clone().into_iter().collect(),
        };
        if self.grid.is_none() && self.status.source == SourceState::Idle {
            list.clear();
        }
        list.push(source.trim().to_string());
        self.show_grid(list);
    }

    /// The pipeline's status as last read (for tests and the HUD).
    pub fn status(&self) -> &PipelineStatus {
        &self.status
    }

    /// The snapshot on screen.
    pub fn shown(&self) -> Option<&Arc<Snapshot>> {
        self.shown.as_ref()
    }

    /// The user's settings as the app holds them now.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Settings as the side panel edits them; changes apply on the next frame.
    pub fn settings_mut(&mut self) -> &mut Settings {
        &mut self.settings
    }

    /// Where the frame was last drawn, in screen points.
    pub fn view_rect(&self) -> Option<egui::Rect> {
        self.view
    }

    /// The detection clicked on, if any.
    pub fn selected(&self) -> Option<usize> {
        self.selected
    }

    /// Add the selected region's crop (of the frame on screen) to the gallery as item `label`;
    /// false (with a message) when nothing is selected or the label is refused.
    pub fn teach_selected(&mut self, label: &str) -> bool {
        let label = match crate::search::items::check_label(label) {
            Ok(l) => l,
            Err(e) => {
                self.error(e.to_string());
                return false;
            }
        };
        let Some((shown, i)) = self.shown.clone().zip(self.selected) else {
            self.error("select a box first (click it)");
            return false;
        };
        let Some(region) = shown.regions.get(i) else {
            return false;
        };
        let crop = crate::embed::crop_region(&shown.frame.image, region.detection.bbox);
        self.pipeline.teach(crop, label);
        true
    }

    /// Forget one gallery image (the file too when arvis saved it from the view).
    pub fn forget_image(&mut self, path: std::path::PathBuf) {
        self.pipeline.forget(path);
    }

    /// Rename a gallery item.
    pub fn rename_item(&mut self, old: String, new: String) {
        match crate::search::items::check_label(&new) {
            Ok(new) => self.pipeline.rename_item(old, new),
            Err(e) => self.error(e.to_string()),
        }
    }

    /// Define an item by words: `prompt` embedded with CLIP's text tower, as item `label` (the
    /// prompt itself when empty).
    pub fn add_text_item(&mut self, prompt: &str, label: &str) {
        let Ok(prompt) = crate::search::items::check_label(prompt) else {
            self.error("type what the item looks like, e.g. \"a red fire extinguisher\"");
            return;
        };
        let label = if label.trim().is_empty() {
            prompt.clone()
        } else {
            match crate::search::items::check_label(label) {
                Ok(l) => l,
                Err(e) => {
                    self.error(e.to_string());
                    return;
                }
            }
        };
        self.pipeline.add_text_item(prompt, label);
    }

    /// Remove a gallery item with its images.
    pub fn remove_item(&mut self, label: String) {
        self.pipeline.remove_item(label);
    }

    /// Messages currently shown to the user (newest last).
    pub fn messages(&self) -> Vec<String> {
        self.messages.iter().map(|m| m.text.clone()).collect()
    }

    fn info(&mut self, text: impl Into<String>) {
        self.push_message(text.into(), Level::Info);
    }

    fn error(&mut self, text: impl Into<String>) {
        self.push_message(text.into(), Level::Error);
    }

    fn push_message(&mut self, text: String, level: Level) {
        tracing::info!("{text}");
        self.messages.push(Message {
            text,
            level,
            at: Instant::now(),
        });
        if self.messages.len() > 5 {
            self.messages.remove(0);
        }
    }

    /// Open a camera, video or image named by the user; a file that is neither is an error
    /// message, and what is on screen stays.
    pub fn open_source(&mut self, source: &str) {
        match SourceSpec::parse(source) {
            Ok(spec) => self.open_spec(spec),
            Err(e) => self.error(e.to_string()),
        }
    }

    fn open_spec(&mut self, spec: SourceSpec) {
        self.close_grid();
        // Saved whole (a stream's password too) so that it reopens; shown masked everywhere.
        self.settings.last_source = Some(spec.to_arg());
        self.selected = None;
        self.hovered = None;
        self.pipeline.open(spec);
    }

    /// A dropped or chosen path: image → lookup, video → playback, folder → add to the index.
    pub fn open_path(&mut self, path: &std::path::Path) {
        if path.is_dir() {
            self.info(format!(
                "adding the images in {} to the index {}",
                path.display(),
                self.settings.gallery_shown()
            ));
            self.last_index_job_finished = false;
            self.pipeline.index_folder(path.to_path_buf());
            return;
        }
        match SourceSpec::classify(path) {
            Ok(spec) => self.open_spec(spec),
            Err(e) => self.error(e.to_string()),
        }
    }

    /// Show the file browser where the user last was (else the working directory).
    fn open_browser(&mut self) {
        let start = self
            .settings
            .browse_dir
            .clone()
            .filter(|d| d.is_dir())
            .or_else(|| std::env::current_dir().ok())
            .unwrap_or_default();
        self.browser = Some(browse::Browser::new(start));
    }

    fn apply_settings(&mut self) {
        self.pipeline.set_options(live_options(&self.settings));
    }

    /// Pick up the newest snapshot and status; upload the frame if it is new.
    fn poll_pipeline(&mut self) {
        let previous_job = self.status.indexing.clone();
        let previous_change = self.status.gallery_change.clone();
        self.status = self.pipeline.status();
        if let Some((_, outcome)) = self.status.gallery_change.clone()
            && previous_change != self.status.gallery_change
        {
            match outcome {
                Ok(text) => self.info(text),
                Err(text) => self.error(text),
            }
        }
        if let Some(job) = &self.status.indexing {
            if job.finished && !self.last_index_job_finished && previous_job.as_ref() != Some(job) {
                self.last_index_job_finished = true;
                let text = match &job.error {
                    Some(e) => format!("indexing {} failed: {e}", job.dir.display()),
                    None => format!(
                        "indexed {} image(s) from {} ({} failed)",
                        job.added,
                        job.dir.display(),
                        job.failed
                    ),
                };
                if job.error.is_some() {
                    self.error(text);
                } else {
                    self.info(text);
                }
            }
        }
        if let Some(grid) = self.grid.as_mut() {
            let new = grid.poll(self.pipeline.grid(), self.render_state.as_ref());
            self.frames_with_detections += new;
            if new > 0 {
                self.shown_at = Some(Instant::now());
            }
            return;
        }
        let Some(latest) = self.pipeline.latest() else {
            return;
        };
        if self.shown.as_ref().is_some_and(|s| s.seq == latest.seq) {
            return;
        }
        if let Some(rs) = &self.render_state {
            self.frame_texture = Some(FrameTexture::upload(
                rs,
                self.frame_texture.take(),
                &latest.frame.image,
            ));
        }
        let now = Instant::now();
        self.display_fps = self.display_rate.tick(now);
        self.shown_at = Some(now);
        self.screen_latency_ms = now.duration_since(latest.captured_at).as_secs_f64() * 1e3;
        if self
            .shown
            .as_ref()
            .is_none_or(|s| s.regions.len() != latest.regions.len())
        {
            self.selected = None;
            self.hovered = None;
        }
        if latest.detected && !latest.regions.is_empty() {
            self.frames_with_detections += 1;
        }
        self.shown = Some(latest);
    }

    /// `--screenshot` / `--exit-after-frames`: done after that many frames with detections, or
    /// once a source that has ended (a still image, a video without loop) has shown a detected
    /// frame — it would never reach the count.
    fn scripted_exit(&mut self, ctx: &egui::Context) {
        if self.options.screenshot.is_none() && self.options.exit_after_frames.is_none() {
            return;
        }
        // A scripted run that can never reach its frames ends now, with the reason and a
        // non-zero status, instead of waiting to be killed.
        let fatal = match (&self.status.detector, &self.status.source) {
            (Stage::Failed(m), _) => Some(format!("the detector could not be loaded: {m}")),
            (
                _,
                SourceState::Failed {
                    error,
                    retry_in_ms: None,
                },
            ) => Some(format!("the source failed: {error}")),
            _ => None,
        };
        let failed = fatal.is_some();
        if let Some(reason) = fatal {
            let _ = SCRIPTED_FAILURE.set(reason);
        }
        let target = self.options.exit_after_frames.unwrap_or(1);
        let source_done = match &self.grid {
            Some(grid) => grid.all_done(),
            None => {
                self.status.source == SourceState::Ended
                    && self.shown.as_ref().is_some_and(|s| s.detected)
            }
        };
        // A failed run still saves its screenshot (it shows the error) before it closes.
        if self.frames_with_detections < target && !source_done && !failed {
            // The source may end without another frame to wake the UI.
            ctx.request_repaint_after(Duration::from_millis(100));
            return;
        }
        match self.options.screenshot.take() {
            Some(path) => {
                let done = self.screenshot_done.clone();
                let repaint = ctx.clone();
                ctx.send_viewport_cmd(egui::ViewportCommand::Screenshot(
                    egui::ScreenshotCallback::new(move |image| {
                        match save_color_image(&image, &path) {
                            Ok(()) => eprintln!("screenshot saved to {}", path.display()),
                            Err(e) => {
                                eprintln!("error: saving the screenshot to {}: {e}", path.display())
                            }
                        }
                        done.store(true, std::sync::atomic::Ordering::SeqCst);
                        repaint.request_repaint();
                    }),
                ));
                self.screenshot_pending = true;
            }
            None if !self.screenshot_pending
                && (self.options.exit_after_frames.is_some() || failed) =>
            {
                ctx.send_viewport_cmd(egui::ViewportCommand::Close);
            }
            None => {}
        }
    }

    fn handle_screenshot_done(&mut self, ctx: &egui::Context) {
        if self.screenshot_pending
            && self
                .screenshot_done
                .load(std::sync::atomic::Ordering::SeqCst)
        {
            self.screenshot_pending = false;
            if self.options.exit_after_frames.is_some() || SCRIPTED_FAILURE.get().is_some() {
                ctx.send_viewport_cmd(egui::ViewportCommand::Close);
            }
        }
    }

    fn handle_dropped_files(&mut self, ctx: &egui::Context) {
        let dropped = ctx.input(|i| i.raw.dropped_files.clone());
        for file in dropped {
            let path = file.path().to_path_buf();
            if path.as_os_str().is_empty() {
                self.error("dropped item without a path: only files on disk can be opened");
            } else {
                self.open_path(&path);
            }
        }
    }

    fn handle_keys(&mut self, ctx: &egui::Context) {
        if ctx.egui_wants_keyboard_input() {
            return;
        }
        if ctx.input(|i| i.key_pressed(egui::Key::Escape))
            && let Some(grid) = self.grid.as_mut()
        {
            grid.focused = None;
        }
        let (space, s, right, h, l) = ctx.input(|i| {
            (
                i.key_pressed(egui::Key::Space),
                i.key_pressed(egui::Key::S),
                i.key_pressed(egui::Key::ArrowRight),
                i.key_pressed(egui::Key::H),
                i.key_pressed(egui::Key::L),
            )
        });
        if space {
            self.toggle_pause();
        }
        if right {
            self.step();
        }
        if s {
            self.save_snapshot();
        }
        if h {
            self.settings.show_hud = !self.settings.show_hud;
        }
        if l {
            self.settings.show_labels = !self.settings.show_labels;
        }
    }

    fn toggle_pause(&mut self) {
        let paused = self.status.source == SourceState::Paused;
        self.pipeline.send(SourceCommand::Pause(!paused));
    }

    fn step(&mut self) {
        self.pipeline.send(SourceCommand::Pause(true));
        self.pipeline.send(SourceCommand::Step);
    }

    fn save_snapshot(&mut self) {
        let Some(shown) = self.shown.clone() else {
            self.error("nothing to save yet: open a source first");
            return;
        };
        match snapshot::save(
            &shown,
            &self.status,
            &self.settings,
            &self.settings.snapshot_dir,
        ) {
            Ok(png) => self.info(format!("snapshot saved: {}", png.display())),
            Err(e) => self.error(format!("saving the snapshot failed: {e:#}")),
        }
    }
}

impl eframe::App for ArvisApp {
    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        let ctx = ui.ctx().clone();
        if let Some(t0) = self.launched.take() {
            tracing::info!(
                "window up {:.0} ms after launch",
                t0.elapsed().as_secs_f64() * 1e3
            );
        }
        self.poll_pipeline();
        self.scripted_exit(&ctx);
        self.handle_screenshot_done(&ctx);
        self.handle_dropped_files(&ctx);
        self.handle_keys(&ctx);
        self.messages
            .retain(|m| m.level == Level::Error || m.at.elapsed() < Duration::from_secs(8));

        let before = self.settings.clone();
        panels::top_bar_ui(self, ui);
        panels::status_bar_ui(self, ui);
        panels::side_panel_ui(self, ui);
        egui::CentralPanel::default()
            .frame(egui::Frame::NONE.fill(egui::Color32::from_gray(20)))
            .show(ui, |ui| {
                if self.grid.is_some() {
                    grid::grid_ui(self, ui);
                } else {
                    view::central_ui(self, ui);
                }
            });
        panels::add_source_ui(self, &ctx);
        if let Some(mut browser) = self.browser.take() {
            match browser.show(&ctx) {
                browse::Outcome::Open(path) => {
                    self.settings.browse_dir = Some(browser.dir.clone());
                    self.open_path(&path);
                }
                browse::Outcome::Cancel => {
                    self.settings.browse_dir = Some(browser.dir.clone());
                }
                browse::Outcome::Keep => self.browser = Some(browser),
            }
        }
        if self.settings.loop_video != before.loop_video {
            self.pipeline
                .send(SourceCommand::SetLoop(self.settings.loop_video));
        }
        if live_options(&self.settings) != live_options(&before) {
            self.apply_settings();
        }
        // Messages fade on their own; keep repainting while any is shown.
        if !self.messages.is_empty() {
            ctx.request_repaint_after(Duration::from_millis(500));
        }
    }

    fn save(&mut self, storage: &mut dyn eframe::Storage) {
        eframe::set_value(storage, settings::KEY, &self.settings);
    }
}

/// Loaders for the detector (a manifest id or path; default from the manifest) and the CLIP image
/// encoder, on the requested device with the usual CPU fallback for `auto`.
pub fn loaders(
    detector: Option<String>,
    clip: crate::load::ClipModels,
    device: crate::runtime::DeviceRequest,
) -> Loaders {
    let text_models = clip.clone();
    Loaders {
        detector: Box::new(move |progress| {
            progress("fetching the model and ONNX Runtime if needed".into());
            let (mut detector, on) =
                crate::load::load_threaded_detector(detector.as_deref(), device, "the app")?;
            // Several sources in the grid are batched on a GPU (as `arvis watch --schedule
            // auto`); on the CPU a batch costs what its frames do, so no twin is derived.
            if on != crate::runtime::Device::Cpu {
                progress("deriving the detector's batch twin".into());
                let runtime = crate::runtime::Runtime::get(on.flavor())?;
                detector.enable_batching(runtime, on);
            }
            let batching = detector.batching().clone();
            // A path given by the user reads best as its file name.
            let name = std::path::Path::new(&detector.model_name)
                .file_name()
                .map_or_else(
                    || detector.model_name.clone(),
                    |n| n.to_string_lossy().into_owned(),
                );
            let mut description = match detector.io_mode() {
                crate::detect::IoMode::Plain => format!("{name} · {}", on.provider_name()),
                io => format!("{name} · {} · {io} I/O", on.provider_name()),
            };
            // A CUDA session with nodes on the CPU is not a GPU run: the HUD says so.
            if let crate::runtime::Placement::Mixed(_) = detector.placement {
                description.push_str(" · some nodes on the CPU");
            }
            if on != crate::runtime::Device::Cpu && !batching.is_batched() {
                // The grid runs sources one at a time then: the HUD says why.
                description.push_str(&format!(" · several sources: {batching}"));
            }
            Ok(LoadedDetector {
                detector: Box::new(detector),
                description,
            })
        }),
        encoder: Box::new(move |progress| {
            progress("loading the CLIP image encoder".into());
            let loaded = clip.load_image_encoder(device)?;
            Ok(LoadedEncoder {
                description: format!(
                    "{} · {}",
                    loaded.meta.model_id,
                    loaded.device.provider_name()
                ),
                encoder: loaded.encoder,
                meta: loaded.meta,
            })
        }),
        text: Box::new(move |index, dir| {
            let text = text_models.load_text_encoder(device)?;
            // The window cannot ask to vouch for an unchecked pair: it must be checkable.
            crate::load::check_text_pairing(index, text.family.as_deref(), false, dir)?;
            Ok(text)
        }),
    }
}

static LAUNCHED: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
/// Why a scripted run (`--screenshot`, `--exit-after-frames`) gave up, reported by [`run`].
static SCRIPTED_FAILURE: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Open the window and run until it is closed.
pub fn run(loaders: Loaders, options: AppOptions) -> anyhow::Result<()> {
    LAUNCHED.get_or_init(Instant::now);
    let native = eframe::NativeOptions {
        renderer: eframe::Renderer::Wgpu,
        viewport: egui::ViewportBuilder::default()
            .with_title("arvis")
            .with_inner_size([1280.0, 800.0])
            .with_min_inner_size([640.0, 400.0])
            .with_drag_and_drop(true),
        persist_window: true,
        ..Default::default()
    };
    eframe::run_native(
        "arvis",
        native,
        Box::new(move |cc| Ok(Box::new(ArvisApp::new(cc, loaders, options)))),
    )
    .map_err(|e| anyhow::anyhow!("the window could not be opened: {e}"))?;
    match SCRIPTED_FAILURE.get() {
        Some(reason) => anyhow::bail!("scripted run stopped: {reason}"),
        None => Ok(()),
    }
}
