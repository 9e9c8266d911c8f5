"""Variants of each example that `learn` trains on beside it: what the same camera shows at night.

Field cameras switch to grey, dark (infrared) frames at night, and grey frames form their own
cluster in the embedding: a head trained on daytime examples alone sends them to whichever class
happened to have a grey example. A grey, darkened, noisy copy of every example teaches each class
its night look. Measured on the states task with large objects at 5 examples a class (INT8
MobileNet v2, 10 splits, bench/own_classes.py): no variant 94.8 %, grey and dark 96.5 %, grey,
dark and noisy 99.5 %. Variants
only ever train: cross-validation scores the user's own examples, each with its variants held
out together.
"""

from __future__ import annotations

import cv2
import numpy as np
import numpy.typing as npt

Image = npt.NDArray[np.uint8]
NIGHT_GAIN = 0.4  # a night-mode frame's brightness against the day's, roughly
NIGHT_NOISE = 6.0  # grey levels of sensor noise: a sensor at night runs at a high gain
NIGHT_SEED = 0  # the same noise on every machine (numpy's generator streams are platform-independent)


def night(image: Image) -> Image:
    """The example as a grey, dark, noisy low-light frame (BGR in, BGR out), the same on every machine."""
    grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY).astype(np.float32) * NIGHT_GAIN
    grey += np.random.default_rng(NIGHT_SEED).normal(0.0, NIGHT_NOISE, grey.shape).astype(np.float32)
    out = cv2.cvtColor(np.clip(np.rint(grey), 0, 255).astype(np.uint8), cv2.COLOR_GRAY2BGR)
    return np.asarray(out, dtype=np.uint8)


VARIANTS = {"night": night}
