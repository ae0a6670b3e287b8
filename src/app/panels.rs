//! Top bar (sources, playback, toggles), side panel (settings, matches) and status bar.

use eframe::egui::{self, Color32, RichText};

use super::{ArvisApp, Level};
use crate::pipeline::live::{SourceCommand, SourceState, Stage};
use crate::render::short_name;
use crate::source::{SourceKind, SourceSpec};

fn fmt_time(ms: f64) -> String {
    let s = (ms / 1e3).max(0.0);
    format!("{}:{:04.1}", (s / 60.0) as u64, s % 60.0)
}

pub(super) fn top_bar_ui(app: &mut ArvisApp, ui: &mut egui::Ui) {
    egui::Panel::top("arvis-top").show(ui, |ui| {
        ui.horizontal_wrapped(|ui| {
            if ui
                .button("Open…")
                .on_hover_text("an image, a video, or a folder to add to the index")
                .clicked()
            {
                app.open_browser();
            }
            camera_menu_ui(app, ui);
            if ui
                .button("Add source…")
                .on_hover_text("another camera, stream URL or file, side by side with the others")
                .clicked()
            {
                app.add_source = Some(String::new());
            }
            if app.grid.is_some() && ui.button("Single view").clicked() {
                let first = app.grid.as_ref().and_then(|g| g.sources.first().cloned());
                app.close_grid();
                if let Some(first) = first {
                    app.open_source(&first);
                }
            }
            ui.separator();

            let kind = app.status.source_info.as_ref().map(|i| i.kind);
            let playable = kind == Some(SourceKind::Video);
            let paused = app.status.source == SourceState::Paused;
            ui.add_enabled_ui(kind.is_some() && kind != Some(SourceKind::Image), |ui| {
                if ui
                    .button(if paused { "Play" } else { "Pause" })
                    .on_hover_text("Space")
                    .clicked()
                {
                    app.toggle_pause();
                }
            });
            ui.add_enabled_ui(playable, |ui| {
                if ui.button("Step").on_hover_text("→").clicked() {
                    app.step();
                }
                ui.checkbox(&mut app.settings.loop_video, "Loop");
            });
            let duration = app.status.source_info.as_ref().and_then(|i| i.duration_ms);
            if let (true, Some(duration)) = (playable, duration) {
                // While dragging, the slider shows where it will seek, not the playing position.
                let mut pos = app
                    .seek_drag
                    .unwrap_or_else(|| app.status.position_ms.unwrap_or(0.0));
                let label = format!("{} / {}", fmt_time(pos), fmt_time(duration));
                let slider = ui.add(
                    egui::Slider::new(&mut pos, 0.0..=duration)
                        .show_value(false)
                        .text(label),
                );
                if slider.dragged() {
                    app.seek_drag = Some(pos);
                }
                if slider.drag_stopped() || (slider.changed() && !slider.dragged()) {
                    app.seek_drag = None;
                    app.pipeline.send(SourceCommand::Seek(pos));
                }
            }
            ui.separator();
            if ui
                .button("Snapshot")
                .on_hover_text("S: save the view as PNG + detections as JSON")
                .clicked()
            {
                app.save_snapshot();
            }
            ui.separator();
            ui.checkbox(&mut app.settings.show_labels, "Labels");
            ui.checkbox(&mut app.settings.show_scores, "Scores");
            ui.checkbox(&mut app.settings.show_matches, "Matches");
            ui.checkbox(&mut app.settings.show_hud, "HUD");
        });
    });
}

