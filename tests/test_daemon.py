"""The daemon end to end through `edge-resnet run`: JSON lines, SIGTERM within 5 s with systemd
notifications, SIGHUP reload that keeps the old model when the new one is corrupt, and the bad
inputs a user meets first (missing model, bad config, a camera index that does not exist)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_resnet import config as configmod
from edge_resnet.config import ModelConfig
from edge_resnet.daemon import Daemon
from edge_resnet.sinkconfig import StdoutConfig
from edge_resnet.sourceconfig import FileSource

from .conftest import REPO, run_cli
from .helpers.broker import free_port
from .helpers.notify_socket import NotifySocket
from .helpers.run_child import RunChild, http_get, run_args
from .helpers.video import pick_samples, write_video


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory, samples_dir: Path) -> Path:
    p = tmp_path_factory.mktemp("daemon") / "three.avi"
    write_video(p, pick_samples(samples_dir, 3), seconds_each=1.0, fps=10)
    return p


@pytest.fixture()
def state_env(tmp_path: Path) -> dict[str, str]:
    return {"STATE_DIRECTORY": str(tmp_path / "state"), "PYTHONUNBUFFERED": "1"}


def test_run_prints_json_lines_and_exits_at_end_of_file(
    video: Path, mobilenet_quant: Path, labels_1001: Path, state_env: dict[str, str]
) -> None:
    # spelled out as README.md does (`--model`); the other tests take run_args' `-m`
    r = run_cli(
        "run",
        "--model",
        str(mobilenet_quant),
        "--labels",
        str(labels_1001),
        "--source",
        str(video),
        env=state_env,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    lines = [json.loads(ln) for ln in r.stdout.splitlines()]
    assert [ln["class_index"] for ln in lines if ln["changed"]][:1] == [0]  # tench first (realtime: no frame skipped)
    for key in ("label", "score", "class_index", "top_k", "frame_seq", "captured_at", "published_at", "model"):
        assert key in lines[0]
    assert "stopped (source ended)" in r.stderr


def test_run_without_labels_publishes_imagenet_indices(
    video: Path, mobilenet_quant: Path, state_env: dict[str, str]
) -> None:
    """Issue 14 case 5 as the demo showed it: a 1001-output model without --labels published "1" for the
    tench (ImageNet class 0); now class 0, label "0", with one warning saying how outputs are read."""
    r = run_cli("run", "--model", str(mobilenet_quant), "--source", str(video), env=state_env, timeout=60)
    assert r.returncode == 0, r.stderr
    lines = [json.loads(ln) for ln in r.stdout.splitlines()]
    changed = [ln for ln in lines if ln["changed"]]
    assert changed[0]["class_index"] == 0 and changed[0]["label"] == "0", changed[0]
    assert all(p["label"] == str(p["class_index"]) and p["class_index"] >= 0 for ln in lines for p in ln["top_k"])
    assert sum("1001 outputs and no labels" in ln for ln in r.stderr.splitlines()) == 1, r.stderr


def test_max_frames(video: Path, mobilenet_quant: Path, labels_1001: Path, state_env: dict[str, str]) -> None:
    r = run_cli(
        "run", *run_args(mobilenet_quant, labels_1001, video, "--loop", "--max-frames", "5"), env=state_env, timeout=60
    )
    assert r.returncode == 0, r.stderr
    assert "5 frames classified" in r.stderr


def test_missing_model_is_one_line_exit_4(video: Path, tmp_path: Path, state_env: dict[str, str]) -> None:
    r = run_cli("run", "--model", str(tmp_path / "nope.tflite"), "--source", str(video), env=state_env)
    assert r.returncode == 4
    last = r.stderr.strip().splitlines()[-1]
    print(last)
    assert last.startswith("edge-resnet: error:") and "nope.tflite" in last


def test_run_with_unknown_config_key_exit_3(tmp_path: Path, state_env: dict[str, str]) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[pipeline]\nsmoothing = "average"\nwindw = 5\n')
    r = run_cli("run", "--config", str(cfg), env=state_env)
    assert r.returncode == 3
    last = r.stderr.strip().splitlines()[-1]
    print(last)
    assert "unknown key 'windw'" in last and "window" in last


def test_camera_index_that_does_not_exist_is_retried_not_fatal(
    mobilenet_quant: Path, labels_1001: Path, state_env: dict[str, str]
) -> None:
    t0 = time.monotonic()
    r = run_cli("run", *run_args(mobilenet_quant, labels_1001, "47", "--duration", "3"), env=state_env, timeout=60)
    assert r.returncode == 0, r.stderr
    assert time.monotonic() - t0 >= 3
    lost = [ln for ln in r.stderr.splitlines() if "camera lost" in ln and "edge_resnet.capture" in ln]
    print(lost)
    assert len(lost) == 1  # one line per outage, not one per retry
    assert "/dev/video47 does not exist" in lost[0] and "retrying" in lost[0]


def test_camera_index_fatal_when_retry_is_off(
    tmp_path: Path, mobilenet_quant: Path, labels_1001: Path, state_env: dict[str, str]
) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        f'[model]\npath = "{mobilenet_quant}"\nlabels = "{labels_1001}"\n[source]\ntype = "opencv"\ndevice = 47\n'
        "retry = false\n"
    )
    r = run_cli("run", "--config", str(cfg), env=state_env, timeout=60)
    assert r.returncode == 6
    last = r.stderr.strip().splitlines()[-1]
    print(last)
    assert last.startswith("edge-resnet: error: cannot open camera index 47")


# -- signals and systemd notifications, with a real process ---------------------------------------


class Proc(RunChild):
    """`edge-resnet run` as a child process, with its stdout and stderr read on threads."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        super().__init__(args, {**os.environ, **env}, keep_stdout=True)

    def wait_for(self, pred: Any, timeout: float) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if pred():
                return True
            if self.p.poll() is not None:
                time.sleep(0.2)
                return bool(pred())
            time.sleep(0.05)
        return bool(pred())

    def json_lines(self) -> list[dict[str, Any]]:
        return [json.loads(x) for x in list(self.out) if x.startswith("{")]


