"""Issue 4, must-show 1, end to end through the CLI: `edge-resnet run` on a video made from ImageNet
photos publishes state and events to a real mosquitto whose labels match the photo on screen;
availability is retained `online`, then `offline` after SIGTERM and (Last Will) after kill -9;
the Home Assistant discovery config is retained and valid."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from edge_resnet.classify import Classifier, read_labels
from edge_resnet.engine import Engine
from tests.helpers.broker import Broker, Subscriber, broker, retained
from tests.helpers.run_child import RunChild
from tests.helpers.video import Sample, pick_samples, write_video

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

__all__ = ["broker"]  # the fixture

N_PHOTOS = 10
SECONDS_EACH = 2.0
FPS = 10.0
SIZE = (320, 240)


class Daemon(RunChild):
    """`edge-resnet run` as a child process; stderr kept for failure messages."""

    def __init__(self, args: list[str], state_dir: Path) -> None:
        super().__init__(args, dict(os.environ, STATE_DIRECTORY=str(state_dir), PYTHONUNBUFFERED="1"))

    def tail(self, n: int = 30) -> str:
        return super().tail(n)


def recognisable(samples_dir: Path, model: Path, labels: Path, tmp: Path) -> tuple[list[Sample], int]:
    """Photos the model gets right as they come out of the test video (fitted to SIZE, MJPG-compressed):
    the test measures the daemon (timing, smoothing, MQTT), not the model's accuracy. Also returns how
    many candidates were looked at."""
    import cv2

    candidates = pick_samples(samples_dir, 30, start=3, step=23)
    probe = tmp / "probe.avi"
    write_video(probe, candidates, seconds_each=1 / FPS, fps=FPS, size=SIZE)  # one frame per photo
    cap = cv2.VideoCapture(str(probe))
    clf = Classifier(Engine.load(model), read_labels(labels))
    chosen: list[Sample] = []
    looked = 0
    for s in candidates:
        got, frame = cap.read()
        assert got, "cannot read the probe video back"
        looked += 1
        if clf.classify(cast("npt.NDArray[np.uint8]", frame), k=1).top.class_index == s.class_index:  # 8-bit BGR
            chosen.append(s)
        if len(chosen) == N_PHOTOS:
            break
    cap.release()
    return chosen, looked


def test_run_publishes_labels_of_the_photo_on_screen(
    broker: Broker, samples_dir: Path, mobilenet_quant: Path, labels_1001: Path, tmp_path: Path
) -> None:
    photos, looked = recognisable(samples_dir, mobilenet_quant, labels_1001, tmp_path)
    assert len(photos) == N_PHOTOS
    print(f"\nphotos: {N_PHOTOS} the model recognises as video frames (of {looked} looked at)")
    video = tmp_path / "photos.avi"
    schedule = write_video(video, photos, seconds_each=SECONDS_EACH, fps=FPS, size=SIZE)
    total_frames = round(schedule[-1].end_s * FPS)
    state_dir = tmp_path / "state"
    base = "edge-resnet/test"
    sub = Subscriber(broker.port, [f"{base}/#", "homeassistant/#"]).start()
    args = [
        "--model", str(mobilenet_quant), "--labels", str(labels_1001), "--source", str(video), "--loop",
        "--mqtt", broker.url, "--device-id", "test",
    ]  # fmt: skip

    # Run 1: play the whole video once (plus a little), then SIGTERM.
    d = Daemon(args, state_dir)
    try:

        def seen_frame(ms: list[Any]) -> int:
            seqs = [m.json().get("frame_seq") for m in ms if m.topic in (f"{base}/events", f"{base}/state")]
            return max([s for s in seqs if isinstance(s, int)], default=-1)

        played = sub.wait_for(lambda ms: seen_frame(ms) >= total_frames + 5, schedule[-1].end_s + 40)
        assert played, f"the daemon did not get through the video; stderr:\n{d.tail()}"

        av = retained(broker.port, f"{base}/availability")
        assert av is not None and av.text == "online"
        disc = retained(broker.port, "homeassistant/device/test/config")  # device-based, the default
        assert disc is not None, "no retained discovery config"
        doc = disc.json()
        assert doc["dev"]["name"] == "test" and doc["avty_t"] == f"{base}/availability"
        cfg = doc["cmps"]["label"]
        for key in ("p", "name", "uniq_id", "stat_t", "val_tpl", "json_attr_t"):
            assert key in cfg, f"the label component lacks {key}"
        assert cfg["p"] == "sensor" and cfg["stat_t"] == f"{base}/state"
        st = retained(broker.port, f"{base}/state")
        assert st is not None
        for key in ("label", "score", "class_index", "top_k", "frame_seq", "captured_at", "published_at", "model"):
            assert key in st.json(), f"state lacks {key}"

        t0 = time.monotonic()
        d.p.send_signal(signal.SIGTERM)
        code = d.p.wait(10)
        took = time.monotonic() - t0
        assert code == 0, f"exit {code} after SIGTERM; stderr:\n{d.tail()}"
        print(f"SIGTERM: exit 0 in {took:.2f} s")
        assert took < 5.0
    finally:
        d.kill()
    av = retained(broker.port, f"{base}/availability")
    assert av is not None and av.text == "offline", "availability is not retained offline after SIGTERM"

    # What was on screen when each label was published (frame_seq -> video time), first pass only.
    msgs = [(m.topic.rsplit("/", 1)[1], m.json()) for m in sub.on(f"{base}/events") + sub.on(f"{base}/state")]
    events = [doc for kind, doc in msgs if kind == "events"]
    matched = 0
    for i, seg in enumerate(schedule):
        lo, hi = round(seg.start_s * FPS), round(seg.end_s * FPS)
        here = [doc for _, doc in msgs if isinstance(doc.get("frame_seq"), int) and lo <= doc["frame_seq"] < hi]
        ok = any(doc["class_index"] == seg.sample.class_index for doc in here)
        matched += ok
        got = sorted({doc["label"] for doc in here})
        print(f"  photo {i}: {seg.sample.name!r:32} published {got}{'' if ok else '   <-- no match'}")
    wrong = [
        e
        for e in events
        if e["frame_seq"] < total_frames
        and e["class_index"]
        != schedule[min(int(e["frame_seq"] // (SECONDS_EACH * FPS)), N_PHOTOS - 1)].sample.class_index
    ]
    seqs = [int(e["seq"]) for e in events]
    pct = 100.0 * matched / N_PHOTOS
    print(f"label match: {matched}/{N_PHOTOS} photos = {pct:.0f}% (need >= 90%); {len(events)} events, "
          f"{len(wrong)} with a label not on screen; event seq {seqs[:3]}..{seqs[-1:]}")  # fmt: skip
    assert pct >= 90.0
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)

    # Run 2: the same state dir; availability online again, then kill -9 -> Last Will `offline`.
    n_before = len(sub.messages)
    d = Daemon(args, state_dir)
    try:

        def online_again(ms: list[Any]) -> bool:
            return any(m.topic == f"{base}/availability" and m.text == "online" for m in ms[n_before:])

        assert sub.wait_for(online_again, 30), f"no `online` after restart; stderr:\n{d.tail()}"
        assert sub.wait_for(lambda ms: any(m.topic == f"{base}/events" for m in ms[n_before:]), 20)
        d.p.send_signal(signal.SIGKILL)
        d.p.wait(5)
    finally:
        d.kill()

    def offline_again(ms: list[Any]) -> bool:
        av = [m for m in ms[n_before:] if m.topic == f"{base}/availability"]
        return bool(av) and av[-1].text == "offline"

    assert sub.wait_for(offline_again, 10), "no Last Will after kill -9"
    av = retained(broker.port, f"{base}/availability")
    assert av is not None and av.text == "offline"
    later = [int(m.json()["seq"]) for m in sub.on(f"{base}/events")][len(events) :]
    assert later and min(later) > max(seqs), "event seq must keep increasing across restarts"
    print(f"after restart: events continue at seq {min(later)}; Last Will `offline` retained after kill -9")
    sub.stop()
