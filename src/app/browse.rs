//! A small built-in file browser (no native dialog dependency, works the same under Xvfb):
//! files open as sources, a folder can be added to the index.

use std::path::{Path, PathBuf};

use eframe::egui;

pub enum Outcome {
    Keep,
    Open(PathBuf),
    Cancel,
}

pub struct Browser {
    pub dir: PathBuf,
    entries: Vec<(String, bool)>,
    path_text: String,
    error: Option<String>,
}

impl Browser {
    pub fn new(dir: PathBuf) -> Browser {
        let mut b = Browser {
            path_text: dir.display().to_string(),
            dir,
            entries: Vec::new(),
            error: None,
        };
        b.read();
        b
    }

    fn read(&mut self) {
        self.entries.clear();
        match std::fs::read_dir(&self.dir) {
            Ok(rd) => {
                self.error = None;
                for e in rd.flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    if name.starts_with('.') {
                        continue;
                    }
                    self.entries.push((name, e.path().is_dir()));
                }
                // Folders first, then files, each alphabetically.
                self.entries.sort_by(|a, b| {
                    b.1.cmp(&a.1)
                        .then_with(|| a.0.to_lowercase().cmp(&b.0.to_lowercase()))
                });
            }
            Err(e) => self.error = Some(format!("{}: {e}", self.dir.display())),
        }
    }

    fn go(&mut self, dir: &Path) {
        self.dir = dir.to_path_buf();
        self.path_text = dir.display().to_string();
        self.read();
    }

    pub fn show(&mut self, ctx: &egui::Context) -> Outcome {
        let mut outcome = Outcome::Keep;
        let mut open = true;
        egui::Window::new("Open")
            .open(&mut open)
            .collapsible(false)
            .default_size([520.0, 420.0])
            .show(ctx, |ui| {
                ui.horizontal(|ui| {
                    if ui.button("Up").clicked() {
                        if let Some(parent) = self.dir.parent().map(Path::to_path_buf) {
                            self.go(&parent);
                        }
                    }
                    let label = ui.label("Path:");
                    let edit = ui
                        .add(egui::TextEdit::singleline(&mut self.path_text).desired_width(300.0))
                        .labelled_by(label.id);
                    let enter = edit.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter));
                    if ui.button("Go").clicked() || enter {
                        let p = PathBuf::from(self.path_text.trim());
                        if p.is_dir() {
                            self.go(&p);
                        } else {
                            outcome = Outcome::Open(p);
                        }
                    }
                });
                if let Some(e) = &self.error {
                    ui.colored_label(egui::Color32::from_rgb(255, 150, 130), e);
                }
                let mut target = None;
                egui::ScrollArea::vertical()
                    .max_height(300.0)
                    .show(ui, |ui| {
                        for (name, is_dir) in &self.entries {
                            let label = if *is_dir {
                                format!("{name}/")
                            } else {
                                name.to_string()
                            };
                            if ui.selectable_label(false, label).clicked() {
                                target = Some((self.dir.join(name), *is_dir));
                            }
                        }
                    });
                match target {
                    Some((p, true)) => self.go(&p),
                    Some((p, false)) => outcome = Outcome::Open(p),
                    None => {}
                }
                ui.separator();
                ui.horizontal(|ui| {
                    if ui.button("Add this folder to the index").clicked() {
                        outcome = Outcome::Open(self.dir.clone());
                    }
                    if ui.button("Cancel").clicked() {
                        outcome = Outcome::Cancel;
                    }
                });
            });
        if !open {
            outcome = Outcome::Cancel;
        }
        outcome
    }
}
