"""Capture thread and sources: latest-frame mailbox, watchdog and reopen, real OpenCV on real files,
image folders, and the picamera2 adapter against a fake picamera2 module."""

from __future__ import annotations

import itertools
import sys
import threading
import time
import types
from pathlib import Path
from typing import Any, cast

import cv2
import numpy as np
import numpy.typing as npt
import pytest

from edge_resnet.capture import Capture, CaptureState, EndOfStream
from edge_resnet.errors import DependencyError, HardwareError, InputError
from edge_resnet.sourceconfig import Picamera2Source
from edge_resnet.sources.folder import FolderFrames
from edge_resnet.sources.opencv import OpenCvFrames

from .helpers.video import pick_samples, write_folder, write_video


def wait_for(pred: Any, timeout: float, step: float = 0.02) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(step)
    return bool(pred())


class FakeSource:
    """A source that makes numbered frames as fast as asked; can stall or fail to open on demand."""

    description = "fake camera"

    def __init__(self, period_s: float = 0.001) -> None:
        self.period_s = period_s
        self.opens = 0
        self.n = 0
        self.stall = threading.Event()
        self.fail_open = threading.Event()

    def open(self) -> None:
        self.opens += 1
        if self.fail_open.is_set():
            raise HardwareError("cannot open fake camera; plug it in")

    def read(self) -> npt.NDArray[np.uint8] | None:
        time.sleep(self.period_s)
        if self.stall.is_set():
            return None
        self.n += 1
        img = np.zeros((4, 4, 3), np.uint8)
        img[0, 0, 0] = self.n % 256
        return img

    def close(self) -> None:
        pass


def take_slowly(cap: Capture) -> list[int]:
    """A slow consumer: ten frames taken 50 ms apart; their sequence numbers."""
    seqs = []
    for _ in range(10):
        time.sleep(0.05)
        f = cap.get(timeout=1.0)
        assert f is not None
        seqs.append(f.seq)
    return seqs


def test_latest_frame_semantics_frames_never_queue() -> None:
    src = FakeSource(period_s=0.001)
    cap = Capture(src, watchdog_s=2.0)
    cap.start()
    try:
        seqs = take_slowly(cap)  # ~50 frames arrive per take
        src.stall.set()  # freeze the count: every frame was either taken, dropped, or is in the slot
        time.sleep(0.05)
        st = cap.stats()
        in_slot = 1 if cap.get(timeout=0) is not None else 0
        assert st.captured == len(seqs) + st.dropped + in_slot
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
        assert min(b - a for a, b in itertools.pairwise(seqs)) >= 2  # older frames skipped, not queued
        assert st.dropped >= 9 and st.fps > 20
        src.stall.clear()
        f = cap.get(timeout=1.0)
        assert f is not None and time.monotonic() - f.captured_mono < 0.05  # fresh
    finally:
        cap.stop(1.0)
    assert cap.state() is CaptureState.STOPPED


class FileLikeSource(FakeSource):
    """A FakeSource that is not live (as a file read at full speed): it can wait for the consumer."""

    live = False


def test_non_live_source_waits_for_the_consumer_and_drops_nothing() -> None:
    src = FileLikeSource(period_s=0.001)
    cap = Capture(src, watchdog_s=0.3)
    cap.start()
    try:
        seqs = take_slowly(cap)  # the same slow consumer that makes a live source drop ~50 frames a take
        assert seqs == list(range(10))  # every frame, in order
        time.sleep(0.6)  # the consumer stalls for twice the watchdog: the source is not to blame
        st = cap.stats()
        assert st.state is CaptureState.RUNNING and st.reason == "ok"
        assert st.dropped == 0 and src.opens == 1 and src.n <= 11  # read ahead by at most one frame
        assert cap.thread_alive()  # waiting for the pipeline is a sign of life, not a stuck driver
    finally:
        cap.stop(1.0)
    assert cap._thread is not None and not cap._thread.is_alive()  # stop ends the wait
    assert cap.state() is CaptureState.STOPPED