@pytest.fixture()
def procs() -> Iterator[list[Proc]]:
    started: list[Proc] = []
    yield started
    for p in started:
        p.kill()


def test_sigterm_exits_0_within_5s_with_systemd_notifications(
    tmp_path: Path,
    video: Path,
    mobilenet_quant: Path,
    labels_1001: Path,
    state_env: dict[str, str],
    procs: list[Proc],
) -> None:
    with NotifySocket() as ns:
        env = {**state_env, "NOTIFY_SOCKET": ns.path, "WATCHDOG_USEC": "2000000"}
        proc = Proc(run_args(mobilenet_quant, labels_1001, video, "--loop"), env)
        procs.append(proc)
        assert proc.wait_for(lambda: ns.has("READY=1"), 30), "\n".join(proc.err)
        t_ready = ns.times("READY=1")[0]
        assert proc.json_lines(), "READY=1 comes after the first frame was classified"
        assert proc.wait_for(lambda: len(ns.times("WATCHDOG=1")) >= 3, 5)
        assert ns.has("STATUS=")
        t0 = time.monotonic()
        proc.p.send_signal(signal.SIGTERM)
        rc = proc.p.wait(10)
        took = time.monotonic() - t0
        print(f"SIGTERM -> exit {rc} in {took:.2f} s; READY=1 came {t0 - t_ready:.1f} s before the signal")
        assert rc == 0 and took < 5.0
        assert ns.has("STOPPING=1")
        status = ns.lines("STATUS=")
        print(status[-2:])
        assert "fps" in status[-2] and "stopping" in status[-1]  # the running status, then the last word


