"""Annotated video file sink: frames are written at the configured rate and read back annotated."""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_resnet.annotate import TOP1_COLOUR
from edge_resnet.errors import ConfigError
from edge_resnet.sinkconfig import VideoConfig
from edge_resnet.sinks.video import VideoSink
from tests.helpers.observations import classify_samples, observation, synthetic_samples


def test_config_errors() -> None:
    with pytest.raises(ConfigError, match="path"):
        VideoConfig(path="out.gif")
    with pytest.raises(ConfigError, match="fps"):
        VideoConfig(path="out.avi", fps=0)


def test_writes_annotated_video(mobilenet_quant: Path, labels_1001: Path, samples_dir: Path, tmp_path: Path) -> None:
    photos = classify_samples(mobilenet_quant, labels_1001, samples_dir, 2)
    out = tmp_path / "sub" / "annotated.avi"
    sink = VideoSink(VideoConfig(path=str(out), fps=10.0))
    sink.start()
    t_end = time.monotonic() + 1.5
    seq = 0
    while time.monotonic() < t_end:  # a 50 fps pipeline; the video keeps 10 fps
        seq += 1
        sink.publish(observation(photos[(seq // 25) % 2], seq, changed=seq % 25 == 0))
        time.sleep(0.02)
    sink.stop(3.0)
    ok, reason = sink.healthy()
    print(f"\n{reason}")
    assert ok and sink.dropped == 0
    assert 12 <= sink.written <= 18, sink.written  # ~1.5 s at 10 fps
    cap = cv2.VideoCapture(str(out))
    frames = []
    while True:
        got, frame = cap.read()
        if not got:
            break
        frames.append(frame)
    cap.release()
    assert len(frames) == sink.written
    h, w = photos[0].image.shape[:2]
    assert frames[0].shape == (h & ~1, w & ~1, 3)  # even sizes for the codec
    top_left = frames[0][: h // 3, : w // 2].astype(np.int16)
    assert np.all(np.abs(top_left - np.array(TOP1_COLOUR, np.int16)) < 60, axis=2).sum() > 50


def test_unwritable_path_is_reported_not_fatal(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    sink = VideoSink(VideoConfig(path=str(blocker / "out.avi")))
    sink.start()
    photo = synthetic_samples(1)[0]
    sink.publish(observation(photo, 1, changed=True))
    sink.stop()
    ok, reason = sink.healthy()
    assert ok and "cannot create" in reason and "[video] path" in reason