def test_camera_lost_is_logged_once_per_outage(caplog: pytest.LogCaptureFixture) -> None:
    """A source that fails mid-stream and then does not reopen for a while: one "camera lost" line
    (the read failure), not a second one from the reopen attempts, and one "is back"."""

    class Flaky(FakeSource):
        def read(self) -> npt.NDArray[np.uint8] | None:
            if self.fail_open.is_set():
                raise OSError("unplugged")
            return super().read()

    src = Flaky(period_s=0.005)
    cap = Capture(src, watchdog_s=1.0, backoff_initial_s=0.02, backoff_max_s=0.05)
    caplog.set_level("INFO", logger="edge_resnet.capture")
    cap.start()
    try:
        assert cap.get(timeout=1.0) is not None
        src.fail_open.set()  # reads fail, then reopening fails
        assert wait_for(lambda: src.opens >= 5, 3.0)
        src.fail_open.clear()
        assert wait_for(lambda: cap.stats().reconnects == 1, 3.0)
    finally:
        cap.stop(1.0)
    lost = [r.getMessage() for r in caplog.records if "camera lost" in r.getMessage()]
    back = [r.getMessage() for r in caplog.records if "is back" in r.getMessage()]
    print(lost, back)
    assert len(lost) == 1 and "unplugged" in lost[0]
    assert len(back) == 1


def test_watchdog_reopens_stalled_source_and_recovers() -> None:
    src = FakeSource(period_s=0.005)
    cap = Capture(src, watchdog_s=0.3, backoff_initial_s=0.05, backoff_max_s=0.2)
    cap.start()
    try:
        assert cap.get(timeout=1.0) is not None
        src.stall.set()
        assert wait_for(lambda: cap.state() is CaptureState.LOST, 2.0)
        st = cap.stats()
        assert "camera lost" in st.reason and "no frame" in st.reason
        assert wait_for(lambda: src.opens >= 2, 2.0)  # it closed and reopened
        src.stall.clear()
        assert wait_for(lambda: cap.state() is CaptureState.RUNNING, 2.0)
        assert cap.get(timeout=1.0) is not None
        assert cap.stats().reconnects >= 1
    finally:
        cap.stop(1.0)


def test_open_failure_retries_with_capped_backoff_or_fails_when_told() -> None:
    src = FakeSource()
    src.fail_open.set()
    cap = Capture(src, backoff_initial_s=0.02, backoff_max_s=0.1)
    cap.start()
    try:
        assert wait_for(lambda: src.opens >= 5, 2.0)
        st = cap.stats()
        assert st.state is CaptureState.LOST and "plug it in" in st.reason and "retrying in" in st.reason
        src.fail_open.clear()
        assert cap.get(timeout=2.0) is not None
    finally:
        cap.stop(1.0)

    src2 = FakeSource()
    src2.fail_open.set()
    cap2 = Capture(src2, retry=False)
    cap2.start()
    assert wait_for(cap2.finished, 2.0)
    assert cap2.state() is CaptureState.FAILED and isinstance(cap2.error, HardwareError)
    cap2.stop(1.0)


def test_missing_camera_index_is_a_clear_retried_error() -> None:
    src = OpenCvFrames(47, "camera")
    with pytest.raises(HardwareError) as ei:
        src.open()
    msg = str(ei.value)
    print(msg)
    assert "camera index 47" in msg and "/dev/video47 does not exist" in msg and "\n" not in msg
    cap = Capture(src, backoff_initial_s=0.05, backoff_max_s=0.1)
    cap.start()
    try:
        assert wait_for(lambda: cap.state() is CaptureState.LOST, 2.0)
        assert "camera lost" in cap.stats().reason and "/dev/video47" in cap.stats().reason
    finally:
        cap.stop(1.0)
    with pytest.raises(HardwareError, match="does not exist"):
        OpenCvFrames("/dev/v4l/by-id/usb-nothing-video-index0", "camera").open()


@pytest.fixture(scope="module")
def video_2s(tmp_path_factory: pytest.TempPathFactory, samples_dir: Path) -> Path:
    """A real 2 s MJPG video at 20 fps: two photos, one second each."""
    p = tmp_path_factory.mktemp("cap") / "two.avi"
    write_video(p, pick_samples(samples_dir, 2), seconds_each=1.0, fps=20)
    return p


