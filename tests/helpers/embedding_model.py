"""A bundle with an embedding output made in seconds from the published MobileNet v2 (real weights):
its average-pool output (1,280 values) added as the flatbuffer's second output, metadata as
`convert` writes it. For the tests of `learn` and learned models; the converter's own embedding
output is tested on converted models (tests/test_convert_embedding.py)."""

from __future__ import annotations

from pathlib import Path

from edge_resnet.bundle import BundleMeta, write_bundle
from edge_resnet.classify import read_labels
from edge_resnet.prepspec import PRESETS

POOL = "MobilenetV2/Logits/AvgPool"


def with_output(flatbuffer: bytes, tensor: str) -> bytes:
    """The model with `tensor` appended to its outputs (the ops are untouched)."""
    from edge_resnet.convert import tflite_io

    m = tflite_io.read(flatbuffer)
    g = m.subgraphs[0]
    index = next(i for i in range(len(g.tensors)) if tflite_io.tensor_name(m, i) == tensor)
    g.outputs = [*list(g.outputs), index]
    return tflite_io.write(m)


def mobilenet_with_embedding(models_dir: Path, out: Path) -> Path:
    flat = with_output((models_dir / "mobilenet_v2_1.0_224_quant.tflite").read_bytes(), POOL)
    meta = BundleMeta(
        # what its uint8 input's quantization implies ([-1, 1]): camera bytes go in as they are
        preprocess=PRESETS["inception"],
        labels=read_labels(models_dir / "imagenet_labels_1001.txt"),
        label_offset=1,
        output_kind="probabilities",
        embedding={"output": POOL, "size": 1280, "onnx_tensor": "(published TFLite model)"},
    )
    return write_bundle(flat, meta, out)