/// The "Add source…" box: a camera, stream URL or file to show beside what is open.
pub(super) fn add_source_ui(app: &mut ArvisApp, ctx: &egui::Context) {
    let Some(mut text) = app.add_source.take() else {
        return;
    };
    let mut open = true;
    let mut add = false;
    egui::Window::new("Add source")
        .open(&mut open)
        .collapsible(false)
        .resizable(false)
        .show(ctx, |ui| {
            ui.label("camera:N, a stream URL (rtsp://, http://, udp://, srt://) or a file path");
            ui.horizontal(|ui| {
                let label = ui.label("Source:");
                let edit = ui
                    .add(
                        egui::TextEdit::singleline(&mut text)
                            .hint_text("rtsp://user:pass@camera/stream")
                            .desired_width(320.0),
                    )
                    .labelled_by(label.id);
                let entered = edit.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter));
                add = (ui.button("Add").clicked() || entered) && !text.trim().is_empty();
            });
        });
    if add {
        app.add_source(&text);
    } else if open {
        app.add_source = Some(text);
    }
}

fn camera_menu_ui(app: &mut ArvisApp, ui: &mut egui::Ui) {
    ui.menu_button("Camera", |ui| {
        if app.cameras.is_none() {
            app.cameras = Some(list_cameras());
        }
        let cameras = app.cameras.clone().unwrap_or_default();
        if cameras.is_empty() {
            ui.label("No camera found. Open a video or an image instead.");
        }
        for (index, name) in cameras {
            if ui.button(format!("{index}: {name}")).clicked() {
                app.open_spec(SourceSpec::Camera(index));
                ui.close();
            }
        }
        ui.separator();
        if ui.button("Look again").clicked() {
            app.cameras = Some(list_cameras());
        }
    });
}

fn list_cameras() -> Vec<(u32, String)> {
    #[cfg(feature = "camera")]
    {
        crate::source::camera::list()
            .into_iter()
            .map(|c| (c.index, c.name))
            .collect()
    }
    #[cfg(not(feature = "camera"))]
    {
        Vec::new()
    }
}

pub(super) fn status_bar_ui(app: &mut ArvisApp, ui: &mut egui::Ui) {
    egui::Panel::bottom("arvis-status").show(ui, |ui| {
        ui.horizontal_wrapped(|ui| {
            let s = &app.status;
            // The file's name once open (its full path is in the tooltip).
            let name = s
                .source_info
                .as_ref()
                .map_or(s.source_label.as_str(), |i| i.name.as_str());
            let state = match &s.source {
                _ if app.grid.is_some() => {
                    let cells = app.grid.as_ref().map_or(&[][..], |g| &g.status.cells[..]);
                    let running = cells
                        .iter()
                        .filter(|c| c.status.state == SourceState::Running)
                        .count();
                    format!(
                        "{} sources side by side, {running} running (click one to focus it)",
                        cells.len()
                    )
                }
                SourceState::Idle => "no source".to_string(),
                SourceState::Opening => format!("opening {}", s.source_label),
                SourceState::Running => format!("playing {name}"),
                SourceState::Paused => format!("paused {name}"),
                SourceState::Ended => format!("ended {name}"),
                SourceState::Failed { retry_in_ms, .. } => match retry_in_ms {
                    Some(_) => format!("error: {} (reconnecting)", s.source_label),
                    None => format!("error: {}", s.source_label),
                },
            };
            ui.label(state).on_hover_text(&s.source_label);
            if let Some(info) = &s.source_info {
                ui.label(
                    RichText::new(format!("{}×{} {}", info.width, info.height, info.format)).weak(),
                );
            }
            if let Some(job) = &s.indexing {
                if job.waiting {
                    ui.label("indexing: waiting for another arvis writing to this gallery…");
                } else if !job.finished {
                    let frac = if job.total > 0 {
                        job.done as f32 / job.total as f32
                    } else {
                        0.0
                    };
                    ui.add(
                        egui::ProgressBar::new(frac)
                            .desired_width(160.0)
                            .text(format!("indexing {}/{}", job.done, job.total)),
                    );
                }
            }
            if let Some(e) = &s.last_error {
                ui.label(RichText::new(e).color(Color32::from_rgb(255, 150, 120)));
            }
        });
        let mut dismiss = None;
        for (i, m) in app.messages.iter().enumerate().rev().take(3) {
            ui.horizontal(|ui| {
                let color = match m.level {
                    Level::Error => Color32::from_rgb(255, 140, 140),
                    Level::Info => Color32::from_rgb(170, 220, 170),
                };
                ui.label(RichText::new(&m.text).color(color));
                if m.level == Level::Error && ui.small_button("x").clicked() {
                    dismiss = Some(i);
                }
            });
        }
        if let Some(i) = dismiss {
            app.messages.remove(i);
        }
    });
}