def test_sigint_exits_0(
    video: Path, mobilenet_quant: Path, labels_1001: Path, state_env: dict[str, str], procs: list[Proc]
) -> None:
    proc = Proc(run_args(mobilenet_quant, labels_1001, video, "--loop"), state_env)
    procs.append(proc)
    assert proc.wait_for(lambda: proc.json_lines(), 30)
    t0 = time.monotonic()
    proc.p.send_signal(signal.SIGINT)
    assert proc.p.wait(10) == 0 and time.monotonic() - t0 < 5.0


def test_sighup_keeps_old_model_when_new_is_corrupt_then_takes_a_good_one(
    tmp_path: Path, video: Path, models_dir: Path, labels_1001: Path, state_env: dict[str, str], procs: list[Proc]
) -> None:
    good = models_dir / "mobilenet_v2_1.0_224_quant.tflite"
    corrupt = tmp_path / "corrupt.tflite"
    corrupt.write_bytes(good.read_bytes()[:100_000])
    cfg = tmp_path / "c.toml"

    def write_cfg(model: Path) -> None:
        cfg.write_text(
            f'[model]\npath = "{model}"\nlabels = "{labels_1001}"\n'
            f'[source]\ntype = "file"\npath = "{video}"\nloop = true\n'
            "[stdout]\nevery_frame = true\n"
        )

    write_cfg(good)
    proc = Proc(["--config", str(cfg)], state_env)
    procs.append(proc)
    assert proc.wait_for(lambda: proc.json_lines(), 30), "\n".join(proc.err)

    write_cfg(corrupt)
    proc.p.send_signal(signal.SIGHUP)
    assert proc.wait_for(lambda: any("new model refused" in ln for ln in proc.err), 15), "\n".join(proc.err)
    n = len(proc.json_lines())
    assert proc.wait_for(lambda: len(proc.json_lines()) > n + 5, 10)  # still classifying
    assert {ln["model"] for ln in proc.json_lines()[n:]} == {good.name}
    refusals = [ln for ln in proc.err if "new model refused" in ln]
    print(refusals[0])
    assert len(refusals) == 1 and "corrupt.tflite" in refusals[0]

    other = models_dir / "mobilenet_v1_0.75_192_quant.tflite"
    write_cfg(other)
    proc.p.send_signal(signal.SIGHUP)
    assert proc.wait_for(lambda: proc.json_lines()[-1]["model"] == other.name, 15), "\n".join(proc.err)
    assert proc.p.poll() is None  # the same process all along

    cfg.write_text("[model]\nthreads = 0\n")  # a broken config is refused too
    proc.p.send_signal(signal.SIGHUP)
    assert proc.wait_for(lambda: any("config reload refused" in ln for ln in proc.err), 10)
    n = len(proc.json_lines())
    assert proc.wait_for(lambda: len(proc.json_lines()) > n + 5, 10)
    proc.p.send_signal(signal.SIGTERM)
    assert proc.p.wait(10) == 0


# -- in-process: status while the source is gone and back ---------------------------------------


@contextlib.contextmanager
def on_a_thread(d: Daemon) -> Iterator[list[int]]:
    """`d.run()` on a thread; at the end the daemon is asked to stop and the thread joined. The list
    gets what run() returned."""
    result: list[int] = []
    t = threading.Thread(target=lambda: result.append(d.run()), daemon=True)
    t.start()
    try:
        yield result
    finally:
        d.request_stop("test done")
        t.join(10)


def wait_first_frame(d: Daemon, timeout: float = 30) -> None:
    """Until the daemon's pipeline has classified its first frame (or `timeout` passed)."""
    deadline = time.monotonic() + timeout
    while (d.pipeline is None or not d.pipeline.wait_first(0.1)) and time.monotonic() < deadline:
        pass


