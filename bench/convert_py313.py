"""Issue 16's must-show figures: the TensorFlow-free conversion path on Python 3.13 against the
TensorFlow path on Python 3.11.

    .venv/bin/python bench/convert_py313.py                    # everything (about an hour on 2 cores)
    .venv/bin/python bench/convert_py313.py --only sizes mobilenet

- sizes: fresh venvs for Python 3.11 and 3.13 (this checkout's wheel, then `[convert]` on top):
  the conversion extra's installed size before (3.11: TensorFlow path) and after (3.13: no TensorFlow),
  and whether tensorflow is installed;
- mobilenet: the data's MobileNet v2 through `edge-resnet convert` on both paths, 200 calibration /
  800 evaluation images (the bundle checked through classify), one after the other so the times compare;
- resnets: `bench/convert_resnets.py` (model-zoo ResNets v1 18-152, v2 50 at 224) in the 3.13 venv,
  and a torchvision-style ResNet-50 export with a dynamic batch.

Venvs and outputs live in .cache/bench-py313/ (reused when present: --fresh rebuilds them).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / ".cache" / "bench-py313"
DATA = Path(os.environ.get("EDGE_RESNET_DATA", REPO.parent / "shared" / "data"))
PY = {"3.11": "/root/.pyenv/versions/3.11.7/bin/python3.11", "3.13": "/root/.pyenv/versions/3.13.0/bin/python3.13"}
README_SQNR = {"ResNet-18 v1 @224": 34.6, "ResNet-50 v1 @224": 34.7}  # README's table (TensorFlow path)


def sh(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, check=True, **kw)


def site_mb(venv: Path) -> float:
    (site,) = venv.glob("lib/python3.*/site-packages")
    total = sum(f.stat().st_size for f in site.rglob("*") if f.is_file() and not f.is_symlink())
    return total / 2**20


def wheel() -> Path:
    dist = CACHE / "dist"
    shutil.rmtree(dist, ignore_errors=True)
    sh([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dist), str(REPO)])
    (w,) = dist.glob("edge_resnet-*.whl")
    return w


def venv(py: str, fresh: bool) -> tuple[Path, dict[str, Any]]:
    """A venv with this checkout's wheel and its convert extra; sizes measured on the way."""
    exe = PY.get(py) or shutil.which(f"python{py}")
    if not exe or not Path(exe).exists():
        raise SystemExit(f"python{py} not found; set its path in PY at the top of {__file__}")
    v = CACHE / f"venv-{py}"
    info_file = v / "bench-install.json"
    if v.exists() and not fresh and info_file.exists():
        return v, json.loads(info_file.read_text())
    shutil.rmtree(v, ignore_errors=True)
    sh([exe, "-m", "venv", str(v)])
    pip = [str(v / "bin" / "python"), "-m", "pip", "install", "-q"]
    w = wheel()
    sh([*pip, str(w)])
    base = site_mb(v)
    t0 = time.monotonic()
    sh([*pip, f"{w}[convert]"])
    install_s = time.monotonic() - t0
    if py != "3.11":
        # README's convert-install step for machines without libxcb (harmless elsewhere)
        sh([*pip, "--force-reinstall", "--no-deps", "opencv-python-headless==4.13.0.92"])
    listed = json.loads(sh([str(v / "bin" / "python"), "-m", "pip", "list", "--format=json"]).stdout)
    pkgs = {p["name"].lower(): p["version"] for p in listed}
    info = {
        "python": py,
        "base_mb": round(base, 1),
        "with_convert_mb": round(site_mb(v), 1),
        "convert_extra_mb": round(site_mb(v) - base, 1),
        "convert_install_s": round(install_s, 1),
        "tensorflow": pkgs.get("tensorflow"),
        "onnx2tf": pkgs.get("onnx2tf"),
        "ai_edge_quantizer": pkgs.get("ai-edge-quantizer"),
    }
    info_file.write_text(json.dumps(info))
    return v, info


def mobilenet(v: Path, tag: str) -> dict[str, Any]:
    out = CACHE / f"mobilenet-{tag}"
    shutil.rmtree(out, ignore_errors=True)
    samples = DATA / "imagenet-samples"
    t0 = time.monotonic()
    proc = subprocess.run(
        [str(v / "bin" / "edge-resnet"), "convert", str(DATA / "models" / "mobilenet_v2_1.0_224.onnx"),
         "--calib", str(samples), "--eval", str(samples), "--preset", "inception",
         "--labels", str(DATA / "models" / "imagenet_labels_1001.txt"), "--out", str(out)],
        capture_output=True, text=True, check=False, env={**os.environ, "PATH": f"{v / 'bin'}:{os.environ['PATH']}"},
    )  # fmt: skip
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        return {"path": tag, "failed": proc.stderr.strip().splitlines()[-1:]}
    rep = json.loads(next(out.glob("*_int8.report.json")).read_text())
    ev = rep["evaluation"]
    q = rep["source"]["quantization"]
    t = q["timings_s"]
    return {
        "path": tag,
        "agreement_pct": ev["top1_agreement_pct"],
        "top1_drop_pts": ev["top1_drop_pts"],
        "sqnr_db": ev["logit_sqnr_db"],
        "images": ev["images"],
        "kept": q["method"],
        "delegate": rep["runtime"]["delegate"],
        "input": rep["runtime"]["input"]["dtype"],
        "conversion_s": round(sum(t.values()), 1),  # float model + calibration + quantization candidates
        "command_wall_s": round(wall, 1),  # with the 800-image evaluation
    }


