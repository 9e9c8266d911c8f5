"""`edge-resnet bench`: latency, throughput, memory and preprocessing cost, beside onnxruntime."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..bench import BenchOptions, run_benchmark, write_json
from ..bench.measure import stderr_progress
from ..devices import DEVICES
from ..errors import DependencyError, InputError
from ..model import preprocess_override
from .modelargs import add_preprocess_args

DESCRIPTION = """\
Time the TFLite model's invoke (p50/p90/p99, throughput) at each thread count through the runtime's
own engine (XNNPACK, or the Edge TPU when present); with --onnx, onnxruntime FP32 and onnxruntime
INT8 (static QDQ, per-channel weights, calibrated on the --calib images) in the same run, measured
interleaved so machine noise hits every contender alike. Also: preprocessing of 640x480, 1280x720
and 1920x1080 frames, model load time, peak RSS, and with --video the end-to-end frame rate and
frame age. Progress goes to stderr; the summary (or --json -) to stdout."""


def register(sub: Any, name: str, helptext: str) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        name, help=helptext, description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("model", help="the .tflite model or edge-resnet bundle to benchmark")
    p.add_argument("--onnx", type=Path, help="the FP32 ONNX model it came from: adds onnxruntime FP32 and INT8")
    p.add_argument("--calib", type=Path, help="calibration images for onnxruntime INT8 (same as the TFLite model's)")
    p.add_argument(
        "--calib-count", type=int, metavar="N",
        help="onnxruntime INT8 calibration images. A bundle names the images it was calibrated on and those are "
        "used (all of them by default, the first N with this option); otherwise N of --calib (default 200)",
    )
    p.add_argument("--ort-int8", type=Path, help="a ready onnxruntime INT8 model instead of quantizing --onnx")
    p.add_argument(
        "--ort-activations",
        choices=("uint8", "int8"),
        default="uint8",
        help="onnxruntime INT8 activation type: uint8 (U8S8, x86 fast path; default) or int8 (S8S8)",
    )
    p.add_argument("--threads", type=_threads, default=(1, 2), help="comma-separated thread counts (default 1,2)")
    p.add_argument("--runs", type=_positive, default=100, help="timed invokes per contender (default 100)")
    p.add_argument("--warmup", type=int, default=5, help="untimed invokes per contender first (default 5)")
    p.add_argument("--block", type=_positive, default=10, help="invokes per interleaved block (default 10)")
    p.add_argument("--device", choices=DEVICES, default="auto", help="auto (Edge TPU when present), cpu, edgetpu")
    p.add_argument("--video", type=Path, help="a video file: end-to-end frames/s and frame age at full speed")
    p.add_argument("--video-frames", type=_positive, default=300, help="stop --video after N classified frames")
    p.add_argument("--video-seconds", type=float, default=20.0, help="... or after S seconds (default 20)")
    p.add_argument("--preprocess-runs", type=_positive, default=200, help="timed prepare() calls per frame size")
    p.add_argument("--json", dest="json_out", help="write the full results as JSON to FILE (- for stdout)")
    p.add_argument("--plot", type=Path, help="write a latency chart PNG (needs matplotlib)")
    p.add_argument("--cache-dir", type=Path, help="where quantized onnxruntime models are kept")
    add_preprocess_args(p, "preprocessing when the model carries none (must match the ONNX model's)")
    p.set_defaults(func=run)


def _threads(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected thread counts like 1,2,4, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"thread counts must be >= 1, got {text!r}")
    return tuple(dict.fromkeys(values))


def _positive(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {v}")
    return v


def run(args: argparse.Namespace) -> int:
    if args.onnx is not None and not args.onnx.exists():
        raise InputError(f"ONNX model {args.onnx} not found; pass the FP32 .onnx the TFLite model came from")
    if args.video is not None and not args.video.exists():
        raise InputError(f"video {args.video} not found; pass a video file")
    if args.plot is not None:
        _require_matplotlib()
    opts = BenchOptions(
        model=Path(args.model),
        onnx=args.onnx,
        calib=args.calib,
        calib_count=args.calib_count,
        threads=tuple(args.threads),
        runs=args.runs,
        warmup=args.warmup,
        block=args.block,
        device=args.device,
        preprocess=preprocess_override(args, None),
        video=args.video,
        video_frames=args.video_frames,
        video_seconds=args.video_seconds,
        preprocess_runs=args.preprocess_runs,
        ort_int8=args.ort_int8,
        cache_dir=args.cache_dir,
        ort_activations=args.ort_activations,
    )
    result = run_benchmark(opts, stderr_progress)
    if args.json_out == "-":
        json.dump(result, sys.stdout, indent=2)
        print()
    else:
        if args.json_out:
            write_json(result, args.json_out)
            stderr_progress(f"wrote {args.json_out}")
        print(summary(result))
    if args.plot is not None:
        plot(result, args.plot)
        stderr_progress(f"wrote {args.plot}")
    return 0


def summary(r: dict[str, Any]) -> str:
    m = r["model"]
    g = m["graph"]
    lines = [
        f"model: {Path(m['path']).name} ({m['size_bytes'] / 1e6:.1f} MB) on {m['device']} "
        f"({m['delegate']}, {m['runtime']})",
        f"graph: {g['ops']} ops, {g['delegated_ops']} delegated in {g['partitions']} partition(s); outside: "
        + (", ".join(f"{o['op']}#{o['index']}" for o in g["outside"]) or "none"),
        f"machine: {r['machine']['cpu']}, {r['machine']['cores']} cores, load {r['machine']['load_average_at_start']}",
        "",
        f"{'backend':<16}{'threads':>7}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'fps':>8}{'load ms':>9}{'+RSS MB':>9}",
    ]
    for row in r["invoke"]:
        lines.append(
            f"{row['backend']:<16}{row['threads']:>7}{row['p50_ms']:>9.2f}{row['p90_ms']:>9.2f}{row['p99_ms']:>9.2f}"
            f"{row['fps']:>8.1f}{row['load_ms']:>9.0f}{row['rss_delta_mb']:>9.0f}"
        )
    ratios = r["ratios"]
    for t, d in ratios.get("same_threads", {}).items():
        lines.append(f"ratio @{t} thread(s): " + ", ".join(f"{k} {v:.2f}" for k, v in d.items()))
    best = ratios.get("best", {})
    for other in ("ort-fp32", "ort-int8"):
        if f"tflite/{other}" in best:
            lines.append(
                f"best vs best: tflite@{best['tflite']['threads']} / {other}@{best[other]['threads']} = "
                f"{best[f'tflite/{other}']:.2f}"
            )
    for name, d in ratios.get("scaling", {}).items():
        lines.append(f"scaling {name}: " + ", ".join(f"{k} x{v:.2f}" for k, v in d.items()))
    lines.append("")
    lines.append("preprocess (prepare): " + ", ".join(f"{p['frame']} {p['p50_ms']:.2f} ms" for p in r["preprocess"]))
    for d in r.get("daemon") or []:
        lines.append(
            f"end to end (daemon pipeline): {d['fps']:.1f} frames/s = {d['fps_over_raw_invoke']:.2f} x raw "
            f"invoke rate @{d['threads']}; frame age p50 {d['frame_age_p50_ms']:.1f} ms, "
            f"p99 {d['frame_age_p99_ms']:.1f} ms"
        )
    mem = r["memory"]
    lines.append(
        f"peak RSS: {mem['peak_rss_tflite_only_mb']:.0f} MiB with the TFLite model, "
        f"{mem['peak_rss_mb']:.0f} MiB overall"
    )
    return "\n".join(lines)


def _require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise DependencyError('--plot needs matplotlib; pip install "edge-resnet[bench]"') from None


def plot(r: dict[str, Any], path: Path) -> None:
    """Bars of p50 latency per backend and thread count, whiskers to p90."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = r["invoke"]
    threads = sorted({row["threads"] for row in rows})
    backends = list(dict.fromkeys(row["backend"] for row in rows))
    by = {(row["backend"], row["threads"]): row for row in rows}
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    width = 0.8 / len(backends)
    for i, b in enumerate(backends):
        xs = [j + i * width for j, t in enumerate(threads) if (b, t) in by]
        p50 = [by[(b, t)]["p50_ms"] for t in threads if (b, t) in by]
        p90 = [by[(b, t)]["p90_ms"] - by[(b, t)]["p50_ms"] for t in threads if (b, t) in by]
        bars = ax.bar(xs, p50, width, yerr=[[0] * len(p90), p90], capsize=3, label=b)
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(threads))], [f"{t} thread{'s' * (t > 1)}" for t in threads])
    ax.set_ylabel("invoke latency, ms (p50, whisker to p90)")
    ax.set_title(f"{Path(r['model']['path']).name} - {r['machine']['cpu']}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