def test_daemon_reports_source_gone_and_recovers(
    tmp_path: Path, video: Path, mobilenet_quant: Path, labels_1001: Path
) -> None:
    path = tmp_path / "cam.avi"
    path.write_bytes(video.read_bytes())
    cfg = configmod.Config(
        state_dir=str(tmp_path / "state"),
        model=ModelConfig(path=str(mobilenet_quant), labels=str(labels_1001)),
        source=FileSource(path=str(path), loop=True, watchdog_s=1.0, backoff_max_s=0.5),
        sinks={"stdout": StdoutConfig(enabled=False)},
    )
    d = Daemon(cfg, watch_model=False)
    with on_a_thread(d) as result:
        deadline = time.monotonic() + 30
        while (d.pipeline is None or not d.pipeline.status().healthy) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert d.pipeline is not None and d.pipeline.status().healthy
        path.rename(tmp_path / "away.avi")
        deadline = time.monotonic() + 5
        while d.pipeline.status().healthy and time.monotonic() < deadline:
            time.sleep(0.1)
        st = d.pipeline.status()
        print("gone:", st.reason)
        assert not st.healthy and "camera lost" in st.reason
        time.sleep(1.5)
        (tmp_path / "away.avi").rename(path)
        t_back = time.monotonic()
        while not d.pipeline.status().healthy and time.monotonic() - t_back < 5:
            time.sleep(0.05)
        took = time.monotonic() - t_back
        print(f"classifying again {took:.2f} s after the source returned")
        assert d.pipeline.status().healthy and took < 5
        assert d.pipeline.status().counters["camera_reconnects_total"] >= 1
    assert result == [0]


