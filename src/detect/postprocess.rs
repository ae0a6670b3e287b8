//! Decode YOLOv8's `[1, 4 + classes, anchors]` output and run class-aware NMS.

use glam::{Affine2, Vec2};

/// One detected object in source-image pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Detection {
    /// Index into the detector's class names.
    pub class_id: usize,
    /// Confidence, 0 to 1.
    pub score: f32,
    /// `[x1, y1, x2, y2]` in image pixels, clipped to the image.
    pub bbox: [f32; 4],
}

impl Detection {
    /// The box's area in square pixels (0 for a degenerate box).
    pub fn area(&self) -> f32 {
        (self.bbox[2] - self.bbox[0]).max(0.0) * (self.bbox[3] - self.bbox[1]).max(0.0)
    }
}

/// Intersection over union of two `[x1, y1, x2, y2]` boxes.
pub fn iou(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let iw = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let ih = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = iw * ih;
    let area_a = (a[2] - a[0]).max(0.0) * (a[3] - a[1]).max(0.0);
    let area_b = (b[2] - b[0]).max(0.0) * (b[3] - b[1]).max(0.0);
    let union = area_a + area_b - inter;
    if union <= 0.0 { 0.0 } else { inter / union }
}

/// Detection thresholds and filters.
#[derive(Debug, Clone, PartialEq)]
pub struct DetectOptions {
    /// Minimum class score.
    pub conf: f32,
    /// IoU above which a lower-scored box of the same class is suppressed.
    pub iou: f32,
    /// Most detections kept per image.
    pub max_det: usize,
    /// Keep only these class ids (None: all).
    pub classes: Option<Vec<usize>>,
}

impl Default for DetectOptions {
    fn default() -> Self {
        DetectOptions {
            conf: 0.25,
            iou: 0.45,
            max_det: 300,
            classes: None,
        }
    }
}

/// Ultralytics caps the boxes entering NMS; so do we, keeping the best.
const MAX_NMS_CANDIDATES: usize = 30_000;

/// Turn raw output (`rows` = 4 + classes, `anchors` columns, row-major) into detections.
pub fn decode(
    output: &[f32],
    rows: usize,
    anchors: usize,
    opts: &DetectOptions,
    image_from_model: Affine2,
    image_size: (u32, u32),
) -> Vec<Detection> {
    let classes = rows.saturating_sub(4);
    if classes == 0 || output.len() < rows * anchors {
        return Vec::new();
    }
    // Best class per anchor, walking each class row contiguously (cache-friendly for this layout).
    let mut best_score = vec![f32::NEG_INFINITY; anchors];
    let mut best_class = vec![0usize; anchors];
    for c in 0..classes {
        let row = &output[(4 + c) * anchors..(5 + c) * anchors];
        for ((s, bc), &v) in best_score.iter_mut().zip(best_class.iter_mut()).zip(row) {
            if v > *s {
                *s = v;
                *bc = c;
            }
        }
    }
    let (w, h) = (image_size.0 as f32, image_size.1 as f32);
    let mut candidates: Vec<Detection> = (0..anchors)
        .filter(|&i| best_score[i] >= opts.conf)
        // As Ultralytics: the best class is chosen first, the class filter applied after.
        .filter(|&i| {
            opts.classes
                .as_ref()
                .is_none_or(|keep| keep.contains(&best_class[i]))
        })
        .map(|i| {
            let (cx, cy, bw, bh) = (
                output[i],
                output[anchors + i],
                output[2 * anchors + i],
                output[3 * anchors + i],
            );
            let p1 = image_from_model.transform_point2(Vec2::new(cx - bw / 2.0, cy - bh / 2.0));
            let p2 = image_from_model.transform_point2(Vec2::new(cx + bw / 2.0, cy + bh / 2.0));
            Detection {
                class_id: best_class[i],
                score: best_score[i],
                bbox: [
                    p1.x.clamp(0.0, w),
                    p1.y.clamp(0.0, h),
                    p2.x.clamp(0.0, w),
                    p2.y.clamp(0.0, h),
                ],
            }
        })
        .collect();
    candidates.sort_by(|a, b| b.score.total_cmp(&a.score));
    candidates.truncate(MAX_NMS_CANDIDATES);
    nms(candidates, opts.iou, opts.max_det)
}