def resnets(v: Path) -> list[dict[str, Any]]:
    proc = subprocess.run(
        [str(v / "bin" / "python"), str(REPO / "bench" / "convert_resnets.py"), "--eval-limit", "100"],
        capture_output=True, text=True, check=False, env={**os.environ, "PATH": f"{v / 'bin'}:{os.environ['PATH']}"},
    )  # fmt: skip
    rows = []
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            rows.append(json.loads(line.rsplit("}", 1)[0] + "}"))
        else:
            print(line)
    return rows


def dynamic_torchvision(v: Path) -> dict[str, Any]:
    sys.path.insert(0, str(REPO))
    import onnx

    from tests.helpers.resnet_onnx import make_resnet

    work = CACHE / "tv50"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    path = work / "resnet50-torchvision-dynbatch.onnx"
    onnx.save(make_resnet(50, 1, input_size=224, dynamic_batch=True, style="torchvision"), str(path))
    samples = DATA / "imagenet-samples"
    proc = subprocess.run(
        [str(v / "bin" / "edge-resnet"), "convert", str(path), "--calib", str(samples), "--eval", str(samples),
         "--eval-limit", "100", "--max-top1-drop", "100", "--out", str(work / "out")],
        capture_output=True, text=True, check=False, env={**os.environ, "PATH": f"{v / 'bin'}:{os.environ['PATH']}"},
    )  # fmt: skip
    if proc.returncode != 0:
        return {"model": path.name, "failed": proc.stderr.strip().splitlines()[-1:]}
    rep = json.loads(next((work / "out").glob("*_int8.report.json")).read_text())
    return {
        "model": "ResNet-50 torchvision, dynamic batch @224",
        "delegate": rep["runtime"]["delegate"],
        "int8_logit_sqnr_db": rep["evaluation"]["logit_sqnr_db"],
        "top1_agreement_pct": rep["evaluation"]["top1_agreement_pct"],
        "dynamic_batch_fixed_to_1": rep["source"]["dynamic_batch_fixed_to_1"],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="+", choices=["sizes", "mobilenet", "resnets"], default=["sizes", "mobilenet",
                    "resnets"])  # fmt: skip
    ap.add_argument("--fresh", action="store_true", help="rebuild the venvs")
    args = ap.parse_args()
    CACHE.mkdir(parents=True, exist_ok=True)
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), "?")  # fmt: skip
    print(f"CPU: {cpu}, {os.cpu_count()} cores")
    v311, i311 = venv("3.11", args.fresh)
    v313, i313 = venv("3.13", args.fresh)
    failed = 0
    if "sizes" in args.only:
        for i in (i311, i313):
            print(f"Python {i['python']}: [convert] adds {i['convert_extra_mb']} MB to a {i['base_mb']} MB device "
                  f"install ({i['with_convert_mb']} MB in all; installed in {i['convert_install_s']} s); "
                  f"tensorflow {i['tensorflow'] or 'not installed'}, onnx2tf {i['onnx2tf']}, "
                  f"ai-edge-quantizer {i['ai_edge_quantizer'] or '-'}")
        failed += i313["tensorflow"] is not None
    if "mobilenet" in args.only:
        new = mobilenet(v313, "py313-litert")
        old = mobilenet(v311, "py311-tf")
        for row in (old, new):
            print("MobileNet v2:", json.dumps(row))
        ok = (new.get("agreement_pct", 0) >= 98.4 and new.get("top1_drop_pts", 9) <= 0.3
              and new.get("conversion_s", 1e9) <= old.get("conversion_s", 0))  # fmt: skip
        print("MobileNet v2 goal (>= 98.4% agreement, <= 0.3 pts drop, no slower):", "MET" if ok else "NOT MET")
        failed += not ok
    if "resnets" in args.only:
        rows = [*resnets(v313), dynamic_torchvision(v313)]
        for row in rows:
            ref = README_SQNR.get(str(row.get("model")))
            note = f" (README table {ref} dB: {row['int8_logit_sqnr_db'] - ref:+.2f})" if ref else ""
            ok = row.get("delegate") == "xnnpack" and row.get("int8_logit_sqnr_db", 0) >= 25.0
            failed += not ok
            print(json.dumps(row) + note, "OK" if ok else "BELOW GOAL")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
