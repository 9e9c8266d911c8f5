"""`edge-resnet demo`: ResNet-50 from the ONNX model zoo -> INT8 bundle -> the daemon on a test video,
with the live overlay on http://127.0.0.1:8080.

Every step takes a local file instead of the network, so the demo runs offline:
  --onnx FILE      skip the download of ResNet-50 v1 (add --labels, and --preset if it is not imagenet)
  --images DIR     skip the download of the ImageNet sample photos
  --model FILE     skip the conversion (a .tflite or bundle; add --labels for a plain .tflite)
e.g. with the repository's test data (MobileNet v2, converted on the spot):
  edge-resnet demo --onnx ../shared/data/models/mobilenet_v2_1.0_224.onnx --preset inception \
      --labels ../shared/data/models/imagenet_labels_1001.txt --images ../shared/data/imagenet-samples
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from .. import download as downloader
from ..config import Config, ModelConfig, PipelineConfig
from ..errors import DependencyError, EdgeResnetError, InputError
from ..images import list_images, load_image
from ..sinkconfig import HttpConfig, MqttConfig, StdoutConfig
from ..sourceconfig import FileSource

log = logging.getLogger(__name__)

RESNET50_URL = "https://github.com/onnx/models/raw/main/validated/vision/classification/resnet/model/resnet50-v1-7.onnx"
SYNSET_URL = "https://raw.githubusercontent.com/onnx/models/main/validated/vision/classification/synset.txt"
SAMPLES_URL = "https://raw.githubusercontent.com/EliSchwartz/imagenet-sample-images/master/{name}"
# One public ImageNet photo per class; varied subjects so the label visibly changes.
SAMPLE_NAMES = [
    "n01440764_tench.JPEG",
    "n01531178_goldfinch.JPEG",
    "n02056570_king_penguin.JPEG",
    "n02099601_golden_retriever.JPEG",
    "n02123045_tabby.JPEG",
    "n02391049_zebra.JPEG",
    "n02504458_African_elephant.JPEG",
    "n02690373_airliner.JPEG",
    "n02980441_castle.JPEG",
    "n04285008_sports_car.JPEG",
    "n07753592_banana.JPEG",
    "n07873807_pizza.JPEG",
    "n07920052_espresso.JPEG",
    "n09472597_volcano.JPEG",
    "n11939491_daisy.JPEG",
    "n03452741_grand_piano.JPEG",
]
# More of the same set, for calibration only (INT8 ranges need more than a handful of photos).
CALIB_NAMES = [
    "n01496331_electric_ray.JPEG",
    "n01751748_sea_snake.JPEG",
    "n01986214_hermit_crab.JPEG",
    "n02094114_Norfolk_terrier.JPEG",
    "n02108915_French_bulldog.JPEG",
    "n02172182_dung_beetle.JPEG",
    "n02480495_orangutan.JPEG",
    "n02793495_barn.JPEG",
    "n02988304_CD_player.JPEG",
    "n03271574_electric_fan.JPEG",
    "n03584254_iPod.JPEG",
    "n03785016_moped.JPEG",
    "n03950228_pitcher.JPEG",
    "n04162706_seat_belt.JPEG",
    "n04376876_syringe.JPEG",
    "n04590129_window_shade.JPEG",
    "n07880968_burrito.JPEG",
]

DESCRIPTION = __doc__


def register(sub: Any, name: str, helptext: str) -> None:
    p = sub.add_parser(name, help=helptext, description=DESCRIPTION, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--onnx", help="a local ONNX ImageNet classifier instead of downloading ResNet-50 v1")
    p.add_argument("--images", help="a folder of photos instead of downloading ImageNet samples")
    p.add_argument("--model", "-m", help="a converted .tflite / bundle: skips the conversion")
    p.add_argument("--labels", help="labels file (needed for a plain .tflite or an ONNX model without labels)")
    p.add_argument(
        "--preset",
        default="imagenet",
        help="preprocessing the ONNX model was trained with: imagenet (ResNet, default), inception, caffe, raw",
    )
    p.add_argument("--work", help="where downloads, the converted model and the video go (default: the cache)")
    p.add_argument("--count", type=int, default=8, help="photos in the test video (default 8)")
    p.add_argument("--seconds-each", type=float, default=3.0, help="how long each photo is on screen (default 3)")
    p.add_argument("--http", default="127.0.0.1:8080", metavar="HOST:PORT", help="overlay address (127.0.0.1:8080)")
    p.add_argument("--no-http", action="store_true", help="no overlay: JSON lines on stdout only")
    p.add_argument("--mqtt", metavar="URL", help="also publish to this MQTT broker")
    p.add_argument("--device", choices=("cpu", "edgetpu", "auto"), default="cpu")
    p.add_argument("--duration", type=float, metavar="S", help="stop after S seconds (default: until Ctrl-C)")
    p.add_argument("--max-frames", type=int, metavar="N", help="stop after N classified frames")
    p.set_defaults(func=demo)


def work_dir(arg: str | None) -> Path:
    if arg:
        d = Path(arg)
    else:
        cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        d = cache / "edge-resnet" / "demo"
    d.mkdir(parents=True, exist_ok=True)
    return d


LOCAL_FILES = (
    "pass local files: --onnx MODEL.onnx --labels LABELS.txt --images DIR converts your model "
    "(--model MODEL.tflite --labels LABELS.txt skips the conversion)"
)
OFFLINE = f"offline, {LOCAL_FILES}"


def download(url: str, dest: Path, timeout: float = 60.0, verify: Callable[[Path], None] | None = None) -> Path:
    """A demo file, kept in the cache, through the one resumable, verifying downloader; a one-line
    error names the offline alternative."""
    return downloader.download(
        url,
        dest,
        timeout=timeout,
        verify=verify,
        http_hint=OFFLINE,
        retry_hint=f"run the demo again to resume, or {OFFLINE}",
        offline_hint=LOCAL_FILES,
    )


def _photo(path: Path) -> None:
    """A sample photo must decode (an HTML error page must not become a frame)."""
    load_image(path)


def sample_images(args: argparse.Namespace, work: Path) -> list[Path]:
    if args.images:
        found = list_images([args.images], recursive=True)
        if not found:
            raise InputError(f"{args.images} holds no images; pass a folder of .jpg/.png photos")
        # spread the picks over the folder (a sorted ImageNet folder starts with 30 fish and birds)
        step = max(1, len(found) // max(1, args.count))
        return found[::step][: args.count]
    d = work / "images"
    d.mkdir(exist_ok=True)
    shown = [download(SAMPLES_URL.format(name=n), d / n, verify=_photo) for n in SAMPLE_NAMES[: args.count]]
    if not args.model:  # converting: the whole set calibrates
        for n in SAMPLE_NAMES[args.count :] + CALIB_NAMES:
            download(SAMPLES_URL.format(name=n), d / n, verify=_photo)
    return shown


def make_video(
    images: list[Path], out: Path, seconds_each: float, fps: float = 10.0, size: tuple[int, int] = (640, 480)
) -> Path:
    """An MJPG .avi holding each photo for `seconds_each` seconds (scaled to cover, centre-cropped)."""
    w, h = size
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter.fourcc(*"MJPG"), fps, size)
    if not writer.isOpened():
        raise DependencyError(f"OpenCV cannot write {out}; install opencv-python-headless with FFmpeg support")
    try:
        for p in images:
            img = load_image(p)
            s = max(w / img.shape[1], h / img.shape[0])
            r = cv2.resize(img, (max(w, round(img.shape[1] * s)), max(h, round(img.shape[0] * s))))
            y0, x0 = (r.shape[0] - h) // 2, (r.shape[1] - w) // 2
            frame = np.ascontiguousarray(r[y0 : y0 + h, x0 : x0 + w])
            for _ in range(max(1, round(seconds_each * fps))):
                writer.write(frame)
    finally:
        writer.release()
    return out


def labels_for_1000(path: Path, work: Path) -> Path:
    """A 1000-line labels file: synset ids stripped, a leading "background" dropped."""
    lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if lines and lines[0].lower() == "background":
        lines = lines[1:]
    lines = [ln.split(" ", 1)[1] if ln[:1] == "n" and ln[1:9].isdigit() and " " in ln else ln for ln in lines]
    out = work / "labels_1000.txt"
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out


def convert_model(args: argparse.Namespace, work: Path, images_dir: Path) -> Path:
    """ONNX (given or ResNet-50 v1 downloaded) -> verified INT8 bundle, through the convert package."""
    try:  # the workstation-only extra, imported by name: the device install does not have it
        convert_pipeline: Any = importlib.import_module("edge_resnet.convert.pipeline")
    except ImportError as e:
        raise DependencyError(
            f"converting needs the convert extra ({e}); pip install 'edge-resnet[convert]', "
            "or pass an already converted model with --model"
        ) from None
    from ..preprocess import preset

    onnx_model: Any = importlib.import_module("edge_resnet.convert.onnx_model")

    def classifier(path: Path) -> None:  # as `edge-resnet fetch` checks the zoo's files
        onnx_model.load_classifier(path)

    onnx = Path(args.onnx) if args.onnx else download(RESNET50_URL, work / "resnet50-v1-7.onnx", 300, classifier)
    if not onnx.is_file():
        raise InputError(f"--onnx {onnx} does not exist; pass an ONNX ImageNet classifier")
    if args.labels:
        labels = Path(args.labels)
    elif args.onnx:
        labels = None
    else:
        labels = labels_for_1000(download(SYNSET_URL, work / "synset.txt"), work)
    out = work / "model"
    out.mkdir(exist_ok=True)
    for cached in (out / f"{onnx.stem}_int8.tflite", out / f"{onnx.stem}_int8.unverified.tflite"):
        if cached.exists() and cached.stat().st_mtime >= onnx.stat().st_mtime:
            log.info("using %s converted earlier (delete it to convert again)", cached)
            return cached
    job = convert_pipeline.ConvertJob(
        onnx=onnx,
        calib=images_dir,
        out=out,
        preprocess=preset(args.preset),
        labels=labels,
        eval_limit=200,  # a quick fidelity look; `edge-resnet convert` does the full evaluation
        max_top1_drop=None,  # a handful of demo photos cannot judge fidelity, so no gate here
        min_agreement=None,
    )
    if not convert_pipeline.plan_evaluation(job).items:  # too few photos to hold some out: say so in its name
        job = dataclasses.replace(job, no_eval=True)
    log.info("converting %s to INT8 (this takes a few minutes the first time)", onnx.name)
    try:
        result = convert_pipeline.run(job)
    except EdgeResnetError:
        raise
    log.info("converted: %s (report %s)", result.bundle, result.report_md)
    return Path(result.bundle)


def demo(args: argparse.Namespace) -> int:
    from ..daemon import Daemon

    work = work_dir(args.work)
    images = sample_images(args, work)
    video = make_video(images, work / "demo.avi", args.seconds_each)
    log.info("test video %s: %d photos, %.0f s each", video, len(images), args.seconds_each)
    if args.model:
        model = Path(args.model)
        labels = args.labels
    else:
        calib = Path(args.images) if args.images else images[0].parent
        model = convert_model(args, work, calib)
        labels = None  # the bundle carries them
    cfg = Config(
        device_id="edge-resnet-demo",
        state_dir=str(work / "state"),
        model=ModelConfig(path=str(model), labels=str(labels) if labels else None, device=args.device),
        source=FileSource(path=str(video), loop=True, realtime=True),
        pipeline=PipelineConfig(smoothing="hysteresis", window=3),
        sinks={
            **({"mqtt": MqttConfig(url=args.mqtt)} if args.mqtt else {}),
            **({} if args.no_http else {"http": HttpConfig(listen=args.http)}),
            "stdout": StdoutConfig(enabled=True),
        },
    )
    if cfg.http is not None:  # with --no-http stdout is JSON lines only; the log line above names the video
        host, _, port = args.http.rpartition(":")
        shown = "127.0.0.1" if host in ("", "0.0.0.0") else host
        print(f"edge-resnet demo: playing {video}; open http://{shown}:{port}/ (Ctrl-C to stop)", flush=True)
    return Daemon(cfg, max_frames=args.max_frames, duration_s=args.duration, watch_model=False).run()
