"""Prepare what every lab machine uses, on the host (the workstation side of a user's first day):
the wheel built from this checkout, INT8 bundles made by `edge-resnet convert` (under the usual umask
022, as a user would) of a generated ResNet-18 and of the test data's trained MobileNet v2, and a short
test video; and a signing key with three signed MobileNet v2 bundles for the fleet rollout (issue 23).
Writes `.cache/lab/host.json`.

    .venv/bin/python tests/lab/prepare.py
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

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.helpers import fleet_models as fm  # noqa: E402
from tests.helpers.own_tasks import fingerprint, states_task, write_folders  # noqa: E402
from tests.helpers.resnet_onnx import make_resnet  # noqa: E402
from tests.helpers.video import pick_samples, write_video  # noqa: E402

LAB = Path(os.environ.get("EDGE_RESNET_LAB_CACHE", REPO / ".cache" / "lab")).resolve()
DATA = Path(os.environ.get("EDGE_RESNET_DATA", REPO.parent / "shared" / "data")).resolve()
# small enough that 100 images classify in about a minute under qemu, big enough to be a real ResNet-18
RESNET_SIZE = 96


def build_wheel(dist: Path) -> Path:
    dist.mkdir(parents=True, exist_ok=True)
    for old in dist.glob("*.whl"):
        old.unlink()
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dist), str(REPO)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    (wheel,) = dist.glob("edge_resnet-*.whl")
    return wheel


def convert(onnx_path: Path, out: Path, *extra: str) -> tuple[Path, float]:
    """`edge-resnet convert`, as a user runs it (umask 022): calibrated and verified on the data's split."""
    t0 = time.monotonic()
    old = os.umask(0o022)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "edge_resnet", "convert", str(onnx_path), "--calib", str(DATA / "imagenet-samples"),
             "--out", str(out), "--calib-count", "64", "--eval-limit", "100", *extra],
            capture_output=True, text=True, cwd=out.parent,
        )  # fmt: skip
    finally:
        os.umask(old)
    if proc.returncode != 0:
        raise SystemExit(f"lab: prepare: edge-resnet convert {onnx_path.name} failed ({proc.returncode}):\n"
                         f"{proc.stderr[-3000:]}")  # fmt: skip
    (bundle,) = out.glob("*_int8.tflite")
    return bundle, time.monotonic() - t0


def convert_resnet18(work: Path) -> tuple[Path, float]:
    """A generated model-zoo ResNet-18 v1 (random weights: for loading, the service and speed, not accuracy;
    the top-1 gate cannot mean anything for it)."""
    work.mkdir(parents=True, exist_ok=True)
    onnx_path = work / "resnet18-v1.onnx"
    import onnx

    onnx.save(make_resnet(18, version=1, input_size=RESNET_SIZE, seed=18), str(onnx_path))
    return convert(onnx_path, work / "out", "--max-top1-drop", "100")


def convert_mobilenet(work: Path) -> tuple[Path, float]:
    """The trained MobileNet v2 of the test data, converted by us: a bundle whose top-1 means something,
    for comparing aarch64 with x86 (a random network's top-1 is mostly near-ties between two classes)."""
    work.mkdir(parents=True, exist_ok=True)
    models = DATA / "models"
    return convert(models / "mobilenet_v2_1.0_224.onnx", work / "out", "--preset", "inception",
                   "--labels", str(models / "imagenet_labels_1001.txt"))  # fmt: skip


STATES_K = 10  # examples a state for `learn`
STATES_TEST = 100  # test frames both machines classify with their own learned model


def states_folders(work: Path) -> dict[str, object]:
    """Issue 20's fixed-camera states task (tests/helpers/own_tasks.py, large objects): 10 examples a
    state as class folders of JPEGs, and the first 100 of the other frames as PNGs (lossless, so x86
    and arm64 read the same pixels)."""
    task = states_task(DATA, "large", STATES_K + 34, seed=0)
    ex, test = work / "examples", work / "test"
    rows = write_folders(task, ex, test, STATES_K, seed=0)
    keep = rows[:STATES_TEST]
    for path, _ in rows[STATES_TEST:]:
        path.unlink()
    return {"examples": str(ex), "test": str(test), "truth": {p.name: c for p, c in keep},
            "fingerprint": fingerprint(task), "classes": task.classes}  # fmt: skip