def test_video_file_realtime_runs_at_its_own_frame_rate(video_2s: Path) -> None:
    src = OpenCvFrames(str(video_2s), "file", realtime=True)
    cap = Capture(src)
    t0 = time.monotonic()
    cap.start()
    got = 0
    while True:
        f = cap.get(timeout=1.0)
        if f is None:
            if cap.finished():
                break
            continue
        got += 1
        assert f.image.shape == (240, 320, 3) and f.image.dtype == np.uint8
    elapsed = time.monotonic() - t0
    st = cap.stats()
    cap.stop(1.0)
    print(f"realtime: 40 frames in {elapsed:.2f} s, capture fps {st.fps:.1f}, dropped {st.dropped}")
    assert st.state is CaptureState.ENDED
    assert st.captured == 40 and got + st.dropped == 40
    assert 1.7 < elapsed < 4.0
    assert 15 < st.fps < 25


def test_video_file_fast_and_loop(video_2s: Path) -> None:
    src = OpenCvFrames(str(video_2s), "file", realtime=False)
    src.open()
    t0 = time.monotonic()
    n = 0
    with pytest.raises(EndOfStream):
        while True:
            assert src.read() is not None
            n += 1
    src.close()
    assert n == 40 and time.monotonic() - t0 < 1.5

    loop = OpenCvFrames(str(video_2s), "file", realtime=False, loop=True)
    loop.open()
    frames = [loop.read() for _ in range(100)]  # 2.5 passes
    loop.close()
    assert all(f is not None for f in frames)


def test_missing_video_file_is_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        OpenCvFrames(str(tmp_path / "nope.mp4"), "file")


def test_video_file_gone_then_back_recovers(video_2s: Path, tmp_path: Path) -> None:
    """The source disappears for a while (file removed) and comes back: the capture thread says
    "camera lost", retries with backoff and resumes by itself."""
    path = tmp_path / "cam.avi"
    path.write_bytes(video_2s.read_bytes())
    src = OpenCvFrames(str(path), "file", realtime=True, loop=True)
    cap = Capture(src, watchdog_s=1.0, backoff_initial_s=0.1, backoff_max_s=0.4)
    cap.start()
    try:
        assert cap.get(timeout=2.0) is not None
        path.rename(tmp_path / "away.avi")
        assert wait_for(lambda: cap.state() is CaptureState.LOST, 5.0)
        print("while gone:", cap.stats().reason)
        assert "camera lost" in cap.stats().reason
        while cap.get(timeout=0.05) is not None:
            pass
        time.sleep(1.0)
        (tmp_path / "away.avi").rename(path)
        t_back = time.monotonic()
        assert wait_for(lambda: cap.state() is CaptureState.RUNNING, 3.0)
        assert cap.get(timeout=2.0) is not None
        print(f"recovered {time.monotonic() - t_back:.2f} s after the file came back")
        assert cap.stats().reconnects >= 1
    finally:
        cap.stop(1.0)


def test_folder_source(tmp_path: Path, samples_dir: Path) -> None:
    d = write_folder(tmp_path / "imgs", pick_samples(samples_dir, 3), size=(160, 120))
    (d / "notes.txt").write_text("not an image")
    src = FolderFrames(str(d), interval_s=0.0)
    src.open()
    imgs = [src.read() for _ in range(3)]
    assert all(i is not None and i.shape == (120, 160, 3) for i in imgs)
    with pytest.raises(EndOfStream):
        src.read()
    looped = FolderFrames(str(d), interval_s=0.0, loop=True)
    looped.open()
    assert all(looped.read() is not None for _ in range(7))
    with pytest.raises(HardwareError, match=r"no \.jpg"):
        FolderFrames(str(tmp_path)).open()
    with pytest.raises(HardwareError, match="does not exist"):
        FolderFrames(str(tmp_path / "nope")).open()