pub(super) fn side_panel_ui(app: &mut ArvisApp, ui: &mut egui::Ui) {
    egui::Panel::right("arvis-side")
        .resizable(true)
        .default_size(320.0)
        .show(ui, |ui| {
            egui::ScrollArea::vertical().show(ui, |ui| {
                ui.heading("Detection");
                ui.add(egui::Slider::new(&mut app.settings.conf, 0.05..=0.95).text("confidence"));
                ui.add(egui::Slider::new(&mut app.settings.iou, 0.1..=0.95).text("IoU (NMS)"));
                class_filter_ui(app, ui);
                ui.separator();
                search_settings_ui(app, ui);
                ui.separator();
                matches_panel_ui(app, ui);
                ui.separator();
                gallery_panel_ui(app, ui);
            });
        });
}

fn class_filter_ui(app: &mut ArvisApp, ui: &mut egui::Ui) {
    let names = app.status.class_names.clone();
    let shown = (0..names.len())
        .filter(|&c| app.settings.class_enabled(c))
        .count();
    egui::CollapsingHeader::new(format!("Classes ({shown} of {} shown)", names.len()))
        .id_salt("classes")
        .show(ui, |ui| {
            ui.horizontal(|ui| {
                if ui.button("All").clicked() {
                    app.settings.classes = None;
                }
                if ui.button("None").clicked() {
                    app.settings.classes = Some(Vec::new());
                }
            });
            egui::ScrollArea::vertical()
                .id_salt("class-list")
                .max_height(220.0)
                .show(ui, |ui| {
                    for (id, name) in names.iter().enumerate() {
                        let mut on = app.settings.class_enabled(id);
                        if ui.checkbox(&mut on, name).changed() {
                            let mut list = app
                                .settings
                                .classes
                                .clone()
                                .unwrap_or_else(|| (0..names.len()).collect());
                            list.retain(|&c| c != id);
                            if on {
                                list.push(id);
                                list.sort_unstable();
                            }
                            app.settings.classes = (list.len() != names.len()).then_some(list);
                        }
                    }
                });
        });
}

fn search_settings_ui(app: &mut ArvisApp, ui: &mut egui::Ui) {
    ui.heading("Visual search");
    ui.checkbox(
        &mut app.settings.matching,
        "Match regions against the index",
    );
    ui.add_enabled_ui(app.settings.matching, |ui| {
        ui.add(
            egui::Slider::new(&mut app.settings.match_threshold, -1.0..=1.0)
                .text("match threshold"),
        );
        ui.add(egui::Slider::new(&mut app.settings.match_k, 1..=10).text("matches per region"));
        decision_ui(app, ui);
        ui.horizontal(|ui| {
            let label = ui.label("Index:");
            let id = egui::Id::unique("index-dir-edit");
            let mut text = ui.data_mut(|d| {
                d.get_temp::<String>(id)
                    .unwrap_or_else(|| app.settings.gallery_shown())
            });
            let edit = ui
                .add(egui::TextEdit::singleline(&mut text).desired_width(170.0))
                .labelled_by(label.id);
            let enter = edit.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter));
            if ui.button("Use").clicked() || enter {
                // The field shows a catalogue's password masked: unchanged text keeps it.
                if text.trim() != app.settings.gallery_shown() {
                    app.settings.index_dir = std::path::PathBuf::from(text.trim());
                }
                ui.data_mut(|d| d.remove::<String>(id));
            } else {
                ui.data_mut(|d| d.insert_temp(id, text));
            }
        });
        if ui
            .button("Add folder to index…")
            .on_hover_text("or drop a folder on the window")
            .clicked()
        {
            app.open_browser();
        }
        let s = &app.status;
        // Failures are shown whole here (the HUD has one short line): the fix is in the message.
        for (what, stage) in [
            ("detector", &s.detector),
            ("CLIP", &s.embedder),
            ("index", &s.index),
        ] {
            let (text, color) = match stage {
                Stage::Off => (format!("{what}: not loaded yet"), Color32::GRAY),
                Stage::Loading(m) => (format!("{what}: {m}…"), Color32::LIGHT_YELLOW),
                Stage::Ready(m) => (format!("{what}: {m}"), Color32::from_rgb(170, 220, 170)),
                Stage::Absent(m) => (format!("{what}: {m}"), Color32::from_rgb(160, 190, 230)),
                Stage::Failed(m) => (format!("{what}: {m}"), Color32::from_rgb(255, 150, 130)),
            };
            ui.label(RichText::new(text).color(color).small());
        }
    });
}