def edge_resnet(*args: str) -> str:
    """The workstation's `edge-resnet` command (umask 022, as a user runs it); its stdout."""
    old = os.umask(0o022)
    try:
        proc = subprocess.run([sys.executable, "-m", "edge_resnet", *args], capture_output=True, text=True)
    finally:
        os.umask(old)
    if proc.returncode != 0:
        raise SystemExit(f"lab: prepare: edge-resnet {' '.join(args)} failed ({proc.returncode}):\n"
                         f"{proc.stderr[-3000:]}")  # fmt: skip
    return proc.stdout


def fleet_bundles(work: Path) -> dict[str, object]:
    """Issue 23's rollout on the workstation side: a signing key from `edge-resnet keygen` and three
    bundles of the test data's published MobileNet v2 signed with `edge-resnet sign`: version 1 (the
    admin installs it), version 2 (the same network: a rollout applies it) and version 3, a model that
    says one label on every frame (tests/helpers/fleet_models.py), which the device must roll back."""
    if work.exists():
        shutil.rmtree(work)
    edge_resnet("keygen", "--out", str(work / "keys"))
    (pub,) = (work / "keys").glob("*.pub")
    models = DATA / "models"
    flat = (models / "mobilenet_v2_1.0_224_quant.tflite").read_bytes()
    labels = models / "imagenet_labels_1001.txt"
    served = work / "served"
    served.mkdir(parents=True)
    names = {1: "mobilenet-v1.tflite", 2: "mobilenet-v2.tflite", 3: "same-label-v3.tflite"}
    for version, name in names.items():
        fm.bundle(fm.constant_label(flat, 3) if version == 3 else flat, labels, served / name)
        (served / name).chmod(0o644)
        edge_resnet("sign", str(served / name), "--key", str(pub.with_suffix(".key")), "--version", str(version))
    bundles = {str(v): n for v, n in names.items()}
    return {"served": str(served), "pub": str(pub), "key_id": pub.stem, "bundles": bundles}


def main() -> int:
    argparse.ArgumentParser(description=__doc__).parse_args()
    if not (DATA / "README.md").exists():
        raise SystemExit(f"lab: prepare: test data not found at {DATA}; set EDGE_RESNET_DATA")
    work = LAB / "work"
    wheel = build_wheel(LAB / "dist")
    bundle, secs = convert_resnet18(work / "resnet18")
    mobilenet, m_secs = convert_mobilenet(work / "mobilenet")
    picks = pick_samples(DATA / "imagenet-samples", 3)
    video = work / "three_photos.avi"
    # 8 frames per photo: with the default hysteresis window of 3, each photo is one label change
    write_video(video, picks, seconds_each=0.8, fps=10, size=(320, 240))
    # the emulated arm64 device classifies MobileNet v2 at about a frame a second while the other
    # emulated parts run: the window of 3 needs 3 classified frames of one photo, so 5 s each there
    slow = work / "three_photos_5s.avi"
    write_video(slow, picks, seconds_each=5, fps=10, size=(320, 240))
    states = states_folders(work / "states")
    fleet = fleet_bundles(work / "fleet")
    state = {
        "states": states,
        "fleet": fleet,
        "wheel": str(wheel),
        "resnet18_bundle": str(bundle),
        "resnet18_convert_s": round(secs, 1),
        "mobilenet_bundle": str(mobilenet),
        "mobilenet_convert_s": round(m_secs, 1),
        "video": str(video),
        "video_emulated": str(slow),
        "video_classes": [p.class_index for p in picks],
        "data": str(DATA),
    }
    (LAB / "host.json").write_text(json.dumps(state, indent=2) + "\n")
    print(f"== lab: prepared wheel {wheel.name}, ResNet-18 and MobileNet v2 bundles ({secs:.0f} s and {m_secs:.0f} s "
          "to convert), test video, signed fleet bundles v1..v3")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