def test_folder_at_full_speed_gives_every_image_to_a_slow_consumer(tmp_path: Path, samples_dir: Path) -> None:
    d = write_folder(tmp_path / "imgs", pick_samples(samples_dir, 6), size=(64, 48))
    expected = [cv2.imread(str(f)) for f in sorted(d.iterdir())]
    cap = Capture(FolderFrames(str(d), interval_s=0.0))
    assert not cap.live
    cap.start()
    got = []
    try:
        while (f := cap.get(timeout=2.0)) is not None:
            got.append(f)
            time.sleep(0.03)  # slower than the folder reads
    finally:
        cap.stop(1.0)
    assert [f.seq for f in got] == list(range(6)) and cap.stats().dropped == 0
    assert all(np.array_equal(f.image, e) for f, e in zip(got, expected, strict=True))


def test_folder_interval_paces_and_is_not_a_lost_camera(tmp_path: Path, samples_dir: Path) -> None:
    d = write_folder(tmp_path / "imgs", pick_samples(samples_dir, 2), size=(64, 48))
    cap = Capture(FolderFrames(str(d), interval_s=0.4, loop=True), watchdog_s=0.2)
    cap.start()
    try:
        t0 = time.monotonic()
        seqs = []
        shown: list[bytes] = []  # a new image every 0.4 s; the still image repeats in between
        while time.monotonic() - t0 < 1.3:
            f = cap.get(timeout=0.5)
            if f is not None:
                seqs.append(f.seq)
                if not shown or shown[-1] != f.image.tobytes():
                    shown.append(f.image.tobytes())
        assert 3 <= len(shown) <= 5, shown
        assert len(seqs) > len(shown) + 3, seqs  # repeats keep frames coming like a camera
        assert cap.stats().state is CaptureState.RUNNING
    finally:
        cap.stop(1.0)


# -- picamera2, against a fake module (the real one exists only on a Raspberry Pi) ---------------


class _Job:
    def __init__(self, arr: npt.NDArray[np.uint8]) -> None:
        self.arr = arr

    def get_result(self, timeout: float | None = None) -> npt.NDArray[np.uint8]:
        return self.arr


