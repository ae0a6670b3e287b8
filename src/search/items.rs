//! Known items: a label shared by one or more gallery images (or defined by text prompts), the
//! per-item score of a region, and the decision that names a region as an item or as unknown.
//!
//! **Aggregation rule: mean of the item's top-2 image scores.** An image search returns the
//! nearest [`IMAGE_K`] gallery images; each item's score is the mean of its best
//! `m = min(2, images the item has)` of them, and an image of the item that the search did not
//! return counts as the weakest score it did return (its true score is at most that). A single
//! stray image of another item (a badly lit photo, a crop that happens to sit close to many
//! queries) can then no longer outrank an item two of whose views agree. Measured by
//! `tests/items.rs::per_item_aggregation_beats_per_image_matching` (six augmented copies per
//! shared photo, from near-copies to dark tight crops; four held-out copies each; three seeds;
//! the generated random-weight CLIP, so it shows the mechanism, not CLIP's accuracy): the
//! nearest image's item is right for 79 of 180 held-out copies, the per-item score for 90.
//! While choosing, six seeds gave best-image 163/360, top-2 184, top-3 183, a centroid per item
//! 171. In a gallery of near-duplicates the nearest image can win; `arvis index calibrate`
//! prints both rules' leave-one-out accuracy for the gallery at hand.
//!
//! **Decision:** a region is named as its best item only when that item's score is at least
//! `threshold` **and** beats the best other item by at least `margin` (a ratio test in cosine
//! units: `score - other`), else it is unknown. `arvis index calibrate` measures both.

use std::collections::HashMap;

use super::index::Hit;

/// Gallery images retrieved per region before they are aggregated into items.
pub const IMAGE_K: usize = 16;
/// Image scores averaged per item.
pub const ITEM_TOP_M: usize = 2;
/// Item matches kept per region (best first).
pub const ITEMS_KEPT: usize = 5;

/// Why a label was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LabelError {
    /// Empty or only whitespace.
    #[error(
        "an item label cannot be empty or only whitespace. Fix: give the item a name, e.g. red-mug"
    )]
    Empty,
    /// A control character (newline, tab…) would break the one-line listings.
    #[error(
        "item label {0:?} contains a control character (newline, tab…). Fix: use printable text"
    )]
    Control(String),
}

/// A checked item label: any UTF-8 text with no control characters, trimmed, not empty.
pub fn check_label(raw: &str) -> Result<String, LabelError> {
    let label = raw.trim();
    if label.is_empty() {
        return Err(LabelError::Empty);
    }
    if label.chars().any(char::is_control) {
        return Err(LabelError::Control(label.to_string()));
    }
    Ok(label.to_string())
}

/// The label an image gets when none is given: its file stem (lossy for non-UTF-8 names; an
/// unusable stem falls back to the whole file name).
pub fn label_from_stem(path: &std::path::Path) -> String {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    check_label(&stem)
        .or_else(|_| check_label(&crate::paths::display_path(path)))
        .unwrap_or_else(|_| "unnamed".to_string())
}

/// One item's match for a region.
#[derive(Debug, Clone, PartialEq)]
pub struct ItemMatch {
    /// The item's label.
    pub label: String,
    /// Its aggregated score (see the module docs).
    pub score: f32,
    /// Its score minus the best other item's (for the first item: how far it leads).
    pub margin: f32,
    /// Its best image among those retrieved.
    pub best: Hit,
}

/// Per-item scores from one region's image hits (best first, as the index returns them).
/// `counts` gives each item's image count in the gallery; returns the items best first, each
/// with its margin over the best other item. An item the search did not return scores at most
/// the weakest returned image, so a lone retrieved item leads by its score minus that (or by its
/// whole score when the gallery holds no other item).
pub fn aggregate(hits: &[Hit], counts: &HashMap<String, usize>) -> Vec<ItemMatch> {
    let Some(floor) = hits.last().map(|h| h.score) else {
        return Vec::new();
    };
    // Hits arrive best first, so each item's first hit is its best and its first m its top m.
    let mut per_item: Vec<(&str, Vec<&Hit>)> = Vec::new();
    for hit in hits {
        match per_item.iter_mut().find(|(label, _)| *label == hit.label) {
            Some((_, v)) => v.push(hit),
            None => per_item.push((&hit.label, vec![hit])),
        }
    }
    let mut items: Vec<ItemMatch> = per_item
        .into_iter()
        .map(|(label, item_hits)| {
            let has = counts.get(label).copied().unwrap_or(item_hits.len()).max(1);
            let m = ITEM_TOP_M.min(has);
            let found: f32 = item_hits.iter().take(m).map(|h| h.score).sum();
            let missing = m.saturating_sub(item_hits.len()) as f32;
            ItemMatch {
                label: label.to_string(),
                score: (found + missing * floor) / m as f32,
                margin: 0.0,
                best: item_hits[0].clone(),
            }
        })
        .collect();
    items.sort_by(|a, b| b.score.total_cmp(&a.score));
    let unretrieved = if counts.len() > items.len() {
        floor
    } else {
        0.0
    };
    let first = items.first().map_or(0.0, |i| i.score);
    let second = items.get(1).map_or(unretrieved, |i| i.score);
    for (n, item) in items.iter_mut().enumerate() {
        item.margin = item.score - if n == 0 { second } else { first };
    }
    items
}

