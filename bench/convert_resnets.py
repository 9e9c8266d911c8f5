"""Must-shows 3 and 5 of issue 3: convert generated model-zoo ResNets and print the numbers.

    .venv/bin/python bench/convert_resnets.py                      # 18/34/50/101/152 v1 + 50 v2 at 224
    .venv/bin/python bench/convert_resnets.py --models 50v1 --calib-count 200   # timing run (must-show 5)

Each conversion runs in its own process, so wall time and peak RSS are that conversion's alone.
Calibration uses the calibration split of the ImageNet samples; evaluation the evaluation split.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DEFAULT_MODELS = ["18v1", "34v1", "50v1", "101v1", "152v1", "50v2"]


def convert_one(spec: str, size: int, calib_count: int, eval_limit: int, data: Path, work: Path) -> dict[str, object]:
    """Runs inside the child process."""
    import onnx

    from edge_resnet.convert.pipeline import ConvertJob, run
    from edge_resnet.engine import Engine
    from edge_resnet.preprocess import PRESETS
    from tests.helpers.resnet_onnx import make_resnet

    depth, version = int(spec.split("v")[0]), int(spec.split("v")[1])
    onnx_path = work / f"resnet{depth}-v{version}-{size}.onnx"
    onnx.save(make_resnet(depth, version, input_size=size), str(onnx_path))
    samples = data / "imagenet-samples"
    t0 = time.perf_counter()
    result = run(
        ConvertJob(
            onnx=onnx_path,
            calib=samples,
            eval_dir=samples,
            out=work / onnx_path.stem,
            preprocess=PRESETS["imagenet"],
            calib_count=calib_count,
            eval_limit=eval_limit,
            max_top1_drop=None,  # random weights: ImageNet accuracy is meaningless
        )
    )
    wall = time.perf_counter() - t0
    ev = result.report["evaluation"]
    return {
        "model": f"ResNet-{depth} v{version} @{size}",
        "delegate": Engine.load(result.bundle).delegate,
        "fp32_tflite_vs_onnx_max_abs_diff": result.report["float_tflite_vs_onnx_max_abs_diff"],
        "int8_logit_sqnr_db": ev["logit_sqnr_db"],
        "top1_agreement_pct": ev["top1_agreement_pct"],
        "eval_images": ev["images"],
        "calib_images": result.report["source"]["calibration"]["images"],
        "int8_mb": round(result.report["sizes_bytes"]["int8_tflite"] / 1e6, 2),
        "invoke_ms": result.report["runtime"]["invoke_ms_median"],
        "wall_s": round(wall, 1),
        "stage_s": result.report["source"]["quantization"]["timings_s"],
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=DEFAULT_MODELS, help="e.g. 18v1 50v2")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--calib-count", type=int, default=200)
    ap.add_argument("--eval-limit", type=int, default=100)
    default_data = Path(os.environ.get("EDGE_RESNET_DATA", REPO.parent / "shared" / "data"))
    ap.add_argument("--data", type=Path, default=default_data)
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        row = convert_one(args.one, args.size, args.calib_count, args.eval_limit, args.data, args.work)
        print("RESULT " + json.dumps(row))
        return 0
    failed = 0
    with tempfile.TemporaryDirectory(prefix="bench-convert-") as tmp:
        for spec in args.models:
            cmd = [
                sys.executable,
                __file__,
                "--one",
                spec,
                "--size",
                str(args.size),
                "--calib-count",
                str(args.calib_count),
                "--eval-limit",
                str(args.eval_limit),
                "--data",
                str(args.data),
                "--work",
                tmp,
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if proc.returncode != 0 or line is None:
                failed += 1
                print(f"{spec}: FAILED (exit {proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}", flush=True)
                continue
            row = json.loads(line[7:])
            ok = row["int8_logit_sqnr_db"] >= 25.0 and row["delegate"] == "xnnpack"
            failed += not ok
            print(json.dumps(row), "OK" if ok else "BELOW GOAL", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
