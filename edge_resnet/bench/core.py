"""Benchmarks: invoke latency of the TFLite model beside onnxruntime FP32/INT8, preprocessing cost,
end-to-end daemon throughput, load time and memory, from one process and one run.

The pieces live beside it: `measure.py` (interleaved timing, percentiles, RSS), `ort_reference.py`
(onnxruntime FP32/INT8, imported lazily from the `bench` extra) and `daemon_bench.py` (end to end).
Only `engine.py` loads TFLite; never TensorFlow.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..engine import Engine
from ..errors import DependencyError, InputError
from ..preprocess import PreprocessSpec, TensorInfo, prepare
from .daemon import bench_daemon
from .measure import Contender, LatencyStats, Progress, measure_interleaved, peak_rss_mb, rss_mb, stderr_progress, timed
from .ort_reference import ORT_INSTALL, calibration_files, calibration_tensors, onnx_input, ort_contender

log = logging.getLogger(__name__)

SCHEMA = "edge-resnet-bench/1"
DEFAULT_CALIB_COUNT = 200  # onnxruntime INT8 calibration images when the model names none
FRAME_SIZES: tuple[tuple[int, int], ...] = ((640, 480), (1280, 720), (1920, 1080))  # width, height


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
            samples[s].append(timed(lambda f=f: prepare(f, spec, tensor, "BGR")))  # type: ignore[misc]
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


# ---------------------------------------------------------------- the whole run


@dataclass
class BenchOptions:
    model: Path
    onnx: Path | None = None
    calib: Path | None = None
    calib_count: int | None = None  # None: all the images the bundle names (else DEFAULT_CALIB_COUNT)
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
    from ..classify import Classifier, default_preprocess

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
        files = [folder / str(n) for n in names]
        if opts.calib_count is not None and opts.calib_count < len(files):
            log.info(
                "onnxruntime INT8: calibrating on the first %d of the %d images the bundle was calibrated on "
                "(--calib-count)",
                opts.calib_count,
                len(files),
            )
            return files[: opts.calib_count]
        return files
    count = DEFAULT_CALIB_COUNT if opts.calib_count is None else opts.calib_count
    if isinstance(cal, dict) and isinstance(cal.get("images"), int):
        count = min(count, int(cal["images"]))
    return calibration_files(folder, count)


def _ort_int8_path(
    opts: BenchOptions, spec: PreprocessSpec, tensor: TensorInfo, files: list[Path], progress: Progress
) -> Path:
    """Quantize the ONNX model once per (model, calibration set, preprocessing); cached by digest."""
    import hashlib

    from ..images import load_image

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
    try:  # workstation-only quantization lives with the converter
        from edge_resnet.convert.ort_quantize import quantize_onnx
    except ImportError as e:
        raise DependencyError(f"the onnxruntime INT8 reference needs the converter ({e}); {ORT_INSTALL}") from None
    quantize_onnx(opts.onnx or "", tmp, data, progress, opts.ort_activations)
    tmp.replace(out)
    return out
