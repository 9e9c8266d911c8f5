"""The ResNet stem under XNNPACK INT8: 7x7/2 convolution on 3 channels vs its space-to-depth twin.

    .venv/bin/python bench/stem_space_to_depth.py        # needs TensorFlow (the convert extra)

XNNPACK's int8 convolution kernels on x86 work on input channels in groups of 8, so a 3-channel
stem convolution does ~2.7x the useful work. The same convolution rewritten as
SpaceToDepth(2) -> Conv 4x4/1 on 12 channels (weights zero-padded to 8x8 and rearranged) is
mathematically identical (checked here in float) and keeps XNNPACK's kernels busy. Both are built
as full-int8 TFLite models with TensorFlow's converter and timed interleaved at 1 and 2 threads.
A recommendation for the converter, measured; nothing in edge_resnet depends on this script.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge_resnet.bench import Contender, delegation, measure_interleaved
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


def main() -> int:
    paths = build(Path(tempfile.mkdtemp(prefix="stem_")))
    contenders = []
    for name, p in paths.items():
        d = delegation(Engine.load(p, threads=1))
        print(f"{name}: ops {d['op_counts']}, outside XNNPACK: {d['outside'] or 'none'}")
        for t in (1, 2):
            e = Engine.load(p, threads=t)
            x = np.zeros(e.input.shape, e.input.dtype)
            contenders.append(Contender(name, t, lambda e=e, x=x: e.invoke(x), 0.0, 0.0, 0.0))
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
