"""Benchmarks: invoke latency of the TFLite model beside onnxruntime FP32/INT8, preprocessing cost,
end-to-end daemon throughput, load time and memory, from one process and one run.

Noise on a shared machine is the enemy of honest ratios, so contenders are loaded once and measured
*interleaved*: every round gives each (backend, threads) a short block of invokes, in an order that
rotates from round to round, and the first invoke of each block is discarded (it pays for thread
pools waking up and for caches another contender evicted). Percentiles then come from all blocks.

Only `engine.py` loads TFLite; onnxruntime is imported lazily (the `bench` extra), never TensorFlow.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from .engine import Engine
from .errors import DependencyError, InputError, ModelError
from .preprocess import PreprocessSpec, TensorInfo, prepare

SCHEMA = "edge-resnet-bench/1"
FRAME_SIZES: tuple[tuple[int, int], ...] = ((640, 480), (1280, 720), (1920, 1080))  # width, height
ORT_INSTALL = 'pip install "edge-resnet[bench]"'

Progress = Callable[[str], None]


def stderr_progress(message: str) -> None:
    """Default progress reporter: one line per step on stderr, so stdout stays machine-readable."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _quiet(message: str) -> None:
    pass


# ---------------------------------------------------------------- statistics


@dataclass(frozen=True)
class LatencyStats:
    """Latencies in milliseconds; `fps` is 1000 / mean, the rate one thread of callers can sustain."""

    runs: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    min_ms: float
    max_ms: float
    fps: float

    @classmethod
    def of(cls, samples_ms: Sequence[float]) -> LatencyStats:
        if not samples_ms:
            raise ValueError("no samples")
        a = np.asarray(samples_ms, dtype=np.float64)
        p50, p90, p99 = (float(v) for v in np.percentile(a, [50, 90, 99]))
        mean = float(a.mean())
        return cls(len(a), p50, p90, p99, mean, float(a.min()), float(a.max()), 1000.0 / mean if mean > 0 else 0.0)


# ---------------------------------------------------------------- contenders


@dataclass
class Contender:
    """A runner plus what it cost to get it ready."""

    backend: str  # "tflite", "ort-fp32", "ort-int8"
    threads: int
    run: Callable[[], object]
    load_ms: float
    first_invoke_ms: float
    rss_delta_mb: float
    detail: dict[str, Any] = field(default_factory=dict)
    samples_ms: list[float] = field(default_factory=list)

    @property
    def key(self) -> str:
        return f"{self.backend}@{self.threads}"


