"""Variants of each example that `learn` trains on beside it: what the same camera shows at night.

Field cameras switch to grey, dark (infrared) frames at night, and grey frames form their own
cluster in the embedding: a head trained on daytime examples alone sends them to whichever class
happened to have a grey example. A grey, darkened copy of every example teaches each class its
night look (measured on the states task at 5 examples a class: bench/own_classes.py). Variants
only ever train: cross-validation scores the user's own examples, each with its variants held
out together.
"""

from __future__ import annotations

import cv2
import numpy as np
import numpy.typing as npt

Image = npt.NDArray[np.uint8]
NIGHT_GAIN = 0.4  # a night-mode frame's brightness against the day's, roughly


def night(image: Image) -> Image:
    """The example as a grey low-light frame (BGR in, BGR out)."""
    grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY).astype(np.float32) * NIGHT_GAIN
    out = cv2.cvtColor(np.clip(np.rint(grey), 0, 255).astype(np.uint8), cv2.COLOR_GRAY2BGR)
    return np.asarray(out, dtype=np.uint8)


VARIANTS = {"night": night}
