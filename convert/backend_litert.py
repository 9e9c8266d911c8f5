"""The conversion path without TensorFlow: onnx2tf 2.x flatbuffer_direct + ai-edge-quantizer, our ranges.

onnx2tf 2.x writes the float TFLite flatbuffer itself (no TensorFlow graph in between). We run that
float model in LiteRT with every intermediate tensor kept, over the calibration images: the min/max of
each activation tensor and, for compute outputs, a sample of its values for the MSE range search
(`ranges.mse_range`, the same choice the TensorFlow path makes). ai-edge-quantizer's static
int8-weights / int8-activations recipe then writes the full-integer model from exactly those ranges
(its own calibration is replaced, not used), the pixel input pinned to 0..255 (int8, scale 1, zero
point -128: every camera byte exactly; `uint8` adds one QUANTIZE op in front for a uint8 input). Bias
correction (`bias_correction.correct`) runs on the result as on the TensorFlow path's, and the best
candidate by output SQNR against the float model is kept.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import onnx

from edge_resnet.errors import DependencyError, ModelError

from . import onnx_model, ranges, tflite_io
from .offline import offline
from .onnx_model import PIXEL_INPUT, OnnxInfo
from .progress import Progress
from .quantize import Quantized, RangeMethod, _Stages, choose, run_onnx2tf, scores_first

log = logging.getLogger(__name__)

InputType = Literal["int8", "uint8"]
NAME = "litert"
_PIXEL_QSV = (0.0, 255.0)


def available() -> str | None:
    """None when this path can run here, else why not (one line, with the fix)."""
    try:
        from importlib.metadata import PackageNotFoundError, version

        major = int(version("onnx2tf").split(".")[0])
    except (PackageNotFoundError, ValueError):
        return 'onnx2tf is not installed: pip install "edge-resnet[convert]" (Python >= 3.12)'
    if major < 2:
        return (f"onnx2tf {version('onnx2tf')} has no direct flatbuffer output; "
                "the TensorFlow-free path needs onnx2tf 2.x (Python >= 3.12)")
    try:
        import ai_edge_quantizer  # noqa: F401
    except ImportError:
        return 'ai-edge-quantizer is not installed: pip install "edge-resnet[convert]" (Python >= 3.12)'
    return None


@contextlib.contextmanager
def _venv_bin_on_path() -> Iterator[None]:
    """onnx2tf runs `onnxsim` as a command: the interpreter's own bin folder must be on PATH."""
    old = os.environ.get("PATH", "")
    os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), old])
    try:
        yield
    finally:
        os.environ["PATH"] = old


def build_float(prepared: onnx.ModelProto, info: OnnxInfo, workdir: Path, images: npt.NDArray[np.uint8]) -> bytes:
    """onnx2tf 2.x on the pixel-input model: the float32 NHWC TFLite flatbuffer, offline."""
    try:
        import onnx2tf
    except ImportError:
        raise DependencyError('conversion needs the convert extra: pip install "edge-resnet[convert]"') from None

    nhwc = [PIXEL_INPUT] if info.layout == "NHWC" else None
    out = workdir / "tflite"
    seconds = run_onnx2tf(
        onnx2tf.convert, prepared, info, workdir, images, _venv_bin_on_path(), "see its messages with -v",
        output_folder_path=str(out),
        tflite_backend="flatbuffer_direct",
        keep_nwc_or_nhwc_or_ndhwc_input_names=nhwc,
        keep_shape_absolutely_input_names=nhwc,
    )
    path = out / "model_float32.tflite"
    if not path.is_file():
        raise ModelError(f"onnx2tf wrote no float TFLite model for {info.path.name}; run with -v to see why")
    log.info("onnx2tf float model built in %.1f s", seconds)
    return path.read_bytes()


