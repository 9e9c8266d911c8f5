"""Reproduce the README's performance table: one command, JSON + Markdown + PNG.

    .venv/bin/python bench/readme_table.py            # all three models, ~15 min on 2 cores

For generated ResNet-18 and ResNet-50 (v1, model-zoo shaped) and the MobileNet v2 data model:
FP32 ONNX (onnxruntime), onnxruntime INT8 (static QDQ, per-channel, the same calibration images)
and our INT8 TFLite (XNNPACK), timed interleaved in one run per model by `edge_resnet.bench`, with
fidelity figures from the conversion report, preprocessing cost and end-to-end throughput on a
video file. Conversions and quantized models are cached in `.cache/bench/` (git-ignored); delete it
to start from scratch. Writes bench/results/{performance.json,README_table.md,performance.png}.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edge_resnet.bench import machine, write_json  # noqa: E402
from edge_resnet.bench.measure import stderr_progress  # noqa: E402
from edge_resnet.bench.ort_reference import onnx_input  # noqa: E402
from edge_resnet.preprocess import PRESETS, PreprocessSpec  # noqa: E402

DATA = Path(os.environ.get("EDGE_RESNET_DATA", REPO.parent / "shared" / "data"))
SAMPLES = DATA / "imagenet-samples"
MODELS: dict[str, dict[str, Any]] = {
    "resnet18": {"title": "ResNet-18 v1 (generated)", "depth": 18, "preset": "imagenet"},
    "resnet50": {"title": "ResNet-50 v1 (generated)", "depth": 50, "preset": "imagenet"},
    "mobilenet_v2": {
        "title": "MobileNet v2 1.0 (ImageNet weights)",
        "onnx": DATA / "models" / "mobilenet_v2_1.0_224.onnx",
        "preset": "inception",
        "labels": DATA / "models" / "imagenet_labels_1001.txt",
    },
}
BACKENDS = {"ort-fp32": "onnxruntime FP32", "ort-int8": "onnxruntime INT8 (QDQ)", "tflite": "edge-resnet INT8 TFLite"}
log = stderr_progress


# ---------------------------------------------------------------- models


def onnx_model(name: str, work: Path) -> Path:
    spec = MODELS[name]
    if "onnx" in spec:
        return Path(spec["onnx"])
    out = work / f"{name}.onnx"
    if not out.exists():
        import onnx

        from tests.helpers.resnet_onnx import make_resnet

        log(f"generating {spec['title']}")
        onnx.save(make_resnet(spec["depth"], version=1), str(out))
    return out


def convert(
    name: str, src: Path, work: Path, calib_count: int, eval_count: int
) -> tuple[Path, dict[str, Any] | None, str]:
    """Our INT8 TFLite bundle and its conversion report, made by `edge-resnet convert` (a child
    process, so TensorFlow never loads into the benchmarking process); cached in `work`."""
    out_dir = work / f"{name}_int8"
    model = out_dir / f"{src.stem}_int8.tflite"
    report_path = out_dir / f"{src.stem}_int8.report.json"
    if not (model.exists() and report_path.exists()):
        args = [
            *(sys.executable, "-m", "edge_resnet", "convert", str(src), "--calib", str(SAMPLES), "--out", str(out_dir)),
            *("--preset", MODELS[name]["preset"], "--calib-count", str(calib_count), "--max-top1-drop", "100"),
            *("--eval", str(SAMPLES), "--eval-limit", str(eval_count)),  # same folder: labels.json calib/eval split
        ]
        if "labels" in MODELS[name]:
            args += ["--labels", str(MODELS[name]["labels"])]
        log(f"converting {src.name}: edge-resnet {' '.join(args[3:])}")
        t0 = time.time()
        proc = subprocess.run(args, cwd=REPO, text=True, capture_output=True)
        if proc.returncode != 0 or not model.exists():
            raise SystemExit(f"conversion of {src} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        log(f"converted in {time.time() - t0:.0f} s")
    report = json.loads(report_path.read_text()) if report_path.exists() else None
    return model, report, "edge-resnet convert"


# ---------------------------------------------------------------- fidelity


def fidelity(fp32: Path, int8: Path, spec: PreprocessSpec, count: int, offset: int) -> dict[str, dict[str, float]]:
    """onnxruntime INT8 against FP32 on the first `count` evaluation images (labels.json positions
    not a multiple of 5, the set the conversion report uses): top-1 agreement, logit SQNR, top-1."""
    import onnxruntime as ort

    from edge_resnet.images import load_image
    from edge_resnet.preprocess import prepare

    entries = json.loads((SAMPLES / "labels.json").read_text())
    evals = [e for i, e in enumerate(entries) if i % 5 != 0][:count]
    tensor = onnx_input(fp32)
    sessions = {k: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for k, p in
                (("ort-fp32", fp32), ("ort-int8", int8))}  # fmt: skip
    logits: dict[str, list[np.ndarray[Any, Any]]] = {k: [] for k in sessions}
    for e in evals:
        x = prepare(load_image(SAMPLES / e["file"]), spec, tensor, "BGR")
        for k, sess in sessions.items():
            logits[k].append(np.asarray(sess.run(None, {tensor.name: x})[0]).reshape(-1))
    ref, q = np.stack(logits["ort-fp32"]), np.stack(logits["ort-int8"])
    labels = np.array([int(e["class_index"]) + offset for e in evals])
    noise = float(((ref - q) ** 2).sum())
    return {
        "ort-fp32": {"top1": float((ref.argmax(1) == labels).mean()), "images": float(len(evals))},
        "ort-int8": {
            "top1_agreement": float((q.argmax(1) == ref.argmax(1)).mean()),
            "sqnr_db": 10 * math.log10(float((ref**2).sum()) / noise) if noise > 0 else float("inf"),
            "top1": float((q.argmax(1) == labels).mean()),
            "images": float(len(evals)),
        },
    }


# ---------------------------------------------------------------- output


def _video(work: Path) -> Path:
    """A 1280x720 MJPG file from ImageNet sample photos (the daemon engineer's test helper)."""
    from tests.helpers.video import pick_samples, write_video

    path = work / "samples_720p.avi"
    if not path.exists():
        write_video(path, pick_samples(SAMPLES, 8), seconds_each=2.0, fps=30, size=(1280, 720))
    return path


def bench_cli(
    tflite: Path, src: Path, preset: str, threads: tuple[int, ...], runs: int, video: Path, work: Path
) -> dict[str, Any]:
    """One model through `edge-resnet bench` in a fresh process (memory figures are its own);
    its progress streams to our stderr, its JSON comes back."""
    out = work / f"{tflite.stem}.bench.json"
    args = [
        *(sys.executable, "-m", "edge_resnet", "bench", str(tflite), "--onnx", str(src), "--preset", preset),
        *("--calib", str(SAMPLES), "--threads", ",".join(map(str, threads)), "--runs", str(runs)),
        *("--warmup", "10", "--video", str(video), "--video-seconds", "15", "--cache-dir", str(work)),
        *("--json", str(out)),
    ]
    proc = subprocess.run(args, cwd=REPO, stdout=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise SystemExit(f"edge-resnet bench {tflite} failed with exit code {proc.returncode}")
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def _row(bench: dict[str, Any], backend: str, threads: int) -> dict[str, Any] | None:
    return next((r for r in bench["invoke"] if r["backend"] == backend and r["threads"] == threads), None)


def _pct(v: float | None) -> str:
    return f"{100 * v:.1f}%" if v is not None else "-"


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    threads = results["config"]["threads"]
    pk = m["packages"]
    lines = [
        "# Performance",
        "",
        f"Measured {results['created']} on **{m['cpu']}** ({m['cores']} cores, {', '.join(m['cpu_flags'])}), "
        f"{m['system']}, Python {m['python']}; ai-edge-litert {pk.get('ai-edge-litert', '-')}, "
        f"onnxruntime {pk.get('onnxruntime', '-')}; load average at start {m['load_average_at_start']} "
        "(a shared machine: compare ratios within a model, not absolute numbers across runs).",
        f"Invoke latency p50 in ms, batch 1, {results['config']['runs']} timed runs per cell; all cells of one model "
        "are measured interleaved in one process. Reproduce: `.venv/bin/python bench/readme_table.py`.",
        "",
        "| model | runtime | size MB | " + " | ".join(f"p50 ms @{t}T" for t in threads) + " | best fps | load ms | "
        "top-1 agreement vs FP32 | logit SQNR dB | top-1 |",
        "|---|---|---:|" + "---:|" * len(threads) + "---:|---:|---:|---:|---:|",
    ]
    for name, r in results["models"].items():
        for backend, label in BACKENDS.items():
            rows = [_row(r["bench"], backend, t) for t in threads]
            if not any(rows):
                continue
            fid = r["fidelity"].get(backend, {})
            best = max((x["fps"] for x in rows if x), default=0.0)
            load = min((x["load_ms"] for x in rows if x), default=0.0)
            agree = _pct(fid["top1_agreement"]) if "top1_agreement" in fid else "(reference)"
            sqnr = f"{fid['sqnr_db']:.1f}" if "sqnr_db" in fid else "-"
            top1 = _pct(fid.get("top1")) if MODELS[name].get("labels") else "n/a"
            lines.append(
                f"| {MODELS[name]['title']} | {label} | {r['sizes_mb'][backend]:.1f} | "
                + " | ".join(f"{x['p50_ms']:.2f}" if x else "-" for x in rows)
                + f" | {best:.1f} | {load:.0f} | {agree} | {sqnr} | {top1} |"
            )
    lines += ["", "Fidelity: " + results["fidelity_note"], ""]
    lines += ["## Ratios (issue 6), each from one interleaved run", ""]
    for name, r in results["models"].items():
        b = r["bench"]
        rt = b["ratios"]
        same = ", ".join(
            f"{d['tflite/ort-fp32']:.2f} @{t}T" for t, d in rt["same_threads"].items() if "tflite/ort-fp32" in d
        )
        best = rt["best"]
        scaling = ", ".join(f"{k} x{v['1->2']:.2f}" for k, v in rt.get("scaling", {}).items() if "1->2" in v)
        lines += [
            f"**{MODELS[name]['title']}**",
            "",
            f"- INT8 TFLite / onnxruntime FP32, same threads (goal <= 0.4): {same}",
            f"- INT8 TFLite best (@{best['tflite']['threads']}T, {best['tflite']['p50_ms']:.2f} ms) / onnxruntime INT8 "
            f"best (@{best['ort-int8']['threads']}T, {best['ort-int8']['p50_ms']:.2f} ms): "
            f"{best['tflite/ort-int8']:.2f}",
            f"- speed-up from 1 to 2 threads: {scaling}",
        ]
        for d in b.get("daemon") or []:
            lines.append(
                f"- daemon on a 1280x720 MJPG file @{d['threads']}T: {d['fps']:.1f} frames/s = "
                f"{d['fps_over_raw_invoke']:.2f} x the raw invoke rate (goal >= 0.9); frame age p50 "
                f"{d['frame_age_p50_ms']:.1f} ms, p99 {d['frame_age_p99_ms']:.1f} ms"
            )
        lines.append(
            "- preprocessing (`prepare`, frame -> input tensor) median (goal < 2 ms at 1280x720): "
            + ", ".join(f"{p['frame']} {p['p50_ms']:.2f} ms" for p in b["preprocess"])
        )
        mem = b["memory"]
        lines += [
            f"- peak RSS with the TFLite model loaded: {mem['peak_rss_tflite_only_mb']:.0f} MiB "
            f"(whole benchmark process: {mem['peak_rss_mb']:.0f} MiB)",
            "",
        ]
    lines += [
        "Daemon figures use the daemon's own capture thread and pipeline (`edge_resnet.pipeline`) on a file read "
        "without real-time pacing; the raw invoke rate is 1000 / mean invoke ms from the same run.",
        "",
        "![performance](performance.png)",
        "",
    ]
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["models"])
    threads = results["config"]["threads"]
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 4), dpi=110, squeeze=False)
    colors = {"ort-fp32": "#9aa5b1", "ort-int8": "#f0a04b", "tflite": "#2f7ed8"}
    for ax, name in zip(axes[0], names, strict=True):
        bench = results["models"][name]["bench"]
        width = 0.8 / len(BACKENDS)
        for i, (backend, label) in enumerate(BACKENDS.items()):
            rows = [_row(bench, backend, t) for t in threads]
            xs = [j + i * width for j, x in enumerate(rows) if x]
            ys = [x["p50_ms"] for x in rows if x]
            err = [x["p90_ms"] - x["p50_ms"] for x in rows if x]
            bars = ax.bar(xs, ys, width, yerr=[[0] * len(err), err], capsize=2, label=label, color=colors[backend])
            ax.bar_label(bars, fmt="%.1f", fontsize=7)
        ax.set_xticks(
            [j + 0.4 - width / 2 for j in range(len(threads))], [f"{t} thread{'s' * (t > 1)}" for t in threads]
        )
        ax.set_title(MODELS[name]["title"], fontsize=9)
        ax.set_ylabel("invoke p50 ms (whisker: p90)")
    axes[0][0].legend(fontsize=7)
    m = results["machine"]
    fig.suptitle(f"{m['cpu']}, {m['cores']} cores - {results['created']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# ---------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated subset of " + ",".join(MODELS))
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--calib-count", type=int, default=200)
    ap.add_argument(
        "--eval-count",
        type=int,
        default=200,
        help="evaluation images (conversion report and onnxruntime INT8 fidelity)",
    )
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    ap.add_argument("--work", type=Path, default=REPO / ".cache" / "bench")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    threads = tuple(int(t) for t in args.threads.split(","))
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    video = _video(args.work)

    results: dict[str, Any] = {
        "schema": "edge-resnet-readme-table/1",
        "created": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine(),
        "config": {"threads": list(threads), "runs": args.runs, "calib_count": args.calib_count},
        "models": {},
    }
    converted = {}
    for name in names:  # all conversions first, so the timed runs sit close together
        src = onnx_model(name, args.work)
        converted[name] = (src, *convert(name, src, args.work, args.calib_count, args.eval_count))
    for name in names:
        spec = PRESETS[MODELS[name]["preset"]]
        src, tflite, report, how = converted[name]
        log(f"== {MODELS[name]['title']}: edge-resnet bench")
        bench = bench_cli(tflite, src, MODELS[name]["preset"], threads, args.runs, video, args.work)
        log(f"== {MODELS[name]['title']}: onnxruntime INT8 fidelity on {args.eval_count} evaluation images")
        offset = 1 if "labels" in MODELS[name] else 0
        fid = fidelity(src, Path(bench["onnx"]["int8"]), spec, args.eval_count, offset)
        fid["tflite"] = (_report_fidelity(report) if report else None) or {}
        results["models"][name] = {
            "onnx": str(src),
            "tflite": str(tflite),
            "converted_by": how,
            "sizes_mb": {
                "ort-fp32": src.stat().st_size / 1e6,
                "ort-int8": Path(bench["onnx"]["int8"]).stat().st_size / 1e6,
                "tflite": bench["model"]["size_bytes"] / 1e6,
            },
            "fidelity": fid,
            "conversion_report": report,
            "bench": bench,
        }
    results["fidelity_note"] = (
        f"on the first {args.eval_count} evaluation images (labels.json positions not a multiple of 5; calibration "
        "used the other 200), logits against the FP32 ONNX model in onnxruntime. INT8 TFLite figures come from its "
        "conversion report (`edge-resnet convert`, run through the runtime's own classify path); onnxruntime INT8 "
        "is measured here. Generated ResNets have random weights: only agreement and SQNR mean anything for them."
    )
    write_json(results, args.out / "performance.json")
    (args.out / "README_table.md").write_text(markdown(results), encoding="utf-8")
    plot(results, args.out / "performance.png")
    log(f"wrote {args.out}/performance.json, README_table.md, performance.png")
    print((args.out / "README_table.md").read_text())
    return 0


def _report_fidelity(report: dict[str, Any]) -> dict[str, float] | None:
    """Top-1 agreement, logit SQNR and top-1 of the INT8 TFLite from the conversion report."""
    ev = report.get("evaluation") or {}
    if "top1_agreement_pct" not in ev:
        return None
    out = {"top1_agreement": ev["top1_agreement_pct"] / 100.0, "sqnr_db": float(ev["logit_sqnr_db"])}
    if ev.get("top1_int8_pct") is not None:
        out["top1"] = ev["top1_int8_pct"] / 100.0
    out["images"] = float(ev.get("images", 0))
    return out


if __name__ == "__main__":
    sys.exit(main())
