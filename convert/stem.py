"""Space-to-depth stem: the ResNet 7x7/2 convolution on 3 channels as Pad -> SpaceToDepth(2) -> Conv 4x4/1.

XNNPACK's int8 convolution kernels work on input channels in groups, so a 3-channel convolution
wastes most of its multiply-accumulates; at 1 thread the stem is ~15% of a ResNet-50 INT8 invoke.
A stride-2 convolution with an odd kernel k equals, exactly, a stride-1 convolution with kernel
(k+1)/2 on the 2x2 space-to-depth of the (zero-padded) input: the kernel is zero-padded to k+1 and
its 2x2 phases become input channels (bench/stem_space_to_depth.py and bench/results/stem_rewrite.md
measure the gain).

The rewrite works on the ONNX graph before onnx2tf and before the input normalisation is folded in
(`onnx_model.with_pixel_input`), so the Pad sits exactly where the original convolution padded: on
its own input, in the normalised domain, with zeros. Channel order: ONNX SpaceToDepth puts input
channel c of 2x2 phase (dy, dx) at output channel (dy*2 + dx)*C + c, the same as TensorFlow's
space_to_depth in NHWC, which onnx2tf maps it to (tests/test_stem.py checks this numerically through
the whole conversion). Anything that is not such a stem is left unchanged, with the reason logged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .onnx_model import shorten

log = logging.getLogger(__name__)

BLOCK = 2
# A 3x3/2 stem (MobileNet) would become 2x2 on 12 channels: 48 multiply-accumulates per output for
# 27 useful ones, and such a stem is cheap already; the gain is measured for 7x7, assumed from 5x5.
MIN_KERNEL = 5
# Per-channel ops that may sit between the image input and the stem (ResNet v2's input BatchNorm).
_PASS_THROUGH = {"BatchNormalization"}


@dataclass
class StemRewrite:
    """The (possibly) rewritten model and what happened, for the conversion report."""

    model: onnx.ModelProto
    applied: bool
    reason: str
    details: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {"applied": self.applied, "reason": self.reason, **self.details}


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _opset(model: onnx.ModelProto) -> int:
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)


def _find_stem(g: onnx.GraphProto, input_name: str) -> tuple[int | None, str]:
    """Index of the stem Conv reached from the input through per-channel pass-through ops, or why not."""
    tensor = input_name
    path: list[str] = []
    for _ in range(8):
        users = [i for i, n in enumerate(g.node) if tensor in n.input]
        if len(users) != 1:
            return None, f"input {shorten(tensor)} feeds {len(users)} ops, not one stem convolution"
        node = g.node[users[0]]
        if node.op_type == "Conv" and node.input[0] == tensor:
            return users[0], " -> ".join([*path, "Conv"])
        if node.op_type not in _PASS_THROUGH or node.input[0] != tensor or len(node.output) != 1:
            return None, f"first op on the input is {' -> '.join([*path, node.op_type])}, not a Conv"
        path.append(node.op_type)
        tensor = node.output[0]
    return None, "no Conv within 8 ops of the input"


def rewrite(model: onnx.ModelProto, input_name: str, hw: tuple[int, int], layout: str = "NCHW") -> StemRewrite:
    """Copy of `model` with its stride-2 odd-kernel 3-channel stem as Pad -> SpaceToDepth(2) -> Conv.

    `hw` is the static input height and width (from onnx_model.inspect). Returns the original model
    object, unchanged, with `applied=False` and the reason when the graph has no such stem.
    """

    def skip(reason: str) -> StemRewrite:
        log.info("stem rewrite: not applied (%s)", reason)
        return StemRewrite(model, False, reason)

    if layout != "NCHW":
        return skip(f"input layout {layout}; the rewrite handles NCHW ONNX graphs")
    opset = _opset(model)
    if opset < 2:
        return skip(f"opset {opset} (Pad before opset 2 is not supported)")
    g = model.graph
    idx, path = _find_stem(g, input_name)
    if idx is None:
        return skip(path)
    conv = g.node[idx]
    a = _attrs(conv)
    inits = {t.name: t for t in g.initializer}
    if conv.input[1] not in inits:
        return skip(f"stem Conv {shorten(conv.name)} weights are not an initializer")
    w = numpy_helper.to_array(inits[conv.input[1]])
    if w.ndim != 4:
        return skip(f"stem Conv {shorten(conv.name)} is not 2-D")
    cout, cin, kh, kw = (int(d) for d in w.shape)
    k = kh
    strides = list(a.get("strides", [1, 1]))
    dilations = list(a.get("dilations", [1, 1]))
    auto_pad = a.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
    pads = list(a.get("pads", [0, 0, 0, 0]))
    if auto_pad == "VALID":
        pads = [0, 0, 0, 0]
    checks = [
        (cin == 3, f"{cin} input channels, not 3"),
        (kh == kw and k % 2 == 1 and k >= MIN_KERNEL, f"kernel {kh}x{kw}, not odd square >= {MIN_KERNEL}"),
        (strides == [BLOCK, BLOCK], f"strides {strides}, not [2, 2]"),
        (dilations == [1, 1], f"dilations {dilations}"),
        (int(a.get("group", 1)) == 1, f"group {a.get('group')}"),
        (auto_pad in ("NOTSET", "VALID"), f"auto_pad {auto_pad}"),
        (w.dtype == np.float32, f"weights are {w.dtype}"),
    ]
    for ok, why in checks:
        if not ok:
            return skip(f"stem Conv {shorten(conv.name)}: {why}")

    kk = (k + 1) // 2
    top, left, bottom, right = (int(p) for p in pads)
    h, wd = hw
    # An odd padded size gets one more zero row/column at the end: no output window reaches it.
    bottom += (h + top + bottom) % 2
    right += (wd + left + right) % 2
    w8 = np.zeros((cout, cin, 2 * kk, 2 * kk), np.float32)
    w8[:, :, :k, :k] = w
    # kernel row 2*i + dy, column 2*j + dx  ->  input channel (dy*2 + dx)*cin + c, tap (i, j)
    ws = w8.reshape(cout, cin, kk, BLOCK, kk, BLOCK).transpose(0, 3, 5, 1, 2, 4).reshape(cout, 4 * cin, kk, kk)

    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    conv = g.node[idx]
    base = conv.name or conv.output[0]
    w_name = f"{base}_s2d_weight"
    padded, s2d = f"{base}_s2d_padded", f"{base}_s2d_input"
    nodes: list[onnx.NodeProto] = []
    src = conv.input[0]
    pad_list = [0, 0, top, left, 0, 0, bottom, right]
    if any(pad_list):
        if opset >= 11:
            g.initializer.append(numpy_helper.from_array(np.asarray(pad_list, np.int64), f"{base}_s2d_pads"))
            nodes.append(helper.make_node("Pad", [src, f"{base}_s2d_pads"], [padded], name=f"{base}_s2d_pad"))
        else:
            nodes.append(
                helper.make_node("Pad", [src], [padded], name=f"{base}_s2d_pad", mode="constant", pads=pad_list)
            )
        src = padded
    nodes.append(helper.make_node("SpaceToDepth", [src], [s2d], name=f"{base}_s2d", blocksize=BLOCK))
    g.initializer.append(numpy_helper.from_array(ws, w_name))
    new_conv = helper.make_node(
        "Conv", [s2d, w_name, *conv.input[2:]], list(conv.output), name=conv.name,
        kernel_shape=[kk, kk], strides=[1, 1], pads=[0, 0, 0, 0], dilations=[1, 1], group=1,
    )
    old_w = conv.input[1]
    del g.node[idx]
    for n in reversed([*nodes, new_conv]):
        g.node.insert(idx, n)
    if not any(old_w in n.input for n in g.node):
        keep = [t for t in g.initializer if t.name != old_w]
        del g.initializer[:]
        g.initializer.extend(keep)
    details = {
        "conv": conv.name,
        "path": path,
        "kernel": [k, k],
        "as": f"Pad -> SpaceToDepth({BLOCK}) -> Conv {kk}x{kk}/1 on {4 * cin} channels",
        "pads": [top, left, bottom, right],
    }
    log.info("stem rewrite: %s %dx%d/2 on %d channels -> %s", path, k, k, cin, details["as"])
    return StemRewrite(m, True, "stride-2 odd-kernel convolution on 3 channels", details)