class Statistics:
    """Per activation tensor of the float model: min/max over all calibration images and, for the
    outputs of compute ops, a sample of values for the MSE range search."""

    def __init__(self, float_model: bytes, images: npt.NDArray[np.uint8]) -> None:
        model = tflite_io.read(float_model)
        g = model.subgraphs[0]
        names = tflite_io.opcode_names(model)
        self.input_names = {tflite_io.tensor_name(model, int(i)) for i in g.inputs}
        self.output_names = {tflite_io.tensor_name(model, int(i)) for i in g.outputs}
        acts: dict[int, str] = {}
        refined: set[int] = set()
        for op in g.operators:
            for i in op.outputs:
                if g.tensors[i].type == 0:  # FLOAT32
                    acts[int(i)] = tflite_io.tensor_name(model, int(i))
            if names[op.opcodeIndex] in ranges.REFINED_OPS:
                refined.add(int(op.outputs[0]))
        for i in g.inputs:
            acts[int(i)] = tflite_io.tensor_name(model, int(i))
        refined -= set(int(i) for i in g.inputs) | set(int(i) for i in g.outputs)
        self.refined = {acts[i] for i in refined if i in acts}
        self.lo: dict[str, float] = {}
        self.hi: dict[str, float] = {}
        self.samples: dict[str, list[npt.NDArray[np.float32]]] = {acts[i]: [] for i in refined if i in acts}
        it = tflite_io.debug_interpreter(float_model)
        # the interpreter's tensor indices are the flatbuffer's for the primary subgraph
        per_image = max(64, ranges._SAMPLE_BUDGET // max(1, min(len(images), ranges.MAX_IMAGES)))
        rng = np.random.default_rng(0)
        for n, x in enumerate(images):
            tflite_io.run(it, x)
            for i, name in acts.items():
                a = it.get_tensor(i)
                lo, hi = float(a.min()), float(a.max())
                self.lo[name] = min(lo, self.lo.get(name, lo))
                self.hi[name] = max(hi, self.hi.get(name, hi))
                if n < ranges.MAX_IMAGES and name in self.samples:
                    flat = a.reshape(-1)
                    self.samples[name].append(
                        flat[rng.integers(0, flat.size, per_image)] if flat.size > per_image else flat.copy()
                    )
        self.images = len(images)

    def ranges(self, method: str) -> tuple[dict[str, tuple[float, float]], dict[str, Any]]:
        """Activation ranges by `method` ("minmax" or "mse"); the pixel input is always exactly 0..255."""
        if method not in ("minmax", "mse"):
            raise ValueError(f"unknown range method {method!r}")
        out = {name: (self.lo[name], self.hi[name]) for name in self.lo}
        for name in self.input_names:
            out[name] = _PIXEL_QSV
        stats: dict[str, Any] = {"method": method, "tensors": 0, "clipped": 0}
        if method == "mse":
            clipped = 0
            for name in sorted(self.refined):
                lo, hi = out[name]
                if not hi > lo or not self.samples.get(name):
                    continue
                nlo, nhi = ranges.mse_range(np.concatenate(self.samples[name]), lo, hi)
                clipped += (nlo, nhi) != (lo, hi)
                out[name] = (nlo, nhi)
            stats.update(tensors=len(self.refined), clipped=clipped, images=min(self.images, ranges.MAX_IMAGES))
            log.info("MSE ranges: %d of %d activation tensors clipped", clipped, len(self.refined))
        return out, stats


def for_int8(float_model: bytes, stats: Statistics) -> tuple[bytes, dict[str, str], int]:
    """The float model as the quantizer should see it: onnx2tf writes MaxPool's padding as PADV2 with
    the float minimum (-3.4e38), which int8 cannot hold. When the pooled tensor is never negative (a
    ReLU output: every ResNet's stem), padding with 0 gives the same maxima, so PADV2 becomes a plain
    PAD (int8 pads with the zero point, TFLite's converter does the same). Returns the model, the
    tensors whose range must be their input's ({output: input}), and how many ops were rewritten."""
    from ai_edge_litert import schema_py_generated as schema

    m = tflite_io.read(float_model)
    g = m.subgraphs[0]
    names = tflite_io.opcode_names(m)
    ties: dict[str, str] = {}
    pad_code = next((i for i, n in enumerate(names) if n == "PAD"), None)
    for op in g.operators:
        if names[op.opcodeIndex] != "PADV2" or len(op.inputs) < 3:
            continue
        value = tflite_io.buffer_array(m, int(op.inputs[2]), np.float32).reshape(-1)
        src = tflite_io.tensor_name(m, int(op.inputs[0]))
        dst = tflite_io.tensor_name(m, int(op.outputs[0]))
        if value.size != 1 or value[0] > -1e30:
            continue
        if stats.lo.get(src, -1.0) < 0.0:
            raise ModelError(
                f"{src!r} is max-pooled with -inf padding but can be negative ({stats.lo.get(src)}); int8 cannot "
                "hold -inf: convert this model with the TensorFlow path (--backend tf, Python 3.11)"
            )
        if pad_code is None:
            oc = schema.OperatorCodeT()
            oc.builtinCode = oc.deprecatedBuiltinCode = schema.BuiltinOperator.PAD
            oc.version = 1
            m.operatorCodes.append(oc)
            pad_code = len(m.operatorCodes) - 1
        op.opcodeIndex = pad_code
        dropped = int(op.inputs[2])
        op.inputs = list(op.inputs[:2])
        op.builtinOptionsType = schema.BuiltinOptions.PadOptions
        op.builtinOptions = schema.PadOptionsT()
        ties[dst] = src
        _drop_unused_tensor(m, g, dropped)
    return (tflite_io.write(m) if ties else float_model), ties, len(ties)


def _drop_unused_tensor(m: Any, g: Any, index: int) -> None:
    """Remove tensor `index` when nothing refers to it any more (the PADV2 value), renumbering the rest,
    so the int8 model holds no stray float tensor."""
    used = {int(i) for op in g.operators for i in [*op.inputs, *op.outputs]} | {int(i) for i in g.inputs}
    if index in used or index in {int(i) for i in g.outputs}:
        return
    del g.tensors[index]

    def shift(ids: Any) -> list[int]:
        return [int(i) - 1 if int(i) > index else int(i) for i in ids]

    for op in g.operators:
        op.inputs, op.outputs = shift(op.inputs), shift(op.outputs)
    g.inputs, g.outputs = shift(g.inputs), shift(g.outputs)
    for sd in m.signatureDefs or []:
        for tm in [*(sd.inputs or []), *(sd.outputs or [])]:
            if tm.tensorIndex > index:
                tm.tensorIndex -= 1


def to_int8(float_model: bytes, act_ranges: dict[str, tuple[float, float]], images: npt.NDArray[np.uint8]) -> bytes:
    """Full-integer model from ai-edge-quantizer with our activation ranges in place of its calibration."""
    return to_int8_counted(float_model, act_ranges, images)[0]


def to_int8_counted(
    float_model: bytes, act_ranges: dict[str, tuple[float, float]], images: npt.NDArray[np.uint8]
) -> tuple[bytes, int]:
    """`to_int8`, and how many zero-weight channels `fix_dead_channels` repaired (said once per conversion
    by `quantize`, not once per range candidate)."""
    from ai_edge_quantizer import quantizer, recipe

    q = quantizer.Quantizer(bytearray(float_model), recipe.static_wi8_ai8())
    it = tflite_io.debug_interpreter(float_model)
    signatures = it.get_signature_list()
    if len(signatures) != 1:
        raise ModelError(f"the float model has {len(signatures)} signatures; expected one (onnx2tf's serving_default)")
    key, sig = next(iter(signatures.items()))
    in_name = sig["inputs"][0]
    # one image through its calibrator gives the statistics structure (which tensors, their shapes);
    # every activation's min/max is then replaced by ours
    qsvs: dict[str, Any] = q.calibrate({key: [{in_name: images[0][np.newaxis].astype(np.float32)}]})
    replaced = 0
    for name, qsv in qsvs.items():
        if name not in act_ranges or "min" not in qsv:
            continue
        shape = np.shape(qsv["min"])
        if int(np.prod(shape)) != 1:  # per-channel statistics: constants, not activations
            continue
        lo, hi = act_ranges[name]
        qsv["min"] = np.full(shape, lo, np.float32)
        qsv["max"] = np.full(shape, hi, np.float32)
        replaced += 1
    missing = [n for n in act_ranges if n not in qsvs]
    if missing:
        log.debug("ranges for %d tensors the quantizer does not quantize (e.g. %s)", len(missing), missing[0])
    log.debug("ai-edge-quantizer: %d activation ranges from our statistics", replaced)
    with offline():
        result = q.quantize(qsvs)
    model = result.quantized_model
    if model is None:
        raise ModelError("ai-edge-quantizer produced no model; run with -v to see its messages")
    fixed, count = fix_dead_channels(bytes(model), float_model)
    return set_op_versions(fixed), count


_LAYERS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")
_BIAS_BITS = 20  # |int32 bias| of a repaired channel stays below 2**20: fine steps, far from overflow


def fix_dead_channels(int8_model: bytes, float_model: bytes) -> tuple[bytes, int]:
    """Channels whose float weights are all zero but whose bias is not (a pruned or folded channel:
    MobileNet v2 has 11) get a weight scale of ~1e-12 from the quantizer, so their bias, quantized
    with input scale x weight scale, saturates int32 and the channel outputs garbage. Their weights
    are zero whatever the scale, so give them a scale that makes the bias fit: the output is then
    the bias, as in the float model. Returns the model and the number of channels repaired."""
    fm = tflite_io.read(float_model)
    fnames = tflite_io.opcode_names(fm)
    fg = fm.subgraphs[0]
    float_bias: dict[str, npt.NDArray[np.float32]] = {}
    for op in fg.operators:
        if fnames[op.opcodeIndex] in _LAYERS and len(op.inputs) > 2 and op.inputs[2] >= 0:
            b = tflite_io.buffer_array(fm, int(op.inputs[2]), np.float32)
            if b.size:
                float_bias[tflite_io.tensor_name(fm, int(op.outputs[0]))] = b
    m = tflite_io.read(int8_model)
    g = m.subgraphs[0]
    names = tflite_io.opcode_names(m)
    fixed = 0
    for op in g.operators:
        kind = names[op.opcodeIndex]
        if kind not in _LAYERS or len(op.inputs) < 3 or op.inputs[2] < 0:
            continue
        bias_f = float_bias.get(tflite_io.tensor_name(m, int(op.outputs[0])))
        wt, bt, xt = g.tensors[op.inputs[1]], g.tensors[op.inputs[2]], g.tensors[op.inputs[0]]
        if bias_f is None or wt.quantization is None or bt.quantization is None or xt.quantization is None:
            continue
        w = tflite_io.buffer_array(m, int(op.inputs[1]), np.int8)
        axis = 3 if kind == "DEPTHWISE_CONV_2D" else 0
        dead = ~np.any(np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1) != 0, axis=1)
        w_scale = np.asarray(wt.quantization.scale, np.float64)
        if not dead.any() or w_scale.size != dead.size:
            continue
        s_in = float(xt.quantization.scale[0])
        bias = tflite_io.buffer_array(m, int(op.inputs[2]), np.int32).astype(np.int64)
        for c in np.flatnonzero(dead):
            new = max(abs(float(bias_f[c])), 1e-6) / (s_in * 2**_BIAS_BITS)
            w_scale[c] = new
            bias[c] = int(np.rint(float(bias_f[c]) / (s_in * new)))
            fixed += 1
        wt.quantization.scale = w_scale.astype(np.float32).tolist()
        bt.quantization.scale = (w_scale * s_in).astype(np.float32).tolist()
        tflite_io.set_buffer(m, int(op.inputs[2]), bias.astype(np.int32))
    return tflite_io.write(m), fixed


