"""The pipeline a user would write instead of arvis: Pillow + NumPy + onnxruntime, YOLOv8n.

Run by `arvis bench detect --python` on the same images and model, in the same run:
letterbox with Pillow (bilinear, grey 114), NumPy normalisation, session.run, NumPy decode and
NMS. Prints one JSON object: per-image end-to-end and bare session.run times, detections found.
"""

import json
import sys
import time

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageOps


def letterbox(img, size):
    w, h = img.size
    r = min(size / w, size / h)
    nw, nh = round(w * r), round(h * r)
    canvas = Image.new("RGB", (size, size), (114, 114, 114))
    left, top = (size - nw) // 2, (size - nh) // 2
    canvas.paste(img.resize((nw, nh), Image.BILINEAR), (left, top))
    return canvas, r, left, top


def nms(boxes, scores, iou):
    order = scores.argsort()[::-1]
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        xx1 = np.maximum(boxes[i, 0], boxes[order[1:], 0])
        yy1 = np.maximum(boxes[i, 1], boxes[order[1:], 1])
        xx2 = np.minimum(boxes[i, 2], boxes[order[1:], 2])
        yy2 = np.minimum(boxes[i, 3], boxes[order[1:], 3])
        inter = np.clip(xx2 - xx1, 0, None) * np.clip(yy2 - yy1, 0, None)
        area = lambda b: (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
        union = area(boxes[i : i + 1]) + area(boxes[order[1:]]) - inter
        order = order[1:][inter / np.maximum(union, 1e-9) <= iou]
    return keep


def detect(sess, name, path, size=640, conf=0.25, iou=0.45):
    img = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
    canvas, r, left, top = letterbox(img, size)
    x = np.asarray(canvas, dtype=np.float32).transpose(2, 0, 1)[None] / 255.0
    t = time.perf_counter()
    out = sess.run(None, {name: x})[0][0]  # [84, 8400]
    infer = time.perf_counter() - t
    scores = out[4:].max(0)
    classes = out[4:].argmax(0)
    m = scores >= conf
    cx, cy, w, h = out[0][m], out[1][m], out[2][m], out[3][m]
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)
    boxes = (boxes - [left, top, left, top]) / r
    found = 0
    for c in np.unique(classes[m]):
        sel = classes[m] == c
        found += len(nms(boxes[sel], scores[m][sel], iou))
    return found, infer, x


def main():
    model, rounds, paths = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    tensors = [detect(sess, name, p)[2] for p in paths]  # warm-up pass
    e2e, bare, found, ratios = 0.0, 0.0, 0, []
    for _ in range(rounds):
        bare_round = 0.0
        for x in tensors:
            t = time.perf_counter()
            sess.run(None, {name: x})
            bare_round += time.perf_counter() - t
        bare += bare_round
        t = time.perf_counter()
        for p in paths:
            found += detect(sess, name, p)[0]
        e2e_round = time.perf_counter() - t
        e2e += e2e_round
        ratios.append(e2e_round / bare_round)  # as arvis: each round over the bare one before it
    n = rounds * len(paths)
    print(json.dumps({
        "onnxruntime": ort.__version__,
        "end_to_end_per_image_ms": 1e3 * e2e / n,
        "bare_per_image_ms": 1e3 * bare / n,
        "ratio_median_of_rounds": sorted(ratios)[len(ratios) // 2],
        "detections_per_round": found // max(rounds, 1),
    }))


if __name__ == "__main__":
    if sys.argv[1] == "--once":
        # Whole-process mode: load, detect every image once, exit (start-up included by the caller).
        sess = ort.InferenceSession(sys.argv[2], providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        print(sum(detect(sess, name, p)[0] for p in sys.argv[3:]))
    else:
        main()
