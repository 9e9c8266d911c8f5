"""Issue 13: a zero-byte or undecodable video file is not handed to FFmpeg again and again (each
try printed FFmpeg noise); it is tried again once the file changes."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import cv2
import pytest

from edge_resnet.errors import HardwareError
from edge_resnet.sources.opencv import OpenCvFrames


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    real = cv2.VideoCapture

    def counting(*args: Any) -> Any:
        calls.append(str(args[0]))
        return real(*args)

    monkeypatch.setattr(cv2, "VideoCapture", counting)  # the module edge_resnet.sources.opencv uses
    return calls


def test_empty_file_never_reaches_ffmpeg(tmp_path: Path, opened: list[str]) -> None:
    video = tmp_path / "empty.mp4"
    video.write_bytes(b"")
    src = OpenCvFrames(str(video), "file")
    for _ in range(3):
        with pytest.raises(HardwareError, match="empty"):
            src.open()
    assert opened == []


def test_undecodable_file_is_tried_again_only_when_it_changes(tmp_path: Path, opened: list[str]) -> None:
    video = tmp_path / "junk.mp4"
    video.write_bytes(b"not a video" * 100)
    src = OpenCvFrames(str(video), "file")
    for _ in range(3):
        with pytest.raises(HardwareError, match="cannot decode"):
            src.open()
    assert len(opened) == 1, "FFmpeg was asked again about the same bytes"
    video.write_bytes(b"still not a video" * 100)
    os.utime(video, ns=(1, 1))
    with pytest.raises(HardwareError):
        src.open()
    assert len(opened) == 2, "a changed file is tried again"