def set_op_versions(int8_model: bytes) -> bytes:
    """ai-edge-quantizer keeps the float model's operator versions (all 1); int8 kernels have their own
    (CONV_2D per-channel int8 is version 3). Write the versions TensorFlow's converter writes, which
    the Edge TPU compiler reads to know an op is quantized (`edgetpu.INT8_OP_VERSIONS`)."""
    from .edgetpu import INT8_OP_VERSIONS

    m = tflite_io.read(int8_model)
    for name, code in zip(tflite_io.opcode_names(m), m.operatorCodes, strict=True):
        if name in INT8_OP_VERSIONS:
            code.version = max(int(code.version), INT8_OP_VERSIONS[name])
    return tflite_io.write(m)


def with_uint8_input(int8_model: bytes) -> bytes:
    """Give an int8-pixel model (scale 1, zero point -128) a uint8 pixel input via one QUANTIZE op,
    as TFLite's own converter does: the device then copies camera bytes as they are."""
    from ai_edge_litert import schema_py_generated as schema

    m = tflite_io.read(int8_model)
    g = m.subgraphs[0]
    if len(g.inputs) != 1:
        raise ModelError("expected one input to give a uint8 input to")
    old = g.tensors[g.inputs[0]]
    q = old.quantization
    if old.type != schema.TensorType.INT8 or q is None or list(q.scale) != [1.0] or list(q.zeroPoint) != [-128]:
        raise ModelError("the model's input is not int8 pixels (scale 1, zero point -128); cannot add a uint8 input")
    t = schema.TensorT()
    t.shape = list(old.shape)
    t.shapeSignature = None if old.shapeSignature is None else list(old.shapeSignature)
    t.type = schema.TensorType.UINT8
    name = old.name.decode() if isinstance(old.name, bytes) else str(old.name)
    t.name = name
    old.name = f"{name}_int8"
    buf = schema.BufferT()
    m.buffers.append(buf)
    t.buffer = len(m.buffers) - 1
    qp = schema.QuantizationParametersT()
    qp.scale = [1.0]
    qp.zeroPoint = [0]
    t.quantization = qp
    g.tensors.append(t)
    new_idx = len(g.tensors) - 1
    code = next(
        (i for i, c in enumerate(m.operatorCodes) if tflite_io._fu().get_builtin_code_from_operator_code(c)
         == schema.BuiltinOperator.QUANTIZE),
        None,
    )
    if code is None:
        oc = schema.OperatorCodeT()
        oc.builtinCode = schema.BuiltinOperator.QUANTIZE
        oc.deprecatedBuiltinCode = schema.BuiltinOperator.QUANTIZE
        oc.version = 1
        m.operatorCodes.append(oc)
        code = len(m.operatorCodes) - 1
    op = schema.OperatorT()
    op.opcodeIndex = code
    op.inputs = [new_idx]
    op.outputs = [int(g.inputs[0])]
    g.operators.insert(0, op)
    g.inputs = [new_idx]
    for sd in m.signatureDefs or []:
        for tm in sd.inputs or []:
            if tm.tensorIndex == op.outputs[0]:
                tm.tensorIndex = new_idx
    return tflite_io.write(m)