/// When a region is named as an item, and which text items are shown.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Decision {
    /// The best item's score must be at least this (cosine, image to image).
    pub threshold: f32,
    /// … and beat the best other item's by at least this.
    pub margin: f32,
    /// A text item is shown when the region's similarity to it is at least this (cosine,
    /// image to text: CLIP puts these far lower than image-to-image scores).
    pub text_threshold: f32,
}

impl Decision {
    /// Starting points for the released CLIP ViT-B/32 (crops of one object typically score
    /// 0.8–0.95 against each other, different objects 0.5–0.75; a matching prompt 0.25–0.35).
    /// A gallery's own figures come from `arvis index calibrate`.
    pub const DEFAULT: Decision = Decision {
        threshold: 0.80,
        margin: 0.02,
        text_threshold: 0.25,
    };
}

impl Default for Decision {
    fn default() -> Self {
        Decision::DEFAULT
    }
}

/// How matches are shown: image hits below `min_score` are left out; `decision` names items.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MatchView {
    /// Image hits below this cosine similarity are left out.
    pub min_score: f32,
    /// When a region is a known item.
    pub decision: Decision,
}

impl Default for MatchView {
    fn default() -> Self {
        MatchView {
            min_score: -1.0,
            decision: Decision::DEFAULT,
        }
    }
}

/// A region named as a known item.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KnownItem<'a> {
    /// The item.
    pub label: &'a str,
    /// Its score.
    pub score: f32,
    /// How far it beats the best other item.
    pub margin: f32,
    /// Its best image.
    pub best: &'a Hit,
}

/// The decision on a region's item matches (best first, from [`aggregate`]): the best item if
/// it clears `decision`'s threshold and margin.
pub fn decide<'a>(items: &'a [ItemMatch], decision: &Decision) -> Option<KnownItem<'a>> {
    let best = items.first()?;
    (best.score >= decision.threshold && best.margin >= decision.margin).then_some(KnownItem {
        label: &best.label,
        score: best.score,
        margin: best.margin,
        best: &best.best,
    })
}

/// A text-defined item's match for a region.
#[derive(Debug, Clone, PartialEq)]
pub struct TextMatch {
    /// The item's label.
    pub label: String,
    /// Cosine similarity between the region's image embedding and the label's text embedding.
    pub score: f32,
}

/// A text-defined item: a label and the mean embedding of its prompts.
#[derive(Debug, Clone, PartialEq)]
pub struct TextItem {
    /// The item's label.
    pub label: String,
    /// The prompts it was made from.
    pub prompts: Vec<String>,
    /// Unit mean of the prompts' text embeddings.
    pub embedding: Vec<f32>,
}

impl TextItem {
    /// Text items from stored prompt rows (label, prompt, unit embedding) ordered by label:
    /// each item is the normalised mean of its prompts' embeddings.
    pub fn from_prompts(
        rows: impl IntoIterator<Item = (String, String, Vec<f32>)>,
    ) -> Vec<TextItem> {
        let mut items: Vec<TextItem> = Vec::new();
        for (label, prompt, v) in rows {
            match items.last_mut().filter(|t| t.label == label) {
                Some(t) => {
                    t.prompts.push(prompt);
                    for (a, b) in t.embedding.iter_mut().zip(&v) {
                        *a += b;
                    }
                }
                None => items.push(TextItem {
                    label,
                    prompts: vec![prompt],
                    embedding: v,
                }),
            }
        }
        for t in &mut items {
            crate::embed::l2_normalize(&mut t.embedding);
        }
        items
    }
}

