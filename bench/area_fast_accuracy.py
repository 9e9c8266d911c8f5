"""Does the default resize ("area_fast") classify like INTER_AREA on camera-sized frames?

    .venv/bin/python bench/area_fast_accuracy.py [--images 200]

The shared ImageNet samples are 256 px on the short side, where both resizes are the same call; so
each sample is first upscaled (bicubic) to a 720-px short side (a 720p camera's resize factor),
and the MobileNet v2 quant model then classifies it with "area", "area_fast", plain bilinear, and
"area" on the frame shifted by one pixel (the change a camera's shake makes; it shows the model's
own sensitivity to tiny input changes). Prints top-1 of each and its agreement with "area".
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import cast

import cv2
import numpy as np
import numpy.typing as npt

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge_resnet.classify import Classifier, read_labels
from edge_resnet.engine import Engine


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=200)
    args = ap.parse_args()
    data = Path(os.environ.get("EDGE_RESNET_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
    engine = Engine.load(data / "models" / "mobilenet_v2_1.0_224_quant.tflite")
    base = Classifier(engine, read_labels(data / "models" / "imagenet_labels_1001.txt"))
    variants = {
        k: Classifier(engine, base.labels, dataclasses.replace(base.preprocess, interpolation=k), base.label_offset)
        for k in ("area", "area_fast", "linear")
    }
    names = [*variants, "area, 1 px shift"]
    hits = dict.fromkeys(names, 0)
    agree = dict.fromkeys(names, 0)
    entries = json.loads((data / "imagenet-samples" / "labels.json").read_text())
    evaluation = [e for i, e in enumerate(entries) if i % 5 != 0][: args.images]  # the evaluation split
    for e in evaluation:
        img = cv2.imread(str(data / "imagenet-samples" / e["file"]))
        f = 720 / min(img.shape[:2])
        big = cast("npt.NDArray[np.uint8]", cv2.resize(img, None, fx=f, fy=f, interpolation=cv2.INTER_CUBIC))
        top = {k: int(np.argmax(c.classify(big, k=1).probs)) - base.label_offset for k, c in variants.items()}
        top["area, 1 px shift"] = int(np.argmax(variants["area"].classify(big[1:, 1:], k=1).probs)) - base.label_offset
        for k in names:
            hits[k] += top[k] == e["class_index"]
            agree[k] += top[k] == top["area"]
    n = len(evaluation)
    print(f"{n} evaluation images upscaled to a 720-px short side, MobileNet v2 quant, centre crop 0.875")
    for k in names:
        print(f"{k:18s} top-1 {100 * hits[k] / n:5.1f}%   agreement with area {100 * agree[k] / n:5.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
