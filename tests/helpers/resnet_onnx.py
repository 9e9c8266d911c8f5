"""Model-zoo-shaped ONNX ResNets with random but sensibly scaled weights, built with onnx.helper.

Shapes follow the ONNX model zoo (MXNet Gluon exports, old opsets, NCHW):
- v1: post-activation, conv -> BN -> ReLU, bottleneck stride on the first 1x1 (Gluon ResNetV1);
- v2: pre-activation, with a BatchNormalization on the raw input (Gluon ResNetV2);
- style="torchvision": what `torch.onnx.export` writes for torchvision ResNets in eval mode:
  BatchNorm folded into Conv biases, stride on the 3x3, opset 13 and a dynamic batch dimension.

Weights use He initialisation and residual branches are scaled by 1.2/sqrt(blocks), so activations
stay in a realistic range even at depth 152 (a random deep ResNet otherwise explodes, which would
test nothing a real model does). No torch needed.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper

BASIC = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3]}
BOTTLENECK = {50: [3, 4, 6, 3], 101: [3, 4, 23, 3], 152: [3, 8, 36, 3]}
DEPTHS = (18, 34, 50, 101, 152)
Style = Literal["zoo", "torchvision"]


class _Builder:
    def __init__(self, seed: int, fold_bn: bool) -> None:
        self.rng = np.random.default_rng(seed)
        self.fold_bn = fold_bn
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.n = 0

    def name(self, kind: str) -> str:
        self.n += 1
        return f"{kind}{self.n}"

    def const(self, arr: npt.NDArray[np.floating[Any]], kind: str) -> str:
        nm = self.name(kind)
        self.inits.append(numpy_helper.from_array(arr.astype(np.float32), nm))
        return nm

    def node(self, op: str, inputs: list[str], **attrs: Any) -> str:  # ONNX attributes: ints, floats, lists
        out = self.name(op.lower() + "_out")
        self.nodes.append(helper.make_node(op, inputs, [out], name=self.name(op.lower()), **attrs))
        return out

    def bn_params(self, c: int, gamma: float = 1.0) -> tuple[npt.NDArray[np.float64], ...]:
        r = self.rng
        scale = gamma * r.uniform(0.7, 1.3, c)
        bias = r.normal(0.0, 0.1, c)
        mean = r.normal(0.0, 0.1, c)
        var = r.uniform(0.6, 1.4, c)
        return scale, bias, mean, var

    def bn(self, x: str, c: int, gamma: float = 1.0) -> str:
        s, b, m, v = self.bn_params(c, gamma)
        ins = [x, self.const(s, "bn_s"), self.const(b, "bn_b"), self.const(m, "bn_m"), self.const(v, "bn_v")]
        return self.node("BatchNormalization", ins, epsilon=1e-5)

    def conv(self, x: str, cin: int, cout: int, k: int, stride: int, bn_gamma: float | None = 1.0) -> str:
        """Conv (+ BN unless folded, as torch exports it); bn_gamma None means no BN at all (v2 convs)."""
        w = self.rng.normal(0.0, np.sqrt(2.0 / (cin * k * k)), (cout, cin, k, k))
        attrs = {"kernel_shape": [k, k], "strides": [stride, stride], "pads": [k // 2] * 4}
        if bn_gamma is None:
            return self.node("Conv", [x, self.const(w, "w")], **attrs)
        if self.fold_bn:
            s, b, m, v = self.bn_params(cout, bn_gamma)
            f = s / np.sqrt(v + 1e-5)
            return self.node(
                "Conv", [x, self.const(w * f[:, None, None, None], "w"), self.const(b - m * f, "b")], **attrs
            )
        return self.bn(self.node("Conv", [x, self.const(w, "w")], **attrs), cout, bn_gamma)

    def relu(self, x: str) -> str:
        return self.node("Relu", [x])


def _v1_block(
    b: _Builder, x: str, cin: int, width: int, stride: int, bottleneck: bool, style: Style, gain: float
) -> tuple[str, int]:
    cout = width * 4 if bottleneck else width
    if bottleneck:
        s1, s3 = (1, stride) if style == "torchvision" else (stride, 1)
        y = b.relu(b.conv(x, cin, width, 1, s1))
        y = b.relu(b.conv(y, width, width, 3, s3))
        y = b.conv(y, width, cout, 1, 1, bn_gamma=gain)
    else:
        y = b.relu(b.conv(x, cin, width, 3, stride))
        y = b.conv(y, width, cout, 3, 1, bn_gamma=gain)
    short = x if stride == 1 and cin == cout else b.conv(x, cin, cout, 1, stride)
    return b.relu(b.node("Add", [y, short])), cout


def _v2_block(
    b: _Builder, x: str, cin: int, width: int, stride: int, bottleneck: bool, gain: float
) -> tuple[str, int]:
    cout = width * 4 if bottleneck else width
    pre = b.relu(b.bn(x, cin))
    short = x if stride == 1 and cin == cout else b.conv(pre, cin, cout, 1, stride, bn_gamma=None)
    if bottleneck:
        y = b.conv(pre, cin, width, 1, 1, bn_gamma=None)
        y = b.conv(b.relu(b.bn(y, width)), width, width, 3, stride, bn_gamma=None)
        y = b.conv(b.relu(b.bn(y, width)), width, cout, 1, 1, bn_gamma=None)
    else:
        y = b.conv(pre, cin, width, 3, stride, bn_gamma=None)
        y = b.conv(b.relu(b.bn(y, width)), width, cout, 3, 1, bn_gamma=None)
    y = b.node("Mul", [y, b.const(np.array(gain), "branch_gain")])
    return b.node("Add", [y, short]), cout


def make_resnet(
    depth: int,
    version: int = 1,
    input_size: int = 224,
    num_classes: int = 1000,
    dynamic_batch: bool = False,
    seed: int = 0,
    opset: int | None = None,
    style: Style = "zoo",
) -> onnx.ModelProto:
    """A ResNet-`depth` (18/34/50/101/152) v1 or v2 image classifier taking NCHW float input.

    Input is ImageNet-normalised RGB (preset "imagenet"); output `[N, num_classes]` logits.
    """
    if depth not in DEPTHS:
        raise ValueError(f"depth must be one of {DEPTHS}, got {depth}")
    if version not in (1, 2):
        raise ValueError(f"version must be 1 or 2, got {version}")
    if style == "torchvision" and version != 1:
        raise ValueError("torchvision ResNets are v1")
    bottleneck = depth in BOTTLENECK
    layers = (BOTTLENECK if bottleneck else BASIC)[depth]
    b = _Builder(seed, fold_bn=style == "torchvision")
    x = "data" if style == "zoo" else "input"
    h = x
    if version == 2:
        h = b.bn(h, 3)  # Gluon ResNetV2: BatchNorm on the raw input
    h = b.conv(h, 3, 64, 7, 2, bn_gamma=None if version == 2 else 1.0)
    h = b.relu(b.bn(h, 64)) if version == 2 else b.relu(h)
    h = b.node("MaxPool", [h], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    cin = 64
    gain = 1.2 / np.sqrt(sum(layers))  # residual branch scale: keeps depth-152 activations bounded
    for stage, blocks in enumerate(layers):
        width = 64 * 2**stage
        for i in range(blocks):
            stride = 2 if stage > 0 and i == 0 else 1
            if version == 1:
                h, cin = _v1_block(b, h, cin, width, stride, bottleneck, style, gain)
            else:
                h, cin = _v2_block(b, h, cin, width, stride, bottleneck, gain)
    if version == 2:
        h = b.relu(b.bn(h, cin))
    h = b.node("GlobalAveragePool", [h])
    h = b.node("Flatten", [h], axis=1)
    w = b.rng.normal(0.0, 2.0 / np.sqrt(cin), (num_classes, cin))
    fc_b = b.rng.normal(0.0, 0.1, num_classes)
    out_name = "resnetv1_dense0_fwd" if version == 1 else "resnetv2_dense0_fwd"
    if style == "torchvision":
        out_name = "output"
    b.nodes.append(
        helper.make_node("Gemm", [h, b.const(w, "fc_w"), b.const(fc_b, "fc_b")], [out_name], transB=1, name="fc")
    )
    batch: int | str = "batch_size" if dynamic_batch or style == "torchvision" else 1
    graph = helper.make_graph(
        b.nodes,
        f"resnet{depth}_v{version}",
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, [batch, 3, input_size, input_size])],
        [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, [batch, num_classes])],
        b.inits,
    )
    if opset is None:
        opset = 13 if style == "torchvision" else 8
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="edge-resnet-tests")
    model.ir_version = 7 if opset >= 13 else 4
    onnx.checker.check_model(model)
    return model