def rss_mb() -> float:
    """Current resident set size in MiB (psutil when present, /proc otherwise)."""
    try:
        import psutil

        return float(psutil.Process().memory_info().rss) / 2**20
    except ImportError:
        try:
            with open("/proc/self/statm", encoding="ascii") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
        except OSError:
            return 0.0


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB: VmHWM on Linux (ru_maxrss survives
    exec, so a child would report its parent's peak), ru_maxrss elsewhere (KiB; bytes on macOS)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**10
    except (OSError, ValueError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1000.0


def tflite_contender(
    model: str | os.PathLike[str], threads: int, device: str = "auto", load: Callable[..., Engine] = Engine.load
) -> tuple[Contender, Engine]:
    """Load a TFLite model through the runtime's own Engine and time it on a constant input."""
    before = rss_mb()
    t0 = time.perf_counter()
    engine = load(model, device=device, threads=threads, warm_up=False)
    load_ms = (time.perf_counter() - t0) * 1000.0
    first = engine.warm_up()
    x = np.full(engine.input.shape, engine.input.zero_point, dtype=engine.input.dtype)
    c = Contender(
        "tflite" if engine.device == "cpu" else "tflite-edgetpu",
        threads,
        lambda: engine.invoke(x),
        load_ms,
        first,
        rss_mb() - before,
        {
            "delegate": engine.delegate,
            "device": engine.device,
            "runtime": f"{engine.runtime.name} {engine.runtime.version}",
        },
    )
    return c, engine


def _ort() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise DependencyError(f"onnxruntime is not installed; {ORT_INSTALL}") from None
    return onnxruntime


def onnx_input(path: str | os.PathLike[str]) -> TensorInfo:
    """The ONNX model's single image input (dynamic dimensions taken as 1)."""
    ort = _ort()
    try:
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as e:
        raise ModelError(f"{path} is not a loadable ONNX model ({str(e).splitlines()[0][:200]})") from None
    inputs = sess.get_inputs()
    if len(inputs) != 1:
        raise ModelError(f"{path} has {len(inputs)} inputs; an image classifier has one")
    i = inputs[0]
    shape = tuple(d if isinstance(d, int) and d > 0 else 1 for d in i.shape)
    if len(shape) != 4 or 3 not in (shape[1], shape[3]):
        raise ModelError(f"{path} input {i.name!r} has shape {i.shape}; edge-resnet needs a 3-channel image model")
    if i.type != "tensor(float)":
        raise ModelError(f"{path} input {i.name!r} is {i.type}; --onnx wants the float32 model")
    return TensorInfo(i.name, shape, np.dtype(np.float32))


def ort_contender(path: str | os.PathLike[str], backend: str, threads: int, x: npt.NDArray[Any]) -> Contender:
    """An onnxruntime CPU session pinned to `threads` intra-op threads, all graph optimisations on."""
    ort = _ort()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    before = rss_mb()
    t0 = time.perf_counter()
    sess = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    load_ms = (time.perf_counter() - t0) * 1000.0
    name = sess.get_inputs()[0].name
    feed = {name: x}
    first = _timed(lambda: sess.run(None, feed))
    return Contender(
        backend,
        threads,
        lambda: sess.run(None, feed),
        load_ms,
        first,
        rss_mb() - before,
        {"onnxruntime": str(ort.__version__), "model": str(path)},
    )


def quantize_onnx(
    fp32: str | os.PathLike[str],
    out: str | os.PathLike[str],
    calibration: npt.NDArray[np.float32],
    progress: Progress = _quiet,
    activations: str = "uint8",
) -> Path:
    """Static QDQ INT8, per-channel int8 weights, MinMax-calibrated on `calibration` (N x input
    shape, already preprocessed exactly as the device does).

    Activations default to uint8 (U8S8): onnxruntime's fast path on x86 (VPMADDUBSW); on this
    AVX2 machine S8S8 measured ~1.7x slower for ResNet-18. Pass "int8" for S8S8 (ARM's choice).
    """
    ort = _ort()
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    tensor = onnx_input(fp32)
    out_path = Path(out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    src = _opset13(Path(fp32), out_path.with_suffix(".opset13.onnx"), progress)
    try:  # shape inference + graph optimisation first, as onnxruntime's quantization guide asks
        from onnxruntime.quantization.shape_inference import quant_pre_process

        pre = out_path.with_suffix(".pre.onnx")
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        if src != Path(fp32):
            src.unlink(missing_ok=True)
        src = pre
    except Exception as e:  # the pre-pass is an optimisation; quantize the original when it fails
        progress(f"onnxruntime quantization pre-processing skipped ({str(e).splitlines()[0][:120]})")

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self._it = iter(calibration)

        def get_next(self) -> dict[str, npt.NDArray[np.float32]] | None:
            x = next(self._it, None)
            return None if x is None else {tensor.name: x[np.newaxis].astype(np.float32)}

    progress(f"quantizing {Path(fp32).name} with onnxruntime {ort.__version__} on {len(calibration)} images")
    quantize_static(
        str(src),
        str(out_path),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8 if activations == "uint8" else QuantType.QInt8,
        weight_type=QuantType.QInt8,
    )
    if src != Path(fp32):
        src.unlink(missing_ok=True)
    return out_path


def _opset13(src: Path, tmp: Path, progress: Progress) -> Path:
    """Per-channel QDQ needs DequantizeLinear's `axis` (opset 13); model-zoo ResNets are opset 7-9."""
    import onnx
    from onnx import version_converter

    model = onnx.load(str(src))
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
    if opset >= 13:
        return src
    progress(f"upgrading {src.name} from opset {opset} to 13 for per-channel quantization")
    onnx.save(version_converter.convert_version(model, 13), str(tmp))
    return tmp


def calibration_tensors(
    images: Iterable[npt.NDArray[np.uint8]], spec: PreprocessSpec, tensor: TensorInfo
) -> npt.NDArray[np.float32]:
    """BGR images -> the model's float inputs (batch dimension removed), via the one prepare()."""
    arrays = [prepare(img, spec, tensor, "BGR")[0] for img in images]
    if not arrays:
        raise InputError("no calibration images; pass --calib DIR with JPEG/PNG images")
    out: npt.NDArray[np.float32] = np.stack(arrays).astype(np.float32)
    return out


def calibration_files(folder: str | os.PathLike[str], count: int) -> list[Path]:
    """The calibration images of `folder`: with a labels.json (the shared-data layout), the entries
    whose position is a multiple of 5, i.e. the calibration split; otherwise every image, sorted."""
    from .images import list_images

    d = Path(folder)
    index = d / "labels.json"
    if index.exists():
        entries = json.loads(index.read_text(encoding="utf-8"))
        files = [d / e["file"] for i, e in enumerate(entries) if i % 5 == 0]
    else:
        files = list_images([d])
    if not files:
        raise InputError(f"no images in {d}; pass --calib DIR with the calibration images")
    return files[:count]


# ---------------------------------------------------------------- measuring


def measure_interleaved(
    contenders: Sequence[Contender],
    runs: int,
    warmup: int,
    block: int = 10,
    progress: Progress = _quiet,
) -> None:
    """Give each contender `runs` timed invokes, in rotating interleaved blocks (samples appended)."""
    for c in contenders:
        progress(f"warm-up {c.key} x{warmup}")
        for _ in range(warmup):
            c.run()
    block = max(1, min(block, runs))
    rounds = -(-runs // block)
    for r in range(rounds):
        n = min(block, runs - r * block)
        shift = r % len(contenders)
        order = list(contenders[shift:]) + list(contenders[:shift])
        for c in order:
            c.run()  # discarded: wakes this contender's thread pool after the previous one ran
            for _ in range(n):
                c.samples_ms.append(_timed(c.run))
        if r == rounds - 1 or (r + 1) % max(1, rounds // 10) == 0:
            progress(
                f"round {r + 1}/{rounds}: "
                + ", ".join(f"{c.key} {statistics.median(c.samples_ms):.2f} ms" for c in contenders)
            )


def bench_preprocess(
    spec: PreprocessSpec,
    tensor: TensorInfo,
    runs: int = 200,
    sizes: Sequence[tuple[int, int]] = FRAME_SIZES,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Time prepare() (crop, resize, normalise, layout) on camera-sized BGR frames, interleaved by size."""
    rng = np.random.default_rng(seed)
    frames = {s: rng.integers(0, 256, (s[1], s[0], 3), dtype=np.uint8) for s in sizes}
    samples: dict[tuple[int, int], list[float]] = {s: [] for s in sizes}
    for s in sizes:
        prepare(frames[s], spec, tensor, "BGR")
    for _ in range(runs):
        for s in sizes:
            f = frames[s]
            samples[s].append(_timed(lambda f=f: prepare(f, spec, tensor, "BGR")))  # type: ignore[misc]
    return [
        {"frame": f"{w}x{h}", "width": w, "height": h, **asdict(LatencyStats.of(samples[(w, h)]))} for w, h in sizes
    ]


# ---------------------------------------------------------------- the TFLite graph


def delegation(engine: Engine) -> dict[str, Any]:
    """Which ops the delegate took and which the interpreter runs itself (single-threaded kernels).

    After delegation the interpreter lists the original ops plus one DELEGATE op per partition;
    an original op is delegated when it lies between some partition's inputs and outputs.
    """
    ops = engine.ops()
    originals = [o for o in ops if o.get("op_name") != "DELEGATE"]
    partitions = [o for o in ops if o.get("op_name") == "DELEGATE"]
    producer: dict[int, dict[str, Any]] = {}
    for o in originals:
        for t in o["outputs"]:
            producer[int(t)] = o
    inside: set[int] = set()
    for d in partitions:
        stop = {int(t) for t in d["inputs"]}
        todo = [int(t) for t in d["outputs"]]
        seen: set[int] = set()
        while todo:
            t = todo.pop()
            if t in seen or t in stop or t not in producer:
                continue
            seen.add(t)
            op = producer[t]
            inside.add(int(op["index"]))
            todo.extend(int(i) for i in op["inputs"])
    outside = [o for o in originals if int(o["index"]) not in inside]
    return {
        "ops": len(originals),
        "partitions": len(partitions),
        "delegated_ops": len(inside),
        "outside": [{"index": int(o["index"]), "op": str(o["op_name"])} for o in outside],
        "op_counts": _counts(str(o["op_name"]) for o in originals),
    }


def _counts(names: Iterable[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for n in names:
        out[n] = out.get(n, 0) + 1
    return dict(sorted(out.items()))


# ---------------------------------------------------------------- context


def machine() -> dict[str, Any]:
    """What the numbers were measured on: CPU model, cores, Python and the packages that matter."""
    from importlib.metadata import PackageNotFoundError, version

    cpu = platform.processor() or platform.machine()
    flags: list[str] = []
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model") and cpu in (platform.processor(), platform.machine()):
                    cpu = value.strip()
                if key.strip() in ("flags", "Features") and not flags:
                    have = set(value.split())
                    flags = sorted(
                        have & {"avx", "avx2", "avx512f", "avx512_vnni", "avx_vnni", "fma", "neon", "asimd", "asimddp"}
                    )
    except OSError:
        pass
    packages = {}
    for dist in (
        "edge-resnet",
        "ai-edge-litert",
        "tflite-runtime",
        "onnxruntime",
        "onnx",
        "numpy",
        "opencv-python-headless",
        "onnx2tf",
    ):
        try:
            packages[dist] = version(dist)
        except PackageNotFoundError:
            continue
    try:
        load = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        load = []
    return {
        "cpu": cpu,
        "cpu_flags": flags,
        "cores": os.cpu_count(),
        "machine": platform.machine(),
        "system": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "packages": packages,
        "load_average_at_start": load,
    }


def write_json(result: dict[str, Any], path: str | os.PathLike[str]) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(result, indent=2, sort_keys=False) + "\n", encoding="utf-8")


# ---------------------------------------------------------------- end to end


def raw_invoke_fps(engine: Engine, seconds: float = 1.5) -> float:
    """Back-to-back invokes of a zero input on this engine for about `seconds`: invokes per second.
    Taken right beside a daemon run, so the daemon's ratio to it sees the same machine load."""
    x = np.zeros(engine.input.shape, engine.input.dtype)
    engine.invoke(x)  # wakes the thread pool after whatever ran before
    n, t0 = 0, time.perf_counter()
    while (t := time.perf_counter()) - t0 < seconds or n < 3:
        engine.invoke(x)
        n += 1
    return n / (t - t0)


def bench_daemon(
    classifier: Any,
    video: str | os.PathLike[str],
    max_frames: int = 300,
    max_seconds: float = 20.0,
    progress: Progress = _quiet,
    *,
    live: bool | None = None,
    raw_seconds: float = 1.5,
) -> dict[str, Any]:
    """The daemon's own capture thread and pipeline thread on a video file read at full speed
    (no real-time pacing, looped, no sinks) until `max_frames` are classified or `max_seconds`
    pass: classified frames/s from the first result on, and frame age (capture -> result handed
    to the sinks) as the pipeline itself measures it. The raw invoke rate of the same engine is
    measured just before and just after (`raw_seconds` each), and the ratio taken to their mean.

    `live=True` forces the old latest-frame capture on the file (decode ahead, drop what the
    pipeline did not take) for before/after comparisons; None keeps the source's own (not live)."""
    from .capture import Capture
    from .pipeline import Pipeline
    from .sources.opencv import OpenCvFrames

    src = OpenCvFrames(str(video), "file", realtime=False, loop=True)
    if live is not None:
        src = _AsLive(src, live)  # type: ignore[assignment]
    raw_before = raw_invoke_fps(classifier.engine, raw_seconds)
    capture = Capture(src, retry=False)
    pipe = Pipeline(capture, classifier, sinks=[])
    capture.start()
    pipe.start()
    try:
        if not pipe.wait_first(timeout=30.0):
            raise InputError(f"no frame classified from {video} within 30 s; check that OpenCV can decode it")
        n0, t0 = pipe.classified, pipe.last_classified_mono or time.monotonic()
        cpu0 = time.process_time()
        deadline = time.monotonic() + max_seconds
        while not pipe.ended and pipe.classified - n0 < max_frames and time.monotonic() < deadline:
            time.sleep(0.02)
        n1, t1 = pipe.classified, pipe.last_classified_mono or time.monotonic()
        cpu = time.process_time() - cpu0
        age50, age99 = pipe.frame_age_ms()
        inv50, _ = pipe.invoke_ms()
        stats = capture.stats()
    finally:
        pipe.stop()
        capture.stop()
    raw_after = raw_invoke_fps(classifier.engine, raw_seconds)
    raw = (raw_before + raw_after) / 2
    frames = n1 - n0
    fps = frames / (t1 - t0) if t1 > t0 else 0.0
    progress(f"end to end: {n1} frames classified, {stats.captured} decoded, {fps:.1f} frames/s")
    return {
        "method": "edge_resnet.pipeline (capture thread + pipeline thread), looped file source, no real-time pacing",
        "video": str(video),
        "capture": "latest-frame" if capture.live else "backpressure",
        "frames_classified": n1,
        "frames_decoded": stats.captured,
        "frames_dropped": stats.dropped,
        "seconds": t1 - t0,
        "fps": fps,
        "frame_age_p50_ms": age50,
        "frame_age_p99_ms": age99,
        "invoke_p50_ms": inv50,  # inside the daemon: shows what decoding beside it costs the interpreter
        "cpu_cores_busy": cpu / (t1 - t0) if t1 > t0 else 0.0,
        "raw_invoke_fps": raw,
        "raw_invoke_fps_before_after": [raw_before, raw_after],
        "fps_over_raw_invoke": fps / raw if raw > 0 else 0.0,
    }


class _AsLive:
    """A source with its `live` overridden (benchmarks compare capture modes on one file)."""

    def __init__(self, src: Any, live: bool) -> None:
        self._src, self.live, self.description = src, live, src.description

    def open(self) -> None:
        self._src.open()

    def read(self) -> Any:
        return self._src.read()

    def close(self) -> None:
        self._src.close()


# ---------------------------------------------------------------- the whole run


@dataclass
class BenchOptions:
    model: Path
    onnx: Path | None = None
    calib: Path | None = None
    calib_count: int = 200
    threads: tuple[int, ...] = (1, 2)
    runs: int = 100
    warmup: int = 5
    block: int = 10
    device: str = "auto"
    # the FP32 ONNX model's normalisation, and the TFLite model's when it carries no metadata;
    # None: taken from the bundle (its folded-away normalisation is recorded at conversion)
    preprocess: PreprocessSpec | None = None
    video: Path | None = None
    video_frames: int = 300
    video_seconds: float = 20.0
    preprocess_runs: int = 200
    ort_int8: Path | None = None  # a ready onnxruntime INT8 model; else quantized into cache_dir
    cache_dir: Path | None = None
    ort_activations: str = "uint8"  # onnxruntime INT8 activations: "uint8" (U8S8, x86 fast path) or "int8"


def run_benchmark(opts: BenchOptions, progress: Progress = stderr_progress) -> dict[str, Any]:
    """Everything `edge-resnet bench` reports, as one JSON-ready dict (schema SCHEMA)."""
    from .classify import Classifier, default_preprocess

    if opts.runs < 1 or opts.warmup < 0 or not opts.threads or min(opts.threads) < 1:
        raise InputError("bench needs --runs >= 1, --warmup >= 0 and thread counts >= 1")
    result: dict[str, Any] = {"schema": SCHEMA, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    result["machine"] = machine()
    rss0 = rss_mb()

    contenders: list[Contender] = []
    engines: dict[int, Engine] = {}
    peak_tflite = 0.0
    for t in opts.threads:
        progress(f"loading {opts.model.name} (TFLite, {t} thread{'s' * (t > 1)})")
        c, engine = tflite_contender(opts.model, t, opts.device)
        contenders.append(c)
        engines[t] = engine
        peak_tflite = peak_tflite or peak_rss_mb()  # the process with one interpreter, before any other
    engine = engines[opts.threads[0]]
    meta = engine.model.meta
    spec = meta.preprocess if meta else (opts.preprocess or default_preprocess(engine.input))
    result["model"] = {
        "path": str(opts.model),
        "sha256": engine.model.sha256,
        "size_bytes": len(engine.model.flatbuffer),
        "bundle": engine.model.meta is not None,
        "input": {
            "shape": list(engine.input.shape),
            "dtype": str(engine.input.dtype),
            "scale": engine.input.scale,
            "zero_point": engine.input.zero_point,
        },
        "output": {"shape": list(engine.output.shape), "dtype": str(engine.output.dtype)},
        "device": engine.device,
        "delegate": engine.delegate,
        "runtime": f"{engine.runtime.name} {engine.runtime.version}",
        "graph": delegation(engine),
        "preprocess": spec.to_dict(),
    }

    if opts.onnx is not None:
        tensor = onnx_input(opts.onnx)
        x = np.zeros(tensor.shape, np.float32)
        onnx_spec = _onnx_spec(opts, engine)
        int8 = opts.ort_int8 or _ort_int8_path(opts, onnx_spec, tensor, _calibration(opts, engine), progress)
        for t in opts.threads:
            for backend, path in (("ort-fp32", opts.onnx), ("ort-int8", int8)):
                progress(f"loading {Path(path).name} (onnxruntime {backend[4:].upper()}, {t} thread{'s' * (t > 1)})")
                contenders.append(ort_contender(path, backend, t, x))
        result["onnx"] = {
            "fp32": str(opts.onnx),
            "int8": str(int8),
            "int8_scheme": "given"
            if opts.ort_int8
            else f"QDQ static, per-channel int8 weights, {opts.ort_activations} activations, MinMax",
            "input": {"name": tensor.name, "shape": list(tensor.shape)},
            "preprocess": onnx_spec.to_dict(),
        }

    progress(f"timing {len(contenders)} contenders, {opts.runs} runs each, interleaved in blocks of {opts.block}")
    measure_interleaved(contenders, opts.runs, opts.warmup, opts.block, progress)
    result["config"] = {"threads": list(opts.threads), "runs": opts.runs, "warmup": opts.warmup, "block": opts.block}
    result["invoke"] = [
        {
            "backend": c.backend,
            "threads": c.threads,
            **asdict(LatencyStats.of(c.samples_ms)),
            "load_ms": c.load_ms,
            "first_invoke_ms": c.first_invoke_ms,
            "rss_delta_mb": c.rss_delta_mb,
            **c.detail,
        }
        for c in contenders
    ]
    result["ratios"] = ratios(result["invoke"])

    progress(f"preprocessing {', '.join(f'{w}x{h}' for w, h in FRAME_SIZES)} x{opts.preprocess_runs}")
    result["preprocess"] = bench_preprocess(spec, engine.input, opts.preprocess_runs)

    result["daemon"] = []
    if opts.video is not None:
        for t in opts.threads:
            progress(f"end to end on {opts.video.name} with {t} thread{'s' * (t > 1)}")
            daemon = bench_daemon(
                Classifier(engines[t], preprocess=spec), opts.video, opts.video_frames, opts.video_seconds, progress
            )
            raw = next(r for r in result["invoke"] if r["backend"].startswith("tflite") and r["threads"] == t)
            # the ratio is to the raw rate measured beside the daemon run (same load), not minutes earlier
            daemon.update(threads=t, raw_invoke_fps_timing_run=raw["fps"])
            result["daemon"].append(daemon)

    result["memory"] = {"rss_at_start_mb": rss0, "peak_rss_tflite_only_mb": peak_tflite, "peak_rss_mb": peak_rss_mb()}
    return result


def ratios(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """TFLite p50 over onnxruntime p50 at each thread count, and at each one's best thread count."""
    by = {(r["backend"], r["threads"]): r for r in rows}
    tfl = [r for r in rows if r["backend"].startswith("tflite")]
    out: dict[str, Any] = {"same_threads": {}, "best": {}}
    for r in tfl:
        for other in ("ort-fp32", "ort-int8"):
            o = by.get((other, r["threads"]))
            if o:
                out["same_threads"].setdefault(str(r["threads"]), {})[f"tflite/{other}"] = r["p50_ms"] / o["p50_ms"]
    if tfl:
        best_t = min(tfl, key=lambda r: r["p50_ms"])
        out["best"]["tflite"] = {"threads": best_t["threads"], "p50_ms": best_t["p50_ms"]}
        for other in ("ort-fp32", "ort-int8"):
            cand = [r for r in rows if r["backend"] == other]
            if cand:
                b = min(cand, key=lambda r: r["p50_ms"])
                out["best"][other] = {"threads": b["threads"], "p50_ms": b["p50_ms"]}
                out["best"][f"tflite/{other}"] = best_t["p50_ms"] / b["p50_ms"]
    for name in ("tflite", "ort-fp32", "ort-int8"):
        ts = sorted(t for (b, t) in by if b == name)
        if len(ts) > 1:
            out.setdefault("scaling", {})[name] = {
                f"{ts[0]}->{t}": by[(name, ts[0])]["p50_ms"] / by[(name, t)]["p50_ms"] for t in ts[1:]
            }
    return out


def _onnx_spec(opts: BenchOptions, engine: Engine) -> PreprocessSpec:
    """The FP32 ONNX model's normalisation: given, or the one conversion folded into the bundle."""
    if opts.preprocess is not None:
        return opts.preprocess
    meta = engine.model.meta
    folded = meta.source.get("normalisation_folded") if meta else None
    if isinstance(folded, dict):
        return PreprocessSpec.from_dict(folded)
    if meta is not None:
        return meta.preprocess
    raise InputError(
        f"{engine.model.path} carries no preprocessing; pass --preset (or --mean/--std) matching the ONNX model"
    )


def _calibration(opts: BenchOptions, engine: Engine) -> list[Path]:
    """The TFLite model's own calibration images when its bundle names them, else --calib's split."""
    meta = engine.model.meta
    cal = meta.source.get("calibration", {}) if meta else {}
    names = cal.get("files") if isinstance(cal, dict) else None
    folder = opts.calib or (Path(cal["folder"]) if isinstance(cal, dict) and cal.get("folder") else None)
    if folder is None:
        raise InputError(
            "--onnx needs --calib DIR: onnxruntime INT8 is calibrated on the same images as the TFLite model"
        )
    if isinstance(names, list) and names:
        return [folder / str(n) for n in names]
    count = opts.calib_count
    if isinstance(cal, dict) and isinstance(cal.get("images"), int):
        count = min(count, int(cal["images"]))
    return calibration_files(folder, count)


def _ort_int8_path(
    opts: BenchOptions, spec: PreprocessSpec, tensor: TensorInfo, files: list[Path], progress: Progress
) -> Path:
    """Quantize the ONNX model once per (model, calibration set, preprocessing); cached by digest."""
    import hashlib

    from .images import load_image

    h = hashlib.sha256(Path(opts.onnx or "").read_bytes())
    key = [spec.to_dict(), [f.name for f in files], list(tensor.shape), opts.ort_activations]
    h.update(json.dumps(key, sort_keys=True).encode())
    cache = opts.cache_dir or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "edge-resnet" / "bench"
    out = cache / f"{Path(opts.onnx or 'model').stem}.int8.{h.hexdigest()[:16]}.onnx"
    if out.exists():
        progress(f"onnxruntime INT8 model from cache: {out}")
        return out
    progress(f"preprocessing {len(files)} calibration images from {files[0].parent}")
    data = calibration_tensors((load_image(f) for f in files), spec, tensor)
    tmp = out.with_name(out.name + ".partial.onnx")
    quantize_onnx(opts.onnx or "", tmp, data, progress, opts.ort_activations)
    tmp.replace(out)
    return out
