"""How long verifying a signed bundle takes (issue 23: a 100 MB bundle verifies in under 1 s).

    .venv/bin/python bench/verify_speed.py [--sizes-mb 10 100] [--runs 5]

Writes bundles of the given sizes into a temporary folder (random bytes behind a TFLite identifier:
verification never loads an interpreter, so the content does not matter, only its size), signs each
with a fresh key, then times, per size, the two ways a model is checked:
- `check_model(path)`: the install job's way, one streaming pass (the flatbuffer is hashed once, in
  1 MiB blocks, never held whole), then the signature and the members;
- `read_model` + `check_model(ModelFile)`: the daemon's way, where loading the model already reads and
  hashes it, and the signature check hashes nothing again (its own share is printed apart).
The files are read once first, so the times are from the page cache (a download has just written the
file); the first, cold read from an SD card is bounded by the card, not by the check. Prints the
median and the best of the runs, MB/s, and the CPU. Numbers only, no asserts.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edge_resnet.bench.core import machine  # noqa: E402
from edge_resnet.bundle import BundleMeta, read_model, write_bundle  # noqa: E402
from edge_resnet.fleet.keys import generate, load_private, load_public  # noqa: E402
from edge_resnet.fleet.manifest import sign_model  # noqa: E402
from edge_resnet.fleet.trust import TrustPolicy, check_model  # noqa: E402
from edge_resnet.prepspec import PRESETS  # noqa: E402


def make_signed(folder: Path, size_mb: int, key: Path) -> Path:
    flat = bytearray(np.random.default_rng(size_mb).integers(0, 256, size_mb * 1_000_000, dtype=np.uint8).tobytes())
    flat[4:8] = b"TFL3"
    meta = BundleMeta(preprocess=PRESETS["imagenet"], labels=[f"class {i}" for i in range(1000)])
    path = write_bundle(bytes(flat), meta, folder / f"m{size_mb}.tflite")
    sign_model(path, load_private(key), 1)
    return path


def timed(fn: Callable[[], object], runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def ways(path: Path, policy: TrustPolicy, runs: int) -> list[tuple[str, list[float]]]:
    mf = read_model(path)
    return [
        ("check_model(path), streaming", timed(lambda: check_model(path, policy), runs)),
        ("read_model + check_model(file)", timed(lambda: check_model(read_model(path), policy), runs)),
        ("  of which check_model(file)", timed(lambda: check_model(mf, policy), runs)),
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes-mb", type=int, nargs="+", default=[10, 100], help="bundle sizes in MB (1e6 bytes)")
    ap.add_argument("--runs", type=int, default=5, help="timed checks per size and way")
    args = ap.parse_args()
    m = machine()
    print(f"cpu: {m['cpu']} ({m['cores']} cores, {m['machine']}), Python {m['python']}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        _, key, pub = generate(folder / "keys")
        policy = TrustPolicy.of([load_public(pub)], require_signature=True)
        print(f"{'size':>8}  {'way':<34} {'median':>9} {'best':>9} {'MB/s':>7}")
        for size in args.sizes_mb:
            path = make_signed(folder, size, key)
            path.read_bytes()  # into the page cache
            mb = path.stat().st_size / 1e6
            for way, times in ways(path, policy, args.runs):
                med, best = statistics.median(times), min(times)
                rate = f"{mb / med:>7.0f}" if way.startswith("check") or way.startswith("read") else f"{'-':>7}"
                print(f"{mb:>6.1f}MB  {way:<34} {med * 1000:>7.1f}ms {best * 1000:>7.1f}ms {rate}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