def fake_picamera2(bgr: npt.NDArray[np.uint8], stride_pad: int = 0) -> types.ModuleType:
    """A module with the slice of the picamera2 API the adapter uses, serving `bgr` as the camera sees it."""
    mod = types.ModuleType("picamera2")
    calls: dict[str, Any] = {}

    class Picamera2:
        def __init__(self, camera_num: int = 0) -> None:
            if camera_num != 0:
                raise IndexError("list index out of range")
            calls["camera_num"] = camera_num

        def create_video_configuration(self, **kw: Any) -> dict[str, Any]:
            calls["config"] = kw
            return kw

        def configure(self, cfg: dict[str, Any]) -> None:
            self.cfg = cfg

        def start(self) -> None:
            calls["started"] = True

        def capture_array(self, name: str = "main", wait: bool | None = None) -> Any:
            fmt = self.cfg[name]["format"]
            if fmt == "RGB888":  # libcamera's RGB888 is B,G,R in memory
                arr = bgr.copy()
            else:  # YUV420 (I420), rows padded to the stride like the ISP does
                i420 = cast("npt.NDArray[np.uint8]", cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV_I420))  # uint8 in, uint8 out
                h, w = bgr.shape[:2]
                if stride_pad:
                    s = w + stride_pad
                    y = np.zeros((h, s), np.uint8)
                    y[:, :w] = i420[:h]
                    u = np.zeros((h // 2, s // 2), np.uint8)
                    u[:, : w // 2] = i420[h : h + h // 4].reshape(h // 2, w // 2)
                    v = np.zeros((h // 2, s // 2), np.uint8)
                    v[:, : w // 2] = i420[h + h // 4 :].reshape(h // 2, w // 2)
                    i420 = np.concatenate([y.reshape(-1), u.reshape(-1), v.reshape(-1)]).reshape(h * 3 // 2, s)
                arr = i420
            return _Job(arr) if wait is False else arr

        def stop(self) -> None:
            calls["stopped"] = True

        def close(self) -> None:
            calls["closed"] = True

    mod.Picamera2 = Picamera2  # type: ignore[attr-defined]
    mod.calls = calls  # type: ignore[attr-defined]
    return mod


@pytest.fixture()
def scene() -> npt.NDArray[np.uint8]:
    img = np.zeros((240, 320, 3), np.uint8)
    img[:, :, 0] = 200  # strongly blue in BGR
    img[60:180, 80:240, 2] = 180  # a red patch
    return img


@pytest.mark.parametrize("stride_pad", [0, 64])
def test_picamera2_lores_yuv420_becomes_bgr(
    monkeypatch: pytest.MonkeyPatch, scene: npt.NDArray[np.uint8], stride_pad: int
) -> None:
    from edge_resnet.sources.picamera2 import Picamera2Frames

    mod = fake_picamera2(scene, stride_pad)
    monkeypatch.setitem(sys.modules, "picamera2", mod)
    src = Picamera2Frames(Picamera2Source(lores_size=(320, 240)))
    src.open()
    img = src.read()
    src.close()
    assert img is not None and img.shape == (240, 320, 3)
    assert np.abs(img.astype(int) - scene.astype(int)).mean() < 6  # YUV round trip, channels not swapped
    cfg = mod.calls["config"]  # type: ignore[attr-defined]
    assert cfg["lores"] == {"size": (320, 240), "format": "YUV420"} and cfg["main"]["format"] == "RGB888"
    assert mod.calls.get("closed")  # type: ignore[attr-defined]


def test_picamera2_rgb888_is_bgr_in_memory_no_swap(
    monkeypatch: pytest.MonkeyPatch, scene: npt.NDArray[np.uint8]
) -> None:
    from edge_resnet.sources.picamera2 import Picamera2Frames

    monkeypatch.setitem(sys.modules, "picamera2", fake_picamera2(scene))
    src = Picamera2Frames(Picamera2Source(use_lores=False))
    src.open()
    img = src.read()
    src.close()
    assert img is not None and np.array_equal(img, scene)  # exactly the bytes: no channel swap


def test_picamera2_missing_camera_and_missing_module(
    monkeypatch: pytest.MonkeyPatch, scene: npt.NDArray[np.uint8]
) -> None:
    from edge_resnet.sources.picamera2 import Picamera2Frames

    monkeypatch.setitem(sys.modules, "picamera2", fake_picamera2(scene))
    with pytest.raises(HardwareError, match="picamera2 camera 1"):
        Picamera2Frames(Picamera2Source(camera=1)).open()
    monkeypatch.setitem(sys.modules, "picamera2", None)  # import fails, as on a PC
    with pytest.raises(DependencyError, match="python3-picamera2"):
        Picamera2Frames(Picamera2Source()).open()
    # through the capture thread: a missing package is not retried forever
    cap = Capture(Picamera2Frames(Picamera2Source()))
    cap.start()
    assert wait_for(cap.finished, 2.0)
    assert isinstance(cap.error, DependencyError)
    cap.stop(1.0)


def test_reopening_leaks_no_file_descriptors(video_2s: Path) -> None:
    """Every watchdog reopen closes what it opened (a field device reopens for weeks)."""
    fd_dir = Path("/proc/self/fd")
    if not fd_dir.exists():
        pytest.skip("needs /proc")
    src = OpenCvFrames(str(video_2s), "file", realtime=False)
    src.open()
    src.read()
    src.close()
    before = len(list(fd_dir.iterdir()))
    for _ in range(30):
        src.open()
        assert src.read() is not None
        src.close()
    after = len(list(fd_dir.iterdir()))
    print(f"fds before {before}, after 30 reopens {after}")
    assert after <= before


def test_picamera2_late_frame_is_waited_for_not_requested_twice(
    monkeypatch: pytest.MonkeyPatch, scene: npt.NDArray[np.uint8]
) -> None:
    from edge_resnet.sources.picamera2 import Picamera2Frames

    mod = fake_picamera2(scene)
    requests: list[int] = []

    class SlowJob:
        def __init__(self) -> None:
            self.waits = 0

        def get_result(self, timeout: float | None = None) -> npt.NDArray[np.uint8]:
            self.waits += 1
            if self.waits == 1:
                raise TimeoutError
            return scene.copy()

    def capture_array(self: Any, name: str = "main", wait: bool | None = None) -> SlowJob:
        requests.append(1)
        return SlowJob()

    monkeypatch.setattr(mod.Picamera2, "capture_array", capture_array)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "picamera2", mod)
    src = Picamera2Frames(Picamera2Source(use_lores=False), read_timeout_s=0.01)
    src.open()
    assert src.read() is None  # late: no frame yet
    img = src.read()  # the same request, now done
    src.close()
    assert img is not None and len(requests) == 1


class MjpegServer:
    """A real HTTP MJPEG stream (multipart/x-mixed-replace, as IP cameras serve) that can stall."""

    def __init__(self, jpeg: bytes, fps: float = 10.0) -> None:
        import http.server
        import socketserver

        self.jpeg = jpeg
        self.paused = threading.Event()
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                try:
                    while True:
                        if not owner.paused.is_set():
                            head = b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(
                                owner.jpeg
                            )
                            self.wfile.write(head + owner.jpeg + b"\r\n")
                        time.sleep(1.0 / fps)
                except OSError:
                    pass

            def log_message(self, *args: Any) -> None:
                pass

        class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/stream.mjpg"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_http_mjpeg_stream_stall_is_detected_and_recovers(samples_dir: Path) -> None:
    """A network camera that stops sending without closing the connection: the read timeout turns
    the stall into "camera lost" and a reconnect; frames flow again when the camera does."""
    jpeg = cv2.imencode(".jpg", cv2.imread(str(pick_samples(samples_dir, 1)[0].path)))[1].tobytes()
    srv = MjpegServer(jpeg)
    cap = Capture(OpenCvFrames(srv.url, "url", timeout_s=1.0), watchdog_s=2.0, backoff_max_s=0.5)
    cap.start()
    try:
        f = cap.get(timeout=5.0)
        assert f is not None and f.image.ndim == 3
        srv.paused.set()
        t0 = time.monotonic()
        assert wait_for(lambda: cap.state() is CaptureState.LOST, 5.0)
        print(f"stall seen after {time.monotonic() - t0:.1f} s: {cap.stats().reason}")
        while cap.get(timeout=0.05) is not None:
            pass
        srv.paused.clear()
        t1 = time.monotonic()
        assert cap.get(timeout=5.0) is not None
        print(f"frames again {time.monotonic() - t1:.2f} s after the stream resumed")
        assert cap.stats().reconnects >= 1
    finally:
        cap.stop(2.0)
        srv.close()


def test_gstreamer_source_needs_an_opencv_with_gstreamer() -> None:
    from edge_resnet.sources.opencv import has_gstreamer

    if has_gstreamer():
        pytest.skip("this OpenCV has GStreamer")
    with pytest.raises(DependencyError, match="GStreamer"):
        OpenCvFrames("videotestsrc ! videoconvert ! appsink", "gstreamer")


@pytest.mark.hw
def test_real_v4l2_camera_mjpg_size_and_rate() -> None:
    """On a device with a USB camera (`pytest -m hw`; EDGE_RESNET_CAMERA=/dev/video0 by default)."""
    import os

    dev = os.environ.get("EDGE_RESNET_CAMERA", "/dev/video0")
    cap = Capture(OpenCvFrames(dev, "camera", width=640, height=480, fps=30, fourcc="MJPG"))
    cap.start()
    try:
        f = cap.get(timeout=10.0)
        assert f is not None, cap.stats().reason
        assert f.image.shape[:2] == (480, 640)
        time.sleep(3.0)
        st = cap.stats()
        print(f"{dev}: {st.fps:.1f} fps, {st.captured} frames")
        assert st.fps >= 10
    finally:
        cap.stop(2.0)


def test_folder_warns_once_per_unreadable_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """SD-card and journal care: a broken file in a looped folder is reported once, not every pass."""
    import cv2
    import numpy as np

    from edge_resnet.sources.folder import FolderFrames

    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "b.jpg").write_bytes(b"not an image")
    src = FolderFrames(str(tmp_path), interval_s=0, loop=True)
    src.open()
    frames = [src.read() for _ in range(10)]
    assert sum(f is not None for f in frames) == 5
    assert sum("b.jpg" in r.getMessage() for r in caplog.records) == 1