/// Greedy class-aware NMS over detections sorted by descending score.
pub fn nms(sorted: Vec<Detection>, iou_threshold: f32, max_det: usize) -> Vec<Detection> {
    let mut kept: Vec<Detection> = Vec::new();
    for d in sorted {
        if kept.len() >= max_det {
            break;
        }
        if kept
            .iter()
            .all(|k| k.class_id != d.class_id || iou(&k.bbox, &d.bbox) <= iou_threshold)
        {
            kept.push(d);
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    fn det(class_id: usize, score: f32, bbox: [f32; 4]) -> Detection {
        Detection {
            class_id,
            score,
            bbox,
        }
    }

    #[test]
    fn iou_of_known_boxes() {
        assert_eq!(iou(&[0.0, 0.0, 10.0, 10.0], &[0.0, 0.0, 10.0, 10.0]), 1.0);
        assert_eq!(iou(&[0.0, 0.0, 10.0, 10.0], &[10.0, 10.0, 20.0, 20.0]), 0.0);
        assert!((iou(&[0.0, 0.0, 10.0, 10.0], &[5.0, 0.0, 15.0, 10.0]) - 1.0 / 3.0).abs() < 1e-6);
    }

    #[test]
    fn nms_suppresses_only_within_a_class() {
        let boxes = vec![
            det(0, 0.9, [0.0, 0.0, 10.0, 10.0]),
            det(0, 0.8, [1.0, 0.0, 11.0, 10.0]),
            det(1, 0.7, [1.0, 0.0, 11.0, 10.0]),
            det(0, 0.6, [50.0, 50.0, 60.0, 60.0]),
        ];
        let kept = nms(boxes, 0.45, 300);
        assert_eq!(
            kept.iter().map(|d| d.score).collect::<Vec<_>>(),
            vec![0.9, 0.7, 0.6]
        );
        let kept = nms(kept, 0.45, 2);
        assert_eq!(kept.len(), 2, "max_det caps the result");
    }

    /// Build a fake `[1, 4 + classes, anchors]` output.
    fn output(anchors: &[([f32; 4], Vec<f32>)], classes: usize) -> Vec<f32> {
        let n = anchors.len();
        let mut out = vec![0.0; (4 + classes) * n];
        for (i, (b, scores)) in anchors.iter().enumerate() {
            for r in 0..4 {
                out[r * n + i] = b[r];
            }
            for (c, s) in scores.iter().enumerate() {
                out[(4 + c) * n + i] = *s;
            }
        }
        out
    }

    #[test]
    fn decode_maps_boxes_back_and_filters() {
        let raw = output(
            &[
                ([100.0, 100.0, 20.0, 40.0], vec![0.9, 0.1, 0.0]),
                ([300.0, 300.0, 10.0, 10.0], vec![0.1, 0.2, 0.3]),
                ([500.0, 500.0, 10.0, 10.0], vec![0.0, 0.05, 0.1]),
            ],
            3,
        );
        // Model pixels are image pixels × 2, shifted by 10 px of padding on x.
        let image_from_model = Affine2::from_scale(Vec2::splat(0.5))
            * Affine2::from_translation(Vec2::new(-10.0, 0.0));
        let opts = DetectOptions::default();
        let dets = decode(&raw, 7, 3, &opts, image_from_model, (1000, 1000));
        assert_eq!(dets.len(), 2);
        assert_eq!(dets[0].class_id, 0);
        assert_eq!(dets[0].bbox, [40.0, 40.0, 50.0, 60.0]);
        assert_eq!(dets[1].class_id, 2);

        let only_class_1 = DetectOptions {
            classes: Some(vec![1]),
            ..opts.clone()
        };
        assert!(
            decode(&raw, 7, 3, &only_class_1, image_from_model, (1000, 1000)).is_empty(),
            "class filter applies to the best class, not to any class above threshold"
        );

        let clipped = decode(&raw, 7, 3, &opts, image_from_model, (45, 45));
        assert_eq!(
            clipped[0].bbox,
            [40.0, 40.0, 45.0, 45.0],
            "boxes are clipped to the image"
        );
    }
}