/// The best text item for a region's embedding.
pub fn best_text(embedding: &[f32], texts: &[TextItem]) -> Option<TextMatch> {
    texts
        .iter()
        .map(|t| TextMatch {
            label: t.label.clone(),
            score: crate::embed::cosine(embedding, &t.embedding),
        })
        .max_by(|a, b| a.score.total_cmp(&b.score))
}

/// CLIP's zero-shot recipe: each prompt is embedded in several phrasings and the unit
/// embeddings averaged. A prompt that already reads as a sentence is also used as given.
pub const PROMPT_TEMPLATES: [&str; 5] = [
    "a photo of {}.",
    "a photo of the {}.",
    "a close-up photo of {}.",
    "a bright photo of {}.",
    "a cropped photo of {}.",
];

/// The phrasings of `prompt` that are embedded and averaged.
pub fn prompt_phrasings(prompt: &str) -> Vec<String> {
    let p = prompt.trim();
    let mut out = vec![p.to_string()];
    out.extend(PROMPT_TEMPLATES.iter().map(|t| t.replace("{}", p)));
    out
}

/// A prompt's text embedding: the unit mean of its [`prompt_phrasings`]' embeddings.
pub fn embed_prompt(
    text: &mut crate::embed::TextEncoder,
    prompt: &str,
) -> Result<Vec<f32>, crate::embed::EmbedError> {
    let phrasings = prompt_phrasings(prompt);
    let refs: Vec<&str> = phrasings.iter().map(String::as_str).collect();
    let mut mean: Vec<f32> = Vec::new();
    for e in text.embed(&refs)? {
        if mean.is_empty() {
            mean = vec![0.0; e.len()];
        }
        for (m, v) in mean.iter_mut().zip(&e) {
            *m += v;
        }
    }
    crate::embed::l2_normalize(&mut mean);
    Ok(mean)
}

/// Leave-one-out score distributions of a gallery, for `arvis index calibrate`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Calibration {
    /// Held-out images of items with ≥ 2 images.
    pub queries: usize,
    /// The true item's score with the query image left out (item known).
    pub genuine: Vec<f32>,
    /// The best item's score with the query's whole item left out (item unknown).
    pub impostor: Vec<f32>,
    /// Best minus second-best item score when the true item came first.
    pub genuine_margin: Vec<f32>,
    /// Best minus second-best item score with the true item left out.
    pub impostor_margin: Vec<f32>,
    /// Queries whose nearest single image belongs to the true item.
    pub top1_per_image: usize,
    /// Queries whose best aggregated item is the true item.
    pub top1_per_item: usize,
    /// Item known: (the best item is the true one, its score, its margin), per query.
    pub known_best: Vec<(bool, f32, f32)>,
    /// Item unknown: (the best item's score, its margin), per query.
    pub unknown_best: Vec<(f32, f32)>,
}

impl Calibration {
    /// Under `decision`: the share of known-item queries named as their true item, and the share
    /// of unknown-item queries named as some item (wrongly).
    pub fn rates(&self, decision: &Decision) -> (f32, f32) {
        let passes =
            |score: f32, margin: f32| score >= decision.threshold && margin >= decision.margin;
        let share = |n: usize, of: usize| if of == 0 { 0.0 } else { n as f32 / of as f32 };
        let right = self
            .known_best
            .iter()
            .filter(|&&(ok, s, m)| ok && passes(s, m))
            .count();
        let wrong = self
            .unknown_best
            .iter()
            .filter(|&&(s, m)| passes(s, m))
            .count();
        (
            share(right, self.known_best.len()),
            share(wrong, self.unknown_best.len()),
        )
    }
}

/// One gallery image for calibration: its item and unit embedding.
pub struct LabelledEmbedding<'a> {
    /// The item.
    pub label: &'a str,
    /// The unit embedding.
    pub embedding: &'a [f32],
}

/// Held-out images scored by [`calibrate`] at most (each scans the whole gallery).
pub const CALIBRATION_QUERIES: usize = 2000;

