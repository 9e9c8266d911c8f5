"""The only module that imports a TFLite interpreter or loads a delegate.

Everything above it sees "a model that takes a tensor and returns scores". Interpreter packages
are tried in order ai_edge_litert, tflite_runtime, tensorflow.lite (set EDGE_RESNET_INTERPRETER
to force one); the Edge TPU is reached through `libedgetpu` as pycoral does.
"""

from __future__ import annotations

import ctypes
import importlib
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from .bundle import ModelFile, read_model
from .devices import DEVICES, Device, edgetpu_library
from .errors import DependencyError, EdgeTpuUnavailable, ModelError
from .nativelog import filtered_stderr
from .preprocess import TensorInfo

log = logging.getLogger(__name__)

EDGETPU_INSTALL_HINT = (
    "install the Edge TPU runtime (libedgetpu1-std from Coral's apt repository) and attach the "
    "accelerator, or run the CPU model"
)
_INTERPRETER_MODULES = {
    "ai_edge_litert": "ai_edge_litert.interpreter",
    "tflite_runtime": "tflite_runtime.interpreter",
    "tensorflow": "tensorflow.lite",
}

DelegateLoader = Callable[[str, dict[str, str]], Any]


@dataclass(frozen=True)
class Runtime:
    """An interpreter package: its name, version, Interpreter class and load_delegate function."""

    name: str
    version: str
    interpreter_cls: Any
    load_delegate: DelegateLoader


def find_runtime(prefer: str | None = None) -> Runtime:
    """Import the first available interpreter package; tensorflow only when nothing lighter exists."""
    order = list(_INTERPRETER_MODULES)
    prefer = prefer or os.environ.get("EDGE_RESNET_INTERPRETER") or None
    if prefer:
        if prefer not in _INTERPRETER_MODULES:
            raise DependencyError(f"EDGE_RESNET_INTERPRETER={prefer!r} is unknown; use one of {', '.join(order)}")
        order = [prefer]
    for name in order:
        try:
            if name == "tensorflow":  # `import tensorflow.lite` is the bare package; tf.lite holds the API
                lite = importlib.import_module("tensorflow").lite
                return Runtime(name, _version("tensorflow"), lite.Interpreter, lite.experimental.load_delegate)
            mod = importlib.import_module(_INTERPRETER_MODULES[name])
        except ImportError:
            continue
        except AttributeError as e:  # a TensorFlow whose tf.lite has gone (it is leaving TensorFlow)
            raise DependencyError(f"{name} has no TFLite interpreter ({e}); pip install ai-edge-litert") from None
        return Runtime(name, _version(name.replace("_", "-")), mod.Interpreter, mod.load_delegate)
    raise DependencyError(
        "no TFLite interpreter found: pip install ai-edge-litert (or tflite-runtime on 32-bit Raspberry Pi OS)"
    )


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "unknown"


def cpu_twin(path: Path) -> Path | None:
    """Coral naming: `x_edgetpu.tflite` has its CPU build beside it as `x.tflite`."""
    if path.stem.endswith("_edgetpu"):
        twin = path.with_name(path.stem[: -len("_edgetpu")] + path.suffix)
        return twin if twin.exists() else None
    return None


def edgetpu_twin(path: Path) -> Path | None:
    twin = path.with_name(path.stem + "_edgetpu" + path.suffix)
    return twin if twin.exists() else None


NO_EMBEDDING_HINT = (
    "convert the ONNX model again with this edge-resnet (`edge-resnet convert`), which writes bundles "
    "with the pooled features as a second output"
)