fn matches_panel_ui(app: &mut ArvisApp, ui: &mut egui::Ui) {
    ui.heading("Matches");
    let Some(shown) = app.shown.clone() else {
        ui.label("Open a source to see detections.");
        return;
    };
    let Some(i) = app.selected.or(app.hovered) else {
        let n = shown
            .regions
            .iter()
            .filter(|r| app.settings.class_enabled(r.detection.class_id))
            .count();
        ui.label(format!(
            "{n} detection(s). Hover or click a box to see its gallery matches."
        ));
        return;
    };
    let Some(region) = shown.regions.get(i) else {
        return;
    };
    let d = &region.detection;
    let name = app
        .status
        .class_names
        .get(d.class_id)
        .cloned()
        .unwrap_or_else(|| "?".into());
    ui.label(RichText::new(format!("{name} {:.2}", d.score)).strong());
    if !shown.matched {
        ui.label(if app.settings.matching {
            "No matches for this frame (the index is not ready, or matching is still running)."
        } else {
            "Matching is off."
        });
        if app.selected == Some(i) {
            teach_ui(app, ui);
        }
        return;
    }
    let decision = app.settings.decision(app.status.gallery_decision);
    match region.known_item(&decision) {
        Some(k) => {
            ui.label(
                RichText::new(format!(
                    "is {} ({:.3}, leads by {:.3})",
                    k.label, k.score, k.margin
                ))
                .color(Color32::from_rgb(170, 220, 170)),
            );
        }
        None => {
            let closest = region
                .items
                .first()
                .map(|b| {
                    format!(
                        " (closest: {} {:.3}, leads by {:.3})",
                        b.label, b.score, b.margin
                    )
                })
                .unwrap_or_default();
            ui.label(format!("unknown{closest}"));
        }
    }
    if let Some(t) = region.text_item(&decision) {
        ui.label(format!("looks like \"{}\" ({:.3})", t.label, t.score));
    }
    let dir = app.settings.gallery().ok();
    if !region.items.is_empty() {
        ui.label(RichText::new("Items").small().strong());
    }
    for item in &region.items {
        ui.horizontal(|ui| {
            thumbnail_ui(app, ui, &dir, item.best.id);
            ui.vertical(|ui| {
                ui.label(RichText::new(&item.label).strong());
                ui.label(format!("{:.3}  (margin {:+.3})", item.score, item.margin));
            });
        });
    }
    let visible: Vec<_> = region
        .hits
        .iter()
        .filter(|h| h.score >= app.settings.match_threshold)
        .collect();
    ui.label(RichText::new("Images").small().strong());
    if visible.is_empty() {
        ui.label(format!(
            "No gallery image above the threshold ({:.2}).",
            app.settings.match_threshold
        ));
    }
    let mut forget = None;
    for hit in visible {
        ui.horizontal(|ui| {
            thumbnail_ui(app, ui, &dir, hit.id);
            ui.vertical(|ui| {
                ui.label(RichText::new(format!("{:.3}  {}", hit.score, hit.label)).strong());
                ui.label(short_name(&hit.path)).on_hover_text(&hit.path);
                if ui
                    .small_button("Forget this image")
                    .on_hover_text(
                        "remove it from the gallery (a crop arvis saved is deleted too; your own photos are not)",
                    )
                    .clicked()
                {
                    forget = Some(std::path::PathBuf::from(&hit.path));
                }
            });
        });
    }
    if let Some(path) = forget {
        app.forget_image(path);
    }
    if app.selected == Some(i) {
        teach_ui(app, ui);
    }
}

