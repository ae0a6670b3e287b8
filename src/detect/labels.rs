//! Class names: from the model's Ultralytics metadata when present, else the COCO-80 list.

/// The 80 COCO class names in YOLOv8 order.
pub const COCO_LABELS: [&str; 80] = [
    "person",
    "bicycle",
    "car",
    "motorcycle",
    "airplane",
    "bus",
    "train",
    "truck",
    "boat",
    "traffic light",
    "fire hydrant",
    "stop sign",
    "parking meter",
    "bench",
    "bird",
    "cat",
    "dog",
    "horse",
    "sheep",
    "cow",
    "elephant",
    "bear",
    "zebra",
    "giraffe",
    "backpack",
    "umbrella",
    "handbag",
    "tie",
    "suitcase",
    "frisbee",
    "skis",
    "snowboard",
    "sports ball",
    "kite",
    "baseball bat",
    "baseball glove",
    "skateboard",
    "surfboard",
    "tennis racket",
    "bottle",
    "wine glass",
    "cup",
    "fork",
    "knife",
    "spoon",
    "bowl",
    "banana",
    "apple",
    "sandwich",
    "orange",
    "broccoli",
    "carrot",
    "hot dog",
    "pizza",
    "donut",
    "cake",
    "chair",
    "couch",
    "potted plant",
    "bed",
    "dining table",
    "toilet",
    "tv",
    "laptop",
    "mouse",
    "remote",
    "keyboard",
    "cell phone",
    "microwave",
    "oven",
    "toaster",
    "sink",
    "refrigerator",
    "book",
    "clock",
    "vase",
    "scissors",
    "teddy bear",
    "hair drier",
    "toothbrush",
];

/// Parse Ultralytics' `names` metadata, a Python dict literal like `{0: 'person', 1: 'bicycle'}`.
pub fn parse_names(text: &str) -> Vec<String> {
    let mut pairs = Vec::new();
    let mut rest = text.trim().trim_start_matches('{').trim_end_matches('}');
    while !rest.trim().is_empty() {
        let Some((key, after)) = rest.split_once(':') else {
            break;
        };
        let after = after.trim_start();
        let Some(quote) = after.chars().next().filter(|c| *c == '\'' || *c == '"') else {
            break;
        };
        let Some(end) = after[1..].find(quote) else {
            break;
        };
        let Ok(id) = key.trim().trim_start_matches(',').trim().parse::<usize>() else {
            break;
        };
        pairs.push((id, after[1..1 + end].to_string()));
        rest = &after[end + 2..];
    }
    pairs.sort_by_key(|(id, _)| *id);
    // Only a dense 0..n mapping is trustworthy.
    if pairs.iter().enumerate().all(|(i, (id, _))| i == *id) {
        pairs.into_iter().map(|(_, n)| n).collect()
    } else {
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ultralytics_names() {
        let names = parse_names("{0: 'person', 1: 'bicycle', 2: \"traffic light\"}");
        assert_eq!(names, ["person", "bicycle", "traffic light"]);
    }

    #[test]
    fn rejects_sparse_or_garbage() {
        assert!(parse_names("{0: 'a', 2: 'b'}").is_empty());
        assert!(parse_names("not a dict").is_empty());
    }
}