def _embedding_output(model: ModelFile, outputs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The output the bundle names as its embedding: by tensor name, else by size (a compiler may
    rename tensors); None for models without one."""
    spec = model.meta.embedding if model.meta is not None else None
    if not spec or len(outputs) < 2:
        return None
    by_name = [d for d in outputs if str(d["name"]) == str(spec.get("output"))]
    if by_name:
        return by_name[0]
    size = int(spec.get("size", -1))
    by_size = [d for d in outputs[1:] if int(np.prod(d["shape"])) == size]
    return by_size[0] if len(by_size) == 1 else None


def _tensor_info(d: dict[str, Any]) -> TensorInfo:
    q = d.get("quantization_parameters", {})
    scales = q.get("scales", np.zeros(0))
    zps = q.get("zero_points", np.zeros(0))
    if len(scales) > 1:
        raise ModelError(f"tensor {d['name']!r} is quantized per channel; a classifier input/output must not be")
    return TensorInfo(
        name=str(d["name"]),
        shape=tuple(int(s) for s in d["shape"]),
        dtype=np.dtype(d["dtype"]),
        scale=float(scales[0]) if len(scales) else 0.0,
        zero_point=int(zps[0]) if len(zps) else 0,
    )


class Engine:
    """One loaded, verified, warmed-up interpreter. Not thread-safe: one owner thread invokes it."""

    def __init__(
        self,
        model: ModelFile,
        interpreter: Any,
        runtime: Runtime,
        delegate: str,
        device: Literal["cpu", "edgetpu"],
        threads: int | None,
    ) -> None:
        self.model = model
        self.runtime = runtime
        self.delegate = delegate
        self.device = device
        self.threads = threads
        self._it = interpreter
        inputs = interpreter.get_input_details()
        outputs = interpreter.get_output_details()
        if len(inputs) != 1:
            raise ModelError(f"{model.path} has {len(inputs)} inputs; an image classifier has one")
        self._in_index = int(inputs[0]["index"])
        emb = _embedding_output(model, outputs)
        scores = next((d for d in outputs if d is not emb), outputs[0])
        self._out_index = int(scores["index"])
        self.input = _tensor_info(inputs[0])
        self.output = _tensor_info(scores)
        # the pooled features in front of the classifier (bundles from `convert`), read after invoke
        self.embedding: TensorInfo | None = _tensor_info(emb) if emb is not None else None
        self._emb_index = int(emb["index"]) if emb is not None else -1
        if len(self.input.shape) != 4 or 3 not in (self.input.shape[1], self.input.shape[3]):
            raise ModelError(
                f"{model.path} input shape {self.input.shape} is not a 3-channel image; "
                "edge-resnet needs an image classifier"
            )

    @classmethod
    def load(
        cls,
        model: str | os.PathLike[str] | ModelFile,
        device: Device = "cpu",
        threads: int | None = None,
        *,
        runtime: Runtime | None = None,
        delegate_loader: DelegateLoader | None = None,
        edgetpu_device: str | None = None,
        warm_up: bool = True,
    ) -> Engine:
        """Verify, load and warm up a model; every failure is a one-line EdgeResnetError.

        `delegate_loader` exists so tests can stand in for the Edge TPU, which cannot exist here.
        """
        if device not in DEVICES:
            raise ModelError(f"device {device!r} is unknown; use one of {', '.join(DEVICES)}")
        if threads is None:
            threads = usable_cores()
        mf = model if isinstance(model, ModelFile) else read_model(model)
        rt = runtime or find_runtime()
        loader = delegate_loader or _checked_loader(rt.load_delegate)

        if device == "cpu" and mf.is_edgetpu:
            twin = cpu_twin(mf.path)
            hint = f"use --device auto or the CPU model {twin}" if twin else "use --device edgetpu"
            raise EdgeTpuUnavailable(f"{mf.path} is compiled for the Edge TPU; {hint}")
        if device in ("edgetpu", "auto") and not mf.is_edgetpu:
            twin = edgetpu_twin(mf.path)
            if twin is not None:
                try:
                    return cls.load(
                        twin,
                        "edgetpu",
                        threads,
                        runtime=rt,
                        delegate_loader=loader,
                        edgetpu_device=edgetpu_device,
                        warm_up=warm_up,
                    )
                except EdgeTpuUnavailable as e:
                    if device == "edgetpu":
                        raise
                    log.warning("%s; using the CPU model %s", e, mf.path)
            elif device == "edgetpu":
                raise EdgeTpuUnavailable(
                    f"{mf.path} is not compiled for the Edge TPU; compile it with `edge-resnet convert --edgetpu` "
                    "or use --device cpu"
                )
        if mf.is_edgetpu:
            try:  # the delegate can load and the interpreter still fail (TPU busy, runtime older than the model)
                delegate = _load_edgetpu(loader, edgetpu_device)
                it = _make_interpreter(rt, mf, threads, [delegate])
            except EdgeTpuUnavailable as e:
                twin = cpu_twin(mf.path)
                if device == "auto" and twin is not None:
                    log.warning("%s; falling back to the CPU model %s", e, twin)
                    return cls.load(twin, "cpu", threads, runtime=rt, warm_up=warm_up)
                alt = f" (CPU model: {twin})" if twin else ""
                raise EdgeTpuUnavailable(f"{mf.path} needs an Edge TPU: {e}{alt}") from None
            engine = cls(mf, it, rt, "edgetpu", "edgetpu", threads)
        else:
            it = _make_interpreter(rt, mf, threads, None)
            delegated = any(op.get("op_name") == "DELEGATE" for op in _ops(it))
            engine = cls(mf, it, rt, "xnnpack" if delegated else "none", "cpu", threads)
        if warm_up:
            engine.warm_up()
        return engine

    def warm_up(self) -> float:
        """Invoke once on zeros: a model that loads but cannot run fails here, not on the first frame."""
        x = np.full(self.input.shape, self.input.zero_point, dtype=self.input.dtype)
        t0 = time.perf_counter()
        try:
            self.invoke(x)
        except ModelError:
            raise
        except Exception as e:  # the interpreters raise RuntimeError/ValueError with C++ text
            raise ModelError(
                f"{self.model.path} loads but fails when run ({_first_line(e)}); the file is damaged "
                "or needs ops this runtime lacks"
            ) from None
        return (time.perf_counter() - t0) * 1000.0

    def invoke(self, x: npt.NDArray[Any]) -> npt.NDArray[Any]:
        """Run one batch-of-one input; returns the raw output row (output dtype, batch removed)."""
        self._it.set_tensor(self._in_index, x)
        self._it.invoke()
        out: npt.NDArray[Any] = self._it.get_tensor(self._out_index)
        return out.reshape(-1).copy() if out.shape[0] == 1 else out.copy()

    def embedding_row(self) -> npt.NDArray[Any]:
        """The last invoke's embedding (raw, output dtype); only for models with one (`self.embedding`)."""
        if self._emb_index < 0:
            raise ModelError(f"{self.model.path.name} has no embedding output; {NO_EMBEDDING_HINT}")
        out: npt.NDArray[Any] = self._it.get_tensor(self._emb_index)
        return out.reshape(-1).copy()

    def ops(self) -> list[dict[str, Any]]:
        return _ops(self._it)

    def describe(self) -> str:
        return (
            f"{self.model.path.name} on {self.device} ({self.delegate}, {self.runtime.name} "
            f"{self.runtime.version}, threads={self.threads or 'default'})"
        )


def _ops(it: Any) -> list[dict[str, Any]]:
    try:
        return list(it._get_ops_details())
    except AttributeError:  # very old runtimes
        return []


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else type(e).__name__


def _checked_loader(load_delegate: DelegateLoader) -> DelegateLoader:
    """Try the shared library with ctypes first: when it is missing, some runtimes' load_delegate
    leave a half-built Delegate whose destructor prints a traceback at exit."""

    def load(lib: str, options: dict[str, str]) -> Any:
        ctypes.CDLL(lib)
        return load_delegate(lib, options)

    return load


def _load_edgetpu(loader: DelegateLoader, device: str | None) -> Any:
    lib = edgetpu_library()
    options = {"device": device} if device else {}
    try:
        return loader(lib, options)
    except (ValueError, OSError, RuntimeError) as e:
        raise EdgeTpuUnavailable(
            f"Edge TPU runtime {lib} not loadable or no Edge TPU attached ({_first_line(e)}); {EDGETPU_INSTALL_HINT}"
        ) from None


_PROBE = """
import sys
import numpy as np
{import_interpreter}
it = Interpreter(model_content=sys.stdin.buffer.read())
it.allocate_tensors()
d = it.get_input_details()[0]
it.set_tensor(d["index"], np.zeros(d["shape"], d["dtype"]))
it.invoke()
"""


def _probe_in_child(rt: Runtime, mf: ModelFile) -> None:
    """Load and invoke an unverified model in a child process first.

    tflite-runtime 2.14 has no flatbuffer verifier: a truncated file crashes the process with a
    segfault instead of raising. A model with an edge-resnet digest is exactly what the converter
    wrote, and ai-edge-litert verifies, so only foreign models on older runtimes pay for this.
    """
    module = _INTERPRETER_MODULES[rt.name]
    code = _PROBE.format(import_interpreter="import tensorflow; Interpreter = tensorflow.lite.Interpreter"
                         if rt.name == "tensorflow" else f"from {module} import Interpreter")
    try:
        r = subprocess.run(
            [sys.executable, "-c", code], input=mf.flatbuffer, capture_output=True, timeout=120, check=False
        )
    except subprocess.TimeoutExpired:
        raise ModelError(f"{mf.path} did not load within 120 s in a test run; it is damaged") from None
    if r.returncode != 0:
        why = (
            "crashed the interpreter"
            if r.returncode < 0
            else _first_line(
                RuntimeError(r.stderr.decode(errors="replace").strip().splitlines()[-1] if r.stderr.strip() else "")
            )
        )
        raise ModelError(
            f"{mf.path} cannot be loaded ({why}); it is truncated, corrupt or needs ops this runtime lacks: "
            "copy or convert it again"
        )


def usable_cores() -> int:
    """The default thread count. Left unset, the interpreter and its XNNPACK delegate run on one
    thread, which leaves three of a Raspberry Pi's four cores idle."""
    try:
        return max(1, len(os.sched_getaffinity(0)))  # honours taskset and systemd's CPUAffinity=
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _make_interpreter(rt: Runtime, mf: ModelFile, threads: int | None, delegates: list[Any] | None) -> Any:
    if threads is not None and threads < 1:
        raise ModelError(f"threads must be >= 1, got {threads}")
    if mf.meta is None and rt.name != "ai_edge_litert" and not delegates:
        _probe_in_child(rt, mf)
    try:
        with filtered_stderr():  # drops the "Created TensorFlow Lite XNNPACK delegate" line (shown with -v)
            it = rt.interpreter_cls(model_content=mf.flatbuffer, experimental_delegates=delegates, num_threads=threads)
            it.allocate_tensors()
    except Exception as e:
        if delegates:  # the Edge TPU's: its runtime refused the model, so a CPU twin can still run
            raise EdgeTpuUnavailable(
                f"the Edge TPU runtime cannot run {mf.path.name} ({_first_line(e)}); update libedgetpu1-std, "
                "free the accelerator from another process, or run the CPU model"
            ) from None
        raise ModelError(
            f"{mf.path} cannot be loaded ({_first_line(e)}); it is truncated, corrupt or needs ops this "
            "runtime lacks: copy or convert it again"
        ) from None
    return it