def test_model_file_replaced_in_place_is_validated_refused_once_then_taken(
    tmp_path: Path, video: Path, models_dir: Path, labels_1001: Path, caplog: Any
) -> None:
    """Issue 7: a corrupt model pushed during a run is refused and logged once; the old model keeps
    classifying; a good file pushed later is swapped in."""
    model = tmp_path / "current.tflite"
    good = (models_dir / "mobilenet_v2_1.0_224_quant.tflite").read_bytes()
    model.write_bytes(good)
    cfg = configmod.Config(
        state_dir=str(tmp_path / "state"),
        model=ModelConfig(path=str(model), labels=str(labels_1001)),
        source=FileSource(path=str(video), loop=True),
        sinks={"stdout": StdoutConfig(enabled=False)},
    )
    d = Daemon(cfg)
    with on_a_thread(d):
        wait_first_frame(d)
        assert d.pipeline is not None
        tmp = tmp_path / "push.tmp"
        tmp.write_bytes(good[: len(good) // 3])
        os.utime(tmp, (time.time() - 5, time.time() - 5))
        tmp.replace(model)  # an atomic push, as deploy tools do
        deadline = time.monotonic() + 10
        while d.pipeline.reload_failures == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        n = d.pipeline.classified
        time.sleep(5)  # two more polls of the unchanged bad file
        assert d.pipeline.reload_failures == 1
        assert len([r for r in caplog.records if "new model refused" in r.getMessage()]) == 1
        assert d.pipeline.classified > n + 10  # the old model kept classifying
        assert d.pipeline.status().healthy

        tmp.write_bytes((models_dir / "mobilenet_v1_0.75_192_quant.tflite").read_bytes())
        os.utime(tmp, (time.time() - 5, time.time() - 5))
        tmp.replace(model)
        deadline = time.monotonic() + 10
        while d.pipeline.reloads == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert d.pipeline.reloads == 1
        time.sleep(0.5)
        assert d.pipeline.last_observation is not None
        assert d.pipeline.status().labels["model"] == "current.tflite"
        assert d.pipeline.classifier.engine.input.shape == (1, 192, 192, 3)  # the new network runs


def test_demo_offline_with_local_files(
    tmp_path: Path, mobilenet_quant: Path, labels_1001: Path, samples_dir: Path
) -> None:
    """`edge-resnet demo` without the network: local model, labels and photos; overlay served while it runs."""
    import urllib.request

    port = free_port()
    args = [
        "--model",
        str(mobilenet_quant),
        "--labels",
        str(labels_1001),
        "--images",
        str(samples_dir),
        "--work",
        str(tmp_path / "work"),
        "--count",
        "3",
        "--seconds-each",
        "1",
        "--http",
        f"127.0.0.1:{port}",
        "--duration",
        "6",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge_resnet", "demo", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    page = b""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/state", timeout=2) as r:
                page = r.read()
            if b"label" in page:
                break
        except OSError:
            pass
        time.sleep(0.3)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert f"open http://127.0.0.1:{port}/" in out
    assert (tmp_path / "work" / "demo.avi").stat().st_size > 10_000
    lines = [json.loads(x) for x in out.splitlines() if x.startswith("{")]
    assert len({ln["class_index"] for ln in lines}) >= 2  # the photos change, so does the label
    assert b"label" in page


def test_reload_switches_source_settings_and_sinks_in_process(
    tmp_path: Path, video: Path, mobilenet_quant: Path, labels_1001: Path, samples_dir: Path
) -> None:
    from .helpers.video import write_folder

    folder = write_folder(tmp_path / "imgs", pick_samples(samples_dir, 2, start=500), size=(160, 120))
    cfg_file = tmp_path / "c.toml"
    head = f'state_dir = "{tmp_path / "state"}"\n[model]\npath = "{mobilenet_quant}"\nlabels = "{labels_1001}"\n'
    cfg_file.write_text(head + f'[source]\ntype = "file"\npath = "{video}"\nloop = true\n[stdout]\nenabled = false\n')
    d = Daemon(configmod.load(cfg_file), config_path=cfg_file, watch_model=False)
    with on_a_thread(d):
        wait_first_frame(d)
        assert d.pipeline is not None and d.sinks == []
        cfg_file.write_text(
            head + f'[source]\ntype = "folder"\npath = "{folder}"\ninterval_s = 0\nloop = true\n'
            "[pipeline]\nmax_fps = 4.0\n[stdout]\nenabled = true\n"
        )
        d.request_reload()
        deadline = time.monotonic() + 10
        while d.reloads_done == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "image folder" in d.pipeline.status().labels["source"]
        assert [s.name for s in d.sinks] == ["stdout"]
        n0 = d.pipeline.classified
        time.sleep(2.0)
        rate = (d.pipeline.classified - n0) / 2.0
        print(f"after reload: {rate:.1f} fps with max_fps 4")
        assert 2.0 <= rate <= 5.0


@pytest.mark.slow
def test_source_gone_30s_healthz_reports_it_and_resumes_within_5s(
    tmp_path: Path, video: Path, mobilenet_quant: Path, labels_1001: Path, state_env: dict[str, str], procs: list[Proc]
) -> None:
    """Issue 7 must-show 3, through the CLI and /healthz: the video source disappears for 30 s; the
    daemon stays up and says so; classification resumes within 5 s of the source returning."""
    cam = tmp_path / "cam.avi"
    cam.write_bytes(video.read_bytes())
    port = free_port()
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        f'[model]\npath = "{mobilenet_quant}"\nlabels = "{labels_1001}"\n'
        f'[source]\ntype = "file"\npath = "{cam}"\nloop = true\nwatchdog_s = 2.0\n'
        f'[http]\nlisten = "127.0.0.1:{port}"\n'
    )
    proc = Proc(["--config", str(cfg)], state_env)
    procs.append(proc)

    def healthz() -> tuple[int, str]:
        return http_get(f"http://127.0.0.1:{port}/healthz", timeout=2)

    assert proc.wait_for(lambda: healthz()[0] == 200, 30), "\n".join(proc.err)
    cam.rename(tmp_path / "away.avi")
    t_gone = time.monotonic()
    assert proc.wait_for(lambda: healthz()[0] == 503, 10)
    code, body = healthz()
    print(f"{time.monotonic() - t_gone:.1f} s after removal: /healthz {code} {body.strip()[:160]}")
    assert "camera lost" in body
    while time.monotonic() - t_gone < 30:
        assert proc.p.poll() is None
        assert healthz()[0] == 503
        time.sleep(1.0)
    (tmp_path / "away.avi").rename(cam)
    t_back = time.monotonic()
    assert proc.wait_for(lambda: healthz()[0] == 200, 10)
    took = time.monotonic() - t_back
    print(f"source back after 30 s: /healthz 200 again {took:.2f} s later")
    assert took < 5.0
    proc.p.send_signal(signal.SIGTERM)
    assert proc.p.wait(10) == 0


def test_run_writes_annotated_video_with_flag(
    tmp_path: Path, video: Path, mobilenet_quant: Path, labels_1001: Path, state_env: dict[str, str]
) -> None:
    import cv2

    out = tmp_path / "annotated.avi"
    r = run_cli(
        "run",
        *run_args(mobilenet_quant, labels_1001, video, "--video", str(out), "--stdout"),
        env=state_env,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("\n") >= 3  # --stdout keeps the JSON lines alongside another sink
    cap = cv2.VideoCapture(str(out))
    ok, frame = cap.read()
    cap.release()
    assert ok and frame is not None


def test_pipeline_crash_stops_the_daemon_with_an_error(
    tmp_path: Path, video: Path, mobilenet_quant: Path, labels_1001: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug in the pipeline thread must not leave a zombie daemon that looks alive."""
    from edge_resnet.errors import EdgeResnetError
    from edge_resnet.smoothing import Smoother

    def boom(*_a: object, **_k: object) -> None:
        raise ZeroDivisionError("injected")

    monkeypatch.setattr(Smoother, "update", boom)
    cfg = configmod.Config(
        state_dir=str(tmp_path / "state"),
        model=ModelConfig(path=str(mobilenet_quant), labels=str(labels_1001)),
        source=FileSource(path=str(video), loop=True),
        sinks={"stdout": StdoutConfig(enabled=False)},
    )
    with pytest.raises(EdgeResnetError, match="pipeline thread crashed"):
        Daemon(cfg, watch_model=False, duration_s=20).run()


def test_state_dir_falls_back_for_a_normal_user(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edge_resnet import daemon as daemonmod

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    unwritable = str(blocker / "edge-resnet")  # cannot be created, whoever we are
    monkeypatch.setattr(configmod, "DEFAULT_STATE_DIR", unwritable)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    out = daemonmod.prepare_state_dir(configmod.Config(state_dir=unwritable))
    assert out.state_dir == str(tmp_path / "xdg" / "edge-resnet") and Path(out.state_dir).is_dir()
    # set on purpose: never silently moved; not fatal either (a full or read-only SD card must not
    # exit 3, which systemd does not restart): kept, and the MQTT queue reports itself degraded
    mine = str(blocker / "mine")
    assert daemonmod.prepare_state_dir(configmod.Config(state_dir=mine)).state_dir == mine


def test_demo_downloads_sample_photos_and_names_the_offline_way(
    tmp_path: Path, samples_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The online path of `demo`, against a local web server holding the same photos."""
    import argparse
    import functools
    import http.server

    from edge_resnet.commands import demo
    from edge_resnet.errors import InputError

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(samples_dir))
    handler.log_message = lambda *a: None  # type: ignore[attr-defined]
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{srv.server_address[1]}"
        monkeypatch.setattr(demo, "SAMPLES_URL", base + "/{name}")
        args = argparse.Namespace(images=None, model=None, count=8)
        shown = demo.sample_images(args, tmp_path)
        assert len(shown) == 8 and all(p.stat().st_size > 1000 for p in shown)
        assert len(list((tmp_path / "images").glob("*.JPEG"))) == len(demo.SAMPLE_NAMES) + len(demo.CALIB_NAMES)
        video = demo.make_video(shown, tmp_path / "demo.avi", seconds_each=0.5)
        assert video.stat().st_size > 10_000
        with pytest.raises(InputError, match="offline, pass local files"):
            demo.download(base + "/missing.onnx", tmp_path / "missing.onnx")
        assert not (tmp_path / "missing.onnx").exists() and not (tmp_path / "missing.onnx.part").exists()
    finally:
        srv.shutdown()
        srv.server_close()