fn thumbnail_ui(
    app: &mut ArvisApp,
    ui: &mut egui::Ui,
    gallery: &Option<crate::search::GalleryLocation>,
    id: i64,
) {
    let thumb = gallery
        .as_ref()
        .and_then(|g| app.thumbs.get(ui.ctx(), g, id));
    match thumb {
        Some(t) => {
            ui.add(egui::Image::new(&t).fit_to_exact_size(egui::vec2(64.0, 64.0)));
        }
        None => {
            ui.allocate_space(egui::vec2(64.0, 64.0));
        }
    }
}

/// "Add to gallery as…": the selected box's crop becomes an image of an existing or new item.
fn teach_ui(app: &mut ArvisApp, ui: &mut egui::Ui) {
    ui.label(RichText::new("Add to gallery as…").small().strong());
    let id = egui::Id::unique("teach-label");
    let mut text = ui.data_mut(|d| d.get_temp::<String>(id).unwrap_or_default());
    let mut add = false;
    ui.horizontal(|ui| {
        let label = ui.label("Add as:");
        let edit = ui
            .add(
                egui::TextEdit::singleline(&mut text)
                    .hint_text("item label")
                    .desired_width(130.0),
            )
            .labelled_by(label.id);
        add |= edit.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter));
        add |= ui.button("Add to gallery").clicked();
    });
    let labels: Vec<String> = app.status.items.iter().map(|i| i.label.clone()).collect();
    if !labels.is_empty() {
        egui::ComboBox::from_id_salt("teach-existing")
            .selected_text("or an existing item…")
            .show_ui(ui, |ui| {
                for l in labels {
                    if ui.selectable_label(false, &l).clicked() {
                        text = l;
                    }
                }
            });
    }
    if add && app.teach_selected(&text) {
        text.clear();
    }
    ui.data_mut(|d| d.insert_temp(id, text));
}

/// When a region is named as an item: threshold, margin and the text items' threshold.
fn decision_ui(app: &mut ArvisApp, ui: &mut egui::Ui) {
    let mut d = app.settings.decision(app.status.gallery_decision);
    let before = d;
    ui.add(
        egui::Slider::new(&mut d.threshold, -1.0..=1.0)
            .text("item threshold")
            .fixed_decimals(2),
    )
    .on_hover_text("a region is named as its best item only when the item scores at least this");
    ui.add(
        egui::Slider::new(&mut d.margin, 0.0..=0.3)
            .text("item margin")
            .fixed_decimals(3),
    )
    .on_hover_text("… and it beats the best other item by at least this (else: unknown)");
    ui.add(
        egui::Slider::new(&mut d.text_threshold, -1.0..=1.0)
            .text("text threshold")
            .fixed_decimals(2),
    )
    .on_hover_text("text-defined items are shown above this (image-to-text scores run lower)");
    if d != before {
        app.settings.decision = Some(d);
    }
    let source = match (app.settings.decision, app.status.gallery_decision) {
        (Some(_), _) => "set here",
        (None, Some(_)) => "calibrated for this gallery",
        (None, None) => "built-in (`arvis index calibrate --save` measures a gallery's)",
    };
    ui.horizontal(|ui| {
        ui.label(RichText::new(format!("decision: {source}")).small());
        if app.settings.decision.is_some() && ui.small_button("reset").clicked() {
            app.settings.decision = None;
        }
    });
}

