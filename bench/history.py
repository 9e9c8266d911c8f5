"""What the history of label changes costs: writes a second, bytes a change on disk and written.

    .venv/bin/python bench/history.py [--events 10000] [--batch 16] [--dir DIR]

Stores `--events` label changes through the history store (edge_resnet/history.py) in the writer's
batches, with the default caps (10,000 changes, 20 MiB, 30 days), each with a real 120-px JPEG
thumbnail of an ImageNet sample (as the overlay encodes it; synthetic frames when the test data is
not there). Prints the store's size on disk after 1,000, 2,000, 5,000 ... changes, bytes a kept
change, changes written a second (a batch is one transaction), and the bytes the process wrote to
the block layer (/proc/self/io: what an SD card would see, WAL and checkpoints included; 0 on
tmpfs, so `--dir` defaults to a folder beside this repository).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge_resnet.history import MIB, HistoryCaps, HistoryEvent, HistoryStore
from edge_resnet.sinks.timeline import THUMB_WIDTH


def thumbnails(n: int) -> list[bytes]:
    """`n` thumbnails as the overlay makes them (120 px wide, JPEG quality 70)."""
    data = Path(os.environ.get("EDGE_RESNET_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
    samples = data / "imagenet-samples"
    images = []
    if (samples / "labels.json").exists():
        for e in json.loads((samples / "labels.json").read_text())[:n]:
            img = cv2.imread(str(samples / e["file"]))
            if img is not None:
                images.append(img)
    rng = np.random.default_rng(0)
    while len(images) < n:
        images.append(cv2.GaussianBlur(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8), (0, 0), 3))
    out = []
    for img in images:
        h, w = img.shape[:2]
        small = cv2.resize(img, (THUMB_WIDTH, round(h * THUMB_WIDTH / w)), interpolation=cv2.INTER_AREA)
        out.append(cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, 70])[1].tobytes())
    return out


def written_bytes() -> int:
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("write_bytes:"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=10_000)
    ap.add_argument("--batch", type=int, default=16, help="changes a transaction (the writer's flush_events)")
    ap.add_argument("--dir", type=Path, default=Path(__file__).resolve().parents[2])
    args = ap.parse_args()
    thumbs = thumbnails(100)
    caps = HistoryCaps()
    folder = Path(tempfile.mkdtemp(prefix="history-bench-", dir=args.dir))
    store = HistoryStore(folder / "history.sqlite", caps)
    try:
        assert store.open(), store.problem
        print(f"{args.events} label changes, thumbnails {np.mean([len(t) for t in thumbs]) / 1000:.1f} KB on average "
              f"(120 px, JPEG 70), batches of {args.batch}; caps {caps.max_events} changes, "
              f"{caps.max_bytes / MIB:g} MiB, {caps.max_age_s / 86400:g} days; in {folder}")  # fmt: skip
        marks = {m for m in (1000, 2000, 5000, 10_000, 20_000, 50_000) if m <= args.events} | {args.events}
        wrote0, t0, busy = written_bytes(), time.time(), 0.0
        for start in range(1, args.events + 1, args.batch):
            ids = range(start, min(start + args.batch, args.events + 1))
            label = [f"label {i % 7}" for i in range(7)]
            batch = [HistoryEvent(i, t0 + i, None, label[i % 7], i % 7, 0.9, label[(i - 1) % 7], i, thumbs[i % 100])
                     for i in ids]  # fmt: skip
            tb = time.perf_counter()
            assert store.write(batch, now=t0 + batch[-1].id), store.problem
            busy += time.perf_counter() - tb
            if batch[-1].id in marks or any(start <= m <= batch[-1].id for m in marks):
                size = store.size_bytes()
                per = size / max(1, store.count)
                print(f"after {batch[-1].id:6d} changes: {store.count:6d} kept, {size / MIB:5.1f} MiB on disk "
                      f"({per:5.0f} bytes a kept change); evicted {dict(store.evicted)}")  # fmt: skip
        wrote = written_bytes() - wrote0
        n_batches = -(-args.events // args.batch)
        print(f"writes: {args.events / busy:.0f} changes/s ({1000 * busy / n_batches:.1f} ms a batch of {args.batch})")
        print(f"written to the block layer: {wrote / MIB:.1f} MiB = {wrote / args.events / 1000:.1f} KB a change "
              f"(the thumbnail is {np.mean([len(t) for t in thumbs]) / 1000:.1f} KB)")  # fmt: skip
        store.close()
        print(f"closed: {store.size_bytes() / MIB:.1f} MiB on disk (WAL checkpointed away); cap "
              f"{caps.max_bytes / MIB:g} MiB")  # fmt: skip
    finally:
        store.close()
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
