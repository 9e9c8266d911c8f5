"""Issue 23: with `[trust] require_signature = true` the daemon (`edge-resnet run`) refuses an unsigned
or untrusted model every way one arrives, in one line, and the running model goes on: at start
(exit 4), and a model file replaced on disk (unsigned, signed by an unknown key, or signed with an
older version). A model signed by a trusted key with a newer version is taken, and the version its
signature gives is the running model's version (`model_version` on /metrics)."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

from edge_resnet.fleet.keys import generate, load_private
from edge_resnet.fleet.manifest import sign_model
from tests.conftest import run_cli
from tests.helpers import fleet_models as fm
from tests.helpers.broker import free_port
from tests.helpers.run_child import RunChild, http_get
from tests.helpers.video import pick_samples, write_video


def replace(dst: Path, src: Path) -> None:
    """As a copy tool that renames into place does: the watcher sees a new file, never half of one."""
    tmp = dst.with_name(".incoming")
    tmp.write_bytes(src.read_bytes())
    os.replace(tmp, dst)


def wait_line(child: RunChild, pattern: str, after: int, timeout: float) -> str:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for line in list(child.err)[after:]:
            if re.search(pattern, line):
                return line
        time.sleep(0.1)
    raise AssertionError(f"no line matching {pattern!r}; stderr:\n{child.tail()}")


def model_version(port: int) -> str | None:
    _, body = http_get(f"http://127.0.0.1:{port}/metrics")
    m = re.search(r'^edge_resnet_info\{[^}]*model_version="(\d+)"', body, re.MULTILINE)
    return m.group(1) if m else None


def test_require_signature_refuses_unsigned_models_at_start_and_on_disk(
    tmp_path: Path, models_dir: Path, labels_1001: Path, samples_dir: Path
) -> None:
    _, key, pub = generate(tmp_path / "keys")
    _, other, _ = generate(tmp_path / "other")
    flat = (models_dir / "mobilenet_v1_0.75_192_quant.tflite").read_bytes()
    versions = {}
    for name, signer, version in (("unsigned", None, 0), ("foreign", other, 5), ("v1", key, 1), ("v2", key, 2),
                                  ("v3", key, 3)):  # fmt: skip
        p = fm.bundle(flat, labels_1001, tmp_path / f"{name}.tflite", source={"made_for": name})
        if signer is not None:
            sign_model(p, load_private(signer), version)
        versions[name] = p
    video = tmp_path / "v.avi"
    write_video(video, pick_samples(samples_dir, 3), seconds_each=1.0, fps=10.0)
    model = tmp_path / "run" / "model.tflite"
    model.parent.mkdir()
    replace(model, versions["unsigned"])
    port = free_port()
    cfg = tmp_path / "cam.toml"
    cfg.write_text(
        f'device_id = "cam"\nstate_dir = "{tmp_path / "state"}"\n[model]\npath = "{model}"\nthreads = 1\n'
        f'[source]\ntype = "file"\npath = "{video}"\nloop = true\n[http]\nlisten = "127.0.0.1:{port}"\n'
        f'[trust]\nkeys = ["{pub}"]\nrequire_signature = true\n'
    )

    r = run_cli("run", "--config", str(cfg), "--max-frames", "1", timeout=120)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 4, r.stderr
    assert "refused (unsigned): it carries no signature, and one is required" in lines[-1]
    print(f"\nstart with an unsigned model: exit 4: {lines[-1]}")

    replace(model, versions["v2"])
    child = RunChild(["--config", str(cfg)], dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        wait_line(child, r"ready: ", 0, 60)
        assert model_version(port) == "2"
        for name, refusal in (("unsigned", "refused (unsigned)"), ("foreign", "refused (unknown_key)"),
                              ("v1", "refused (lower_version): version 1 is older than 2")):  # fmt: skip
            seen = len(child.err)
            time.sleep(1.1)  # a new mtime
            replace(model, versions[name])
            line = wait_line(child, r"new model refused|loaded", seen, 15)
            assert "new model refused, keeping model.tflite" in line and refusal in line, line
            assert model_version(port) == "2"
            print(f"file replaced by {name}: {line}")
        seen = len(child.err)
        time.sleep(1.1)
        replace(model, versions["v3"])
        wait_line(child, r"model model\.tflite loaded", seen, 15)
        end = time.monotonic() + 5
        while model_version(port) != "3" and time.monotonic() < end:
            time.sleep(0.1)
        assert model_version(port) == "3"
        print("file replaced by a trusted signed version 3: taken, model_version 3 on /metrics")
        child.p.send_signal(signal.SIGTERM)
        assert child.p.wait(10) == 0
    finally:
        child.kill()


def test_require_signature_covers_a_regions_own_model(
    tmp_path: Path, models_dir: Path, labels_1001: Path, samples_dir: Path
) -> None:
    """A `[[region]] model` arrives like `[model] path`: unsigned under require_signature, the daemon
    does not start (exit 4, one line naming it); signed by the trusted key, it runs."""
    _, key, pub = generate(tmp_path / "keys")
    flat = (models_dir / "mobilenet_v1_0.75_192_quant.tflite").read_bytes()
    main = fm.bundle(flat, labels_1001, tmp_path / "main.tflite", source={"made_for": "main"})
    sign_model(main, load_private(key), 1)
    door = fm.bundle(flat, labels_1001, tmp_path / "door.tflite", source={"made_for": "door"})
    video = tmp_path / "v.avi"
    write_video(video, pick_samples(samples_dir, 2), seconds_each=0.5, fps=10.0)
    cfg = tmp_path / "cam.toml"
    cfg.write_text(
        f'device_id = "cam"\nstate_dir = "{tmp_path / "state"}"\n[model]\npath = "{main}"\nthreads = 1\n'
        f'[source]\ntype = "file"\npath = "{video}"\n'
        f'[[region]]\nname = "door"\nroi = [0, 0, 100, 100]\nmodel = "{door}"\n'
        f'[trust]\nkeys = ["{pub}"]\nrequire_signature = true\n'
    )
    r = run_cli("run", "--config", str(cfg), "--max-frames", "1", timeout=120)
    assert r.returncode == 4, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert "door.tflite" in last and "refused (unsigned)" in last, last
    sign_model(door, load_private(key), 1)
    r = run_cli("run", "--config", str(cfg), "--max-frames", "2", timeout=120)
    assert r.returncode == 0, r.stderr
