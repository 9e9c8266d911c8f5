"""What the embedding output costs a bundle's invoke (issue 20: at most 2 % of invoke time).

    .venv/bin/python bench/embedding_cost.py MODEL.tflite [--runs 200] [--warmup 20] [--threads 1 2]

Loads the bundle's flatbuffer twice in the LiteRT interpreter (default delegates: XNNPACK, as on the
device): as it is, and with the embedding output removed from the subgraph's outputs
(`tflite_io.without_extra_outputs`: the pooled tensor is still computed, the classifier reads it; it
is just no longer an output). Each is loaded in several interpreters, in the order with, without,
without, with, with, without, ... (interpreters holding the same model differ by up to 15 % on this
machine, the early ones slower), and invokes alternate one by one between them all (who goes first
rotates every round, so machine noise hits all alike) after a warm-up, at each thread count. Prints
the pooled medians, their ratio, the median of the paired differences, the spread between the
interpreters (the noise floor) and the CPU model. Numbers only, no asserts; uses no TensorFlow.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edge_resnet.bench.core import machine  # noqa: E402
from edge_resnet.bundle import read_model  # noqa: E402
from edge_resnet.convert import tflite_io  # noqa: E402


def runner(flatbuffer: bytes, threads: int) -> tuple[Callable[[], float], int]:
    """A timed invoke (ms) on a fixed input, and the interpreter's number of outputs."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=flatbuffer, num_threads=threads)
    it.allocate_tensors()
    d = it.get_input_details()[0]
    x = np.random.default_rng(0).integers(0, 256, d["shape"]).astype(d["dtype"])
    it.set_tensor(d["index"], x)
    outputs: list[dict[str, Any]] = it.get_output_details()

    def run() -> float:
        t0 = time.perf_counter()
        it.invoke()
        for o in outputs:  # the caller reads what it gets: the scores, and the embedding when there is one
            it.get_tensor(o["index"])
        return (time.perf_counter() - t0) * 1000.0

    return run, len(outputs)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", type=Path, help="a bundle from edge-resnet convert (with an embedding output)")
    ap.add_argument("--runs", type=int, default=200, help="timed invokes per interpreter and thread count")
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--instances", type=int, default=3, help="interpreters per variant")
    args = ap.parse_args()

    mf = read_model(args.model)
    with_emb = mf.flatbuffer
    names = tflite_io.output_names(with_emb)
    if len(names) < 2:
        print(f"{args.model} has one output ({names[0]}): no embedding output to measure", file=sys.stderr)
        return 2
    without = tflite_io.without_extra_outputs(with_emb)
    emb = mf.meta.embedding if mf.meta else None
    print(f"model:     {args.model.name} ({len(with_emb) / 1e6:.2f} MB), outputs {names}")
    print(f"embedding: {emb or 'not named in the bundle metadata; output 1 taken'}")
    print(f"cpu:       {machine()['cpu']}")
    print(f"runs:      {args.runs} timed invokes per interpreter, {args.instances} interpreters per variant, "
          f"alternating, after {args.warmup} warm-up each")
    print()
    print(f"{'threads':>7}  {'with emb (ms)':>13}  {'without (ms)':>12}  {'ratio':>7}  {'paired diff (ms)':>16}  "
          f"{'cost':>8}  {'p10 cost':>8}  {'spread':>7}")  # fmt: skip
    for threads in args.threads:
        # Interpreters holding the same model differ by up to 15 % here, the early-made ones slower (memory
        # placement, whatever model they hold): a throwaway one is made first, then `--instances` of each
        # variant in the order A B B A A B ..., their samples pooled
        spare = runner(without, threads)
        kinds = [bool((i + i // 2) % 2 == 0) for i in range(2 * args.instances)]
        runners = [runner(with_emb if k else without, threads) for k in kinds]
        assert [n for _, n in runners] == [len(names) if k else 1 for k in kinds]
        times: list[list[float]] = [[] for _ in kinds]
        for _ in range(args.warmup):
            for r, _ in runners:
                r()
        for i in range(args.runs):
            for j in range(len(kinds)):  # who goes first rotates every round
                k = (i + j) % len(kinds)
                times[k].append(runners[k][0]())
        del spare
        ta = [x for k, t in zip(kinds, times, strict=True) if k for x in t]
        tb = [x for k, t in zip(kinds, times, strict=True) if not k for x in t]
        ma, mb = statistics.median(ta), statistics.median(tb)
        pa, pb = float(np.percentile(ta, 10)), float(np.percentile(tb, 10))
        diff = statistics.median(x - y for x, y in zip(ta, tb, strict=True))
        each = [statistics.median(t) for t in times]
        spread = 100.0 * (max(each) / min(each) - 1.0)
        print(
            f"{threads:>7}  {ma:>13.3f}  {mb:>12.3f}  {ma / mb:>7.4f}  {diff:>+16.4f}  "
            f"{100.0 * (ma / mb - 1.0):>+7.2f}%  {100.0 * (pa / pb - 1.0):>+7.2f}%  {spread:>6.2f}%"
        )
    print("\ncost: with / without - 1 (medians of instances x runs invokes each; p10: 10th percentiles, less hit\n"
          "by other work on the machine); spread: slowest / fastest of the interpreters' medians - 1, the noise floor")
    return 0


if __name__ == "__main__":
    sys.exit(main())