/// Leave-one-out over every image of an item with ≥ 2 images: scored against the rest of the
/// gallery exactly as a region is (top [`IMAGE_K`] images, aggregated).
pub fn calibrate(gallery: &[LabelledEmbedding<'_>]) -> Calibration {
    let mut counts: HashMap<String, usize> = HashMap::new();
    for g in gallery {
        *counts.entry(g.label.to_string()).or_default() += 1;
    }
    let mut cal = Calibration::default();
    let eligible: Vec<usize> = (0..gallery.len())
        .filter(|&i| counts.get(gallery[i].label).copied().unwrap_or(0) >= 2)
        .collect();
    // Every query scans the whole gallery: beyond CALIBRATION_QUERIES, evenly spaced ones.
    let step = eligible.len().div_ceil(CALIBRATION_QUERIES).max(1);
    for &qi in eligible.iter().step_by(step) {
        let q = &gallery[qi];
        cal.queries += 1;
        let mut scored: Vec<(usize, f32)> = gallery
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != qi)
            .map(|(i, g)| (i, crate::embed::cosine(q.embedding, g.embedding)))
            .collect();
        // Only the best IMAGE_K of the others, plus the item's own (left out when unknown), matter.
        let keep = (IMAGE_K + counts.get(q.label).copied().unwrap_or(0)).min(scored.len());
        if keep > 0 && keep < scored.len() {
            scored.select_nth_unstable_by(keep - 1, |a, b| b.1.total_cmp(&a.1));
            scored.truncate(keep);
        }
        scored.sort_by(|a, b| b.1.total_cmp(&a.1));
        let hits = |keep: &dyn Fn(&str) -> bool| -> Vec<Hit> {
            scored
                .iter()
                .filter(|(i, _)| keep(gallery[*i].label))
                .take(IMAGE_K)
                .map(|&(i, score)| Hit {
                    id: i as i64,
                    path: String::new(),
                    label: gallery[i].label.to_string(),
                    score,
                })
                .collect()
        };
        // Known: the query image is out, its item's other images are in.
        let mut known_counts = counts.clone();
        if let Some(c) = known_counts.get_mut(q.label) {
            *c -= 1;
        }
        let known_hits = hits(&|_| true);
        if known_hits.first().is_some_and(|h| h.label == q.label) {
            cal.top1_per_image += 1;
        }
        let known = aggregate(&known_hits, &known_counts);
        if let Some(true_item) = known.iter().find(|m| m.label == q.label) {
            cal.genuine.push(true_item.score);
        }
        if let Some(first) = known.first() {
            let right = first.label == q.label;
            if right {
                cal.top1_per_item += 1;
                cal.genuine_margin.push(first.margin);
            }
            cal.known_best.push((right, first.score, first.margin));
        }
        // Unknown: the query's whole item is out of the gallery.
        let mut unknown_counts = counts.clone();
        unknown_counts.remove(q.label);
        let unknown_hits = hits(&|label| label != q.label);
        let unknown = aggregate(&unknown_hits, &unknown_counts);
        if let Some(first) = unknown.first() {
            cal.impostor.push(first.score);
            cal.impostor_margin.push(first.margin);
            cal.unknown_best.push((first.score, first.margin));
        }
    }
    cal
}

/// The cut where the false-accept rate (impostors at or above it) equals the false-reject rate
/// (genuine below it), searched over every observed score; with its error rate.
pub fn equal_error_cut(genuine: &[f32], impostor: &[f32]) -> Option<(f32, f32)> {
    if genuine.is_empty() || impostor.is_empty() {
        return None;
    }
    let mut cuts: Vec<f32> = genuine.iter().chain(impostor).copied().collect();
    cuts.sort_by(f32::total_cmp);
    cuts.dedup();
    let rate = |v: &[f32], f: &dyn Fn(f32) -> bool| {
        v.iter().filter(|&&x| f(x)).count() as f32 / v.len() as f32
    };
    cuts.into_iter()
        .map(|t| {
            let far = rate(impostor, &|x| x >= t);
            let frr = rate(genuine, &|x| x < t);
            (t, far, frr)
        })
        .min_by(|a, b| (a.1 - a.2).abs().total_cmp(&(b.1 - b.2).abs()))
        .map(|(t, far, frr)| (t, (far + frr) / 2.0))
}