/// Text labels: items defined by words (CLIP's text tower), matched with their own threshold.
fn text_labels_ui(app: &mut ArvisApp, ui: &mut egui::Ui) {
    ui.label(RichText::new("Text labels").strong());
    let (pid, lid) = (
        egui::Id::unique("text-prompt"),
        egui::Id::unique("text-label"),
    );
    let mut prompt = ui.data_mut(|d| d.get_temp::<String>(pid).unwrap_or_default());
    let mut label = ui.data_mut(|d| d.get_temp::<String>(lid).unwrap_or_default());
    ui.horizontal(|ui| {
        let l = ui.label("Prompt:");
        ui.add(
            egui::TextEdit::singleline(&mut prompt)
                .hint_text("a red fire extinguisher")
                .desired_width(170.0),
        )
        .labelled_by(l.id);
    });
    let mut add = false;
    ui.horizontal(|ui| {
        let l = ui.label("Label:");
        let edit = ui
            .add(
                egui::TextEdit::singleline(&mut label)
                    .hint_text("(the prompt)")
                    .desired_width(110.0),
            )
            .labelled_by(l.id);
        add |= edit.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter));
        add |= ui.button("Add text item").clicked();
    });
    if add {
        app.add_text_item(&prompt, &label);
        prompt.clear();
        label.clear();
    }
    ui.data_mut(|d| {
        d.insert_temp(pid, prompt);
        d.insert_temp(lid, label);
    });
}

/// The gallery's items: label and image count, with rename and delete.
fn gallery_panel_ui(app: &mut ArvisApp, ui: &mut egui::Ui) {
    text_labels_ui(app, ui);
    let items = app.status.items.clone();
    egui::CollapsingHeader::new(format!("Gallery items ({})", items.len()))
        .id_salt("gallery-items")
        .show(ui, |ui| {
            if items.is_empty() {
                ui.label("No items yet: drop a folder, or select a box and add it.");
            }
            let editing_id = egui::Id::unique("gallery-renaming");
            let mut editing: Option<(String, String)> = ui.data_mut(|d| d.get_temp(editing_id));
            let mut action = None;
            for item in &items {
                ui.horizontal(
                    |ui| match editing.as_mut().filter(|(old, _)| *old == item.label) {
                        Some((_, new)) => {
                            let label = ui.label("New name:");
                            let edit = ui
                                .add(egui::TextEdit::singleline(new).desired_width(100.0))
                                .labelled_by(label.id);
                            let enter =
                                edit.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter));
                            if ui.small_button("OK").clicked() || enter {
                                action = Some((item.label.clone(), Some(new.clone())));
                            }
                        }
                        None => {
                            let prompts = match item.prompts {
                                0 => String::new(),
                                n => format!(", {n} prompt(s)"),
                            };
                            ui.label(format!(
                                "{}  ({} image(s){prompts})",
                                item.label, item.images
                            ));
                            if ui.small_button("Rename").clicked() {
                                editing = Some((item.label.clone(), item.label.clone()));
                            }
                            if ui.small_button("Delete").clicked() {
                                action = Some((item.label.clone(), None));
                            }
                        }
                    },
                );
            }
            match action {
                Some((old, Some(new))) => {
                    editing = None;
                    if new.trim() != old {
                        app.rename_item(old, new);
                    }
                }
                Some((label, None)) => app.remove_item(label),
                None => {}
            }
            ui.data_mut(|d| match editing {
                Some(e) => {
                    d.insert_temp(editing_id, e);
                }
                None => d.remove::<(String, String)>(editing_id),
            });
        });
}
