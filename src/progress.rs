//! Progress bars on stderr (hidden when stderr is not a terminal, as indicatif does).

use indicatif::{ProgressBar, ProgressStyle};

/// A byte-count bar for downloads; a spinner when the size is unknown.
pub fn bytes_bar(total: Option<u64>) -> ProgressBar {
    let bar = match total {
        Some(t) => ProgressBar::new(t),
        None => ProgressBar::new_spinner(),
    };
    let template = if total.is_some() {
        "  {bar:40.cyan/blue} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}"
    } else {
        "  {spinner} {bytes} {bytes_per_sec}"
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// An item-count bar with rate and ETA.
pub fn items_bar(total: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(total);
    let template = format!("  {{bar:40.cyan/blue}} {{pos}}/{{len}} {what} {{per_sec}} eta {{eta}}");
    if let Ok(style) = ProgressStyle::with_template(&template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}