/// A small text histogram of `values` over `[lo, hi)` in `bins` bins, one line per bin.
pub fn text_histogram(values: &[f32], lo: f32, hi: f32, bins: usize, width: usize) -> Vec<String> {
    let bins = bins.max(1);
    let mut counts = vec![0usize; bins];
    for &v in values {
        let b = (((v - lo) / (hi - lo)) * bins as f32).floor();
        let b = (b.max(0.0) as usize).min(bins - 1);
        counts[b] += 1;
    }
    let most = counts.iter().copied().max().unwrap_or(0).max(1);
    counts
        .iter()
        .enumerate()
        .map(|(i, &c)| {
            let from = lo + (hi - lo) * i as f32 / bins as f32;
            let bar = "#".repeat((c * width).div_ceil(most).min(width));
            format!("{from:>6.2} {c:>5} {bar}")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hit(label: &str, score: f32) -> Hit {
        Hit {
            id: 0,
            path: format!("{label}.jpg"),
            label: label.into(),
            score,
        }
    }

    #[test]
    fn labels_are_trimmed_text_and_blank_ones_refused() {
        assert_eq!(check_label("  red mug ").unwrap(), "red mug");
        assert_eq!(check_label("Анна 🙂").unwrap(), "Анна 🙂");
        assert_eq!(check_label(" \t "), Err(LabelError::Empty));
        assert!(matches!(check_label("a\nb"), Err(LabelError::Control(_))));
        assert_eq!(
            label_from_stem(std::path::Path::new("/g/red-mug.jpg")),
            "red-mug"
        );
    }

    #[test]
    fn two_agreeing_views_outrank_one_stray_image() {
        // One stray image of "b" is nearest, but two views of "a" agree.
        let hits = [
            hit("b", 0.90),
            hit("a", 0.88),
            hit("a", 0.87),
            hit("c", 0.50),
        ];
        let counts = HashMap::from([("a".into(), 2), ("b".into(), 3), ("c".into(), 1)]);
        let items = aggregate(&hits, &counts);
        assert_eq!(items[0].label, "a");
        assert!((items[0].score - 0.875).abs() < 1e-6);
        // b has more images than were retrieved: the missing one counts as the floor (0.50).
        assert!((items[1].score - 0.70).abs() < 1e-6, "{items:?}");
        // A one-image item is scored by that image alone.
        assert!((items[2].score - 0.50).abs() < 1e-6);
        assert_eq!(items[0].best.score, 0.88);
    }

    #[test]
    fn threshold_and_margin_each_decide() {
        let counts = HashMap::from([("a".into(), 1), ("b".into(), 1)]);
        let items = aggregate(&[hit("a", 0.85), hit("b", 0.84)], &counts);
        let d = |threshold, margin| Decision {
            threshold,
            margin,
            text_threshold: 0.25,
        };
        let known = decide(&items, &d(0.8, 0.005)).unwrap();
        assert_eq!(known.label, "a");
        assert!((known.margin - 0.01).abs() < 1e-6);
        // The margin alone turns it to unknown: a and b are too close to tell apart.
        assert!(decide(&items, &d(0.8, 0.02)).is_none());
        // The threshold alone turns it to unknown.
        assert!(decide(&items, &d(0.9, 0.005)).is_none());
        // The only item of a gallery leads by its whole score …
        let alone = aggregate(&[hit("a", 0.85)], &HashMap::from([("a".into(), 1)]));
        assert!(decide(&alone, &d(0.8, 0.5)).is_some());
        // … but when other items exist and were not retrieved, only by as much as it beats the
        // weakest retrieved image.
        let counts = HashMap::from([("a".into(), 3), ("b".into(), 1)]);
        let crowded = aggregate(&[hit("a", 0.85), hit("a", 0.84), hit("a", 0.60)], &counts);
        assert!(
            (crowded[0].margin - (0.845 - 0.60)).abs() < 1e-6,
            "{crowded:?}"
        );
        assert!(decide(&crowded, &d(0.8, 0.3)).is_none());
    }

    #[test]
    fn equal_error_cut_separates_clean_distributions() {
        let genuine = [0.9, 0.85, 0.8, 0.95];
        let impostor = [0.5, 0.6, 0.55, 0.7];
        let (t, eer) = equal_error_cut(&genuine, &impostor).unwrap();
        assert!(t > 0.7 && t <= 0.8, "{t}");
        assert_eq!(eer, 0.0);
        assert!(equal_error_cut(&[], &impostor).is_none());
        let lines = text_histogram(&genuine, 0.0, 1.0, 10, 20);
        assert_eq!(lines.len(), 10);
        assert!(lines[9].contains("##"), "{lines:?}");
    }

    #[test]
    fn prompts_are_phrased_with_the_templates() {
        let p = prompt_phrasings(" red fire extinguisher ");
        assert_eq!(p[0], "red fire extinguisher");
        assert!(p.contains(&"a photo of red fire extinguisher.".to_string()));
        assert_eq!(p.len(), 1 + PROMPT_TEMPLATES.len());
    }
}