def quantize(
    prepared: onnx.ModelProto,
    info: OnnxInfo,
    images: npt.NDArray[np.uint8],
    workdir: Path,
    range_method: RangeMethod = "auto",
    correct_bias: bool = True,
    input_type: InputType = "int8",
) -> Quantized:
    """Float build, statistics, then MSE / min-max ranges and bias correction, the best by output SQNR."""
    methods: tuple[str, ...] = ("mse", "minmax") if range_method == "auto" else (range_method,)
    with Progress("converting", 2 + len(methods) + int(correct_bias), unit="stage") as bar:
        stage = _Stages(bar)
        with stage("onnx2tf float model", "onnx2tf_s"):
            # an embedding output as [1, D] (see with_flat_extra_outputs), and behind the class scores
            flat = onnx_model.with_flat_extra_outputs(prepared)
            float_tflite = scores_first(build_float(flat, info, workdir, images), info)
        with stage("activation statistics", "calibrate_s"):
            stats = Statistics(float_tflite, images)
            to_quantize, ties, padv2 = for_int8(float_tflite, stats)

        repaired: dict[str, int] = {}  # per range method: the same weights, so the same channels

        def int8(method: str) -> tuple[bytes, dict[str, Any], bytes]:
            act, range_stats = stats.ranges(method)
            act.update({dst: act[src] for dst, src in ties.items()})
            model, repaired[method] = to_int8_counted(to_quantize, act, images)
            return scores_first(model, info), range_stats, float_tflite

        choice = choose(float_tflite, images, methods, int8, correct_bias, stage)
    best = choice.best
    dead = repaired.get(best.ranges, 0)
    if dead:
        log.info("quantizer fix-up: %d zero-weight channels given a scale that holds their bias", dead)
    model = with_uint8_input(best.model) if input_type == "uint8" else best.model
    details = {
        "backend": "onnx2tf flatbuffer_direct + ai-edge-quantizer (no TensorFlow)",
        **choice.report(log),
        "maxpool_padding": f"{padv2} PADV2(-inf) -> PAD(0) on non-negative inputs" if padv2 else "none rewritten",
        "zero_weight_channels_fixed": dead,
        "input": ("uint8 pixels (normalisation folded into the model)" if input_type == "uint8"
                  else "int8 pixels: scale 1, zero point -128 (normalisation folded into the model)"),
        "output": "int8",
        "timings_s": stage.timings_s(),
    }
    return Quantized(float_tflite, model, details)
