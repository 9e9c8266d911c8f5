"""The ResNet stem under XNNPACK INT8: 7x7/2 convolution on 3 channels vs its space-to-depth twin.

    .venv/bin/python bench/stem_space_to_depth.py        # needs TensorFlow (the convert extra)
    .venv/bin/python bench/stem_space_to_depth.py --models s2d/m_int8.tflite plain/m_int8.tflite

The second form times two converted bundles (`edge-resnet convert` with and without
--no-stem-rewrite) interleaved at 1 and 2 threads and prints each one's report numbers; the
ResNet-50 result and the commands are in bench/results/stem_rewrite.md.

XNNPACK's int8 convolution kernels on x86 work on input channels in groups of 8, so a 3-channel
stem convolution does ~2.7x the useful work. The same convolution rewritten as
SpaceToDepth(2) -> Conv 4x4/1 on 12 channels (weights zero-padded to 8x8 and rearranged) is
mathematically identical (checked here in float) and keeps XNNPACK's kernels busy. Both are built
as full-int8 TFLite models with TensorFlow's converter and timed interleaved at 1 and 2 threads.
The converter now does this rewrite on the ONNX graph (convert/stem.py).
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge_resnet.bench import delegation
from edge_resnet.bench.measure import Contender, measure_interleaved
from edge_resnet.engine import Engine


def build(out: Path) -> dict[str, Path]:
    import tensorflow as tf

    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.1, (7, 7, 3, 64)).astype(np.float32)
    w8 = np.zeros((8, 8, 3, 64), np.float32)
    w8[:7, :7] = w
    w4 = w8.reshape(4, 2, 4, 2, 3, 64).transpose(0, 2, 1, 3, 4, 5).reshape(4, 4, 12, 64)

    x = tf.keras.Input((230, 230, 3), batch_size=1)  # 224 + the stem's padding of 3
    direct = tf.keras.Model(x, tf.keras.layers.Conv2D(64, 7, strides=2, name="c")(x))
    direct.get_layer("c").set_weights([w, np.zeros(64, np.float32)])
    s2d = tf.keras.layers.Lambda(lambda t: tf.nn.space_to_depth(t, 2))(x)
    twin = tf.keras.Model(x, tf.keras.layers.Conv2D(64, 4, strides=1, name="c")(s2d))
    twin.get_layer("c").set_weights([w4, np.zeros(64, np.float32)])
    probe = rng.uniform(-2, 2, (1, 230, 230, 3)).astype(np.float32)
    print(f"float max |direct - space_to_depth| = {float(np.abs(direct(probe) - twin(probe)).max()):.2e}")

    def representative() -> object:
        for _ in range(20):
            yield [rng.uniform(-2, 2, (1, 230, 230, 3)).astype(np.float32)]

    paths = {}
    for name, model in (("conv7x7s2_c3", direct), ("space_to_depth+conv4x4_c12", twin)):
        c = tf.lite.TFLiteConverter.from_keras_model(model)
        c.optimizations = [tf.lite.Optimize.DEFAULT]
        c.representative_dataset = representative
        c.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        c.inference_input_type = c.inference_output_type = tf.int8
        paths[name] = out / f"{name}.tflite"
        paths[name].write_bytes(c.convert())
    return paths


def compare_bundles(paths: list[Path], runs: int) -> None:
    """Two (or more) converted bundles: report numbers, delegation, then interleaved invoke latency."""
    contenders = []
    names = []
    for p in paths:
        rep_path = p.with_name(p.name.removesuffix(".tflite") + ".report.json")
        rep = json.loads(rep_path.read_text()) if rep_path.is_file() else {}
        engine = Engine.load(p, threads=1)
        meta = engine.model.meta
        applied = bool(meta and meta.source.get("stem_rewrite", {}).get("applied"))
        name = f"{'s2d-stem' if applied else 'plain-stem'}:{p.parent.name}"
        names.append(name)
        ev = rep.get("evaluation", {})
        d = delegation(engine)
        print(
            f"{name}: stem rewrite {applied}, agreement {ev.get('top1_agreement_pct')}% on {ev.get('images')} images, "
            f"SQNR {ev.get('logit_sqnr_db')} dB, fp32 tflite vs onnx {rep.get('float_tflite_vs_onnx_max_abs_diff')}, "
            f"quantization {rep.get('source', {}).get('quantization', {}).get('method')}, "
            f"outside XNNPACK {[o['op'] for o in d['outside']] or 'none'}"
        )
        for t in (1, 2):
            e = Engine.load(p, threads=t)
            x = np.random.default_rng(0).integers(0, 256, e.input.shape).astype(e.input.dtype)
            contenders.append(Contender(name, t, functools.partial(e.invoke, x), 0.0, 0.0, 0.0))
    measure_interleaved(contenders, runs, 5, 10)
    med = {c.key: float(np.median(c.samples_ms)) for c in contenders}
    for c in contenders:
        print(f"{c.key:40s} p50 {med[c.key]:7.2f} ms   min {min(c.samples_ms):7.2f} ms")
    for t in (1, 2):
        base = med[f"{names[-1]}@{t}"]
        for n in names[:-1]:
            print(f"@{t} thread(s): {n} vs {names[-1]}: x{base / med[f'{n}@{t}']:.2f} faster")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=Path, nargs="+", help="converted bundles to compare (baseline last)")
    ap.add_argument("--runs", type=int, default=100, help="timed invokes per model and thread count")
    args = ap.parse_args()
    if args.models:
        compare_bundles(args.models, args.runs)
        return 0
    paths = build(Path(tempfile.mkdtemp(prefix="stem_")))
    contenders = []
    for name, p in paths.items():
        d = delegation(Engine.load(p, threads=1))
        print(f"{name}: ops {d['op_counts']}, outside XNNPACK: {d['outside'] or 'none'}")
        for t in (1, 2):
            e = Engine.load(p, threads=t)
            x = np.zeros(e.input.shape, e.input.dtype)
            contenders.append(Contender(name, t, functools.partial(e.invoke, x), 0.0, 0.0, 0.0))
    measure_interleaved(contenders, 150, 5, 10)
    med = {c.key: float(np.median(c.samples_ms)) for c in contenders}
    for c in contenders:
        print(f"{c.key:34s} p50 {med[c.key]:7.2f} ms   min {min(c.samples_ms):7.2f} ms")
    for t in (1, 2):
        a, b = med[f"conv7x7s2_c3@{t}"], med[f"space_to_depth+conv4x4_c12@{t}"]
        print(f"@{t} thread(s): space-to-depth stem is x{a / b:.2f} faster")
    return 0


if __name__ == "__main__":
    sys.exit(main())
