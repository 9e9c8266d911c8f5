"""Your own classes under `[trust] require_signature = true` (fleet/headrecord.py, fleet/trust.py).

A head the device learned itself (`edge-resnet learn`, teaching from the overlay) carries no fleet
signature. It runs when the device recorded writing it on a backbone that is a signed bundle, and
the backbone's signature verifies under today's `[trust]`; a head on an unsigned backbone, one from
elsewhere, or one edited after the device wrote it is refused in one line naming the file and the
fix. Without require_signature nothing changes. Real `edge-resnet learn` and `run` subprocesses,
on a fixed camera's states (tests/helpers/own_tasks.py) and the published MobileNet v2.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from edge_resnet.bundle import HEAD_NAME, META_NAME, read_model, write_members
from edge_resnet.fleet.headrecord import HeadRecords
from edge_resnet.fleet.keys import generate, load_private, load_public
from edge_resnet.fleet.manifest import sign_model
from edge_resnet.fleet.trust import ModelRefused, Refusal, TrustPolicy, check_model
from tests.conftest import run_cli
from tests.helpers.broker import free_port
from tests.helpers.own_tasks import states_task, write_folders
from tests.helpers.run_child import RunChild
from tests.test_teach import ROI, backbone, states_video, wait
from tests.test_teach_guards import post
from tests.test_trust_daemon import model_version, replace, wait_line

__all__ = ["backbone"]  # the fixture

CLASSES = {"empty", "parcel", "door_open", "unknown"}


@dataclass(frozen=True)
class Made:
    root: Path
    pub: Path
    key: Path
    signed: Path  # the backbone, signed version 3
    mine: Path  # learned on the signed backbone: recorded
    on_unsigned: Path  # learned on the unsigned backbone: not recorded
    edited: Path  # `mine` with its head changed (and its digest in the metadata updated to match)
    state: Path
    video: Path
    learn_stderr: str


def edit_head(src: Path, out: Path) -> Path:
    """What someone who can write the model file, and not the state directory, would do: every frame
    goes to the head's first class. head.npz and the metadata's head_sha256 agree, so the file loads."""
    mf = read_model(src)
    with np.load(io.BytesIO(mf.files[HEAD_NAME])) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["bias"] = arrays["bias"].copy()
    arrays["bias"][arrays["columns"] == 0] += 1000.0
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    head = buf.getvalue()
    meta = json.loads(mf.members[META_NAME])
    meta["head"]["head_sha256"] = hashlib.sha256(head).hexdigest()
    members = {**mf.members, META_NAME: json.dumps(meta, indent=2, sort_keys=True).encode(), HEAD_NAME: head}
    return write_members(mf.flatbuffer, members, out)


@pytest.fixture(scope="module")
def made(backbone: Path, data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Made:
    d = tmp_path_factory.mktemp("trust_learned")
    _, key, pub = generate(d / "keys")
    signed = d / "signed.tflite"
    shutil.copyfile(backbone, signed)
    sign_model(signed, load_private(key), 3)
    write_folders(states_task(data_dir, "large", 8, seed=1), d / "examples", d / "test", k=5, seed=0)
    state = d / "state"
    env = {"STATE_DIRECTORY": str(state)}  # as systemd sets it for the unit: the daemon's state directory
    r = run_cli("learn", str(d / "examples"), "--model", str(signed), "--out", str(d / "mine.tflite"), env=env)
    assert r.returncode == 0, r.stderr
    u = run_cli("learn", str(d / "examples"), "--model", str(backbone), "--out", str(d / "on_unsigned.tflite"),
                env=env)  # fmt: skip
    assert u.returncode == 0, u.stderr
    video = d / "states.avi"
    states_video(data_dir, video)
    return Made(d, pub, key, signed, d / "mine.tflite", d / "on_unsigned.tflite",
                edit_head(d / "mine.tflite", d / "edited.tflite"), state, video, r.stderr)  # fmt: skip


def config(m: Made, name: str, *, model: Path | None = None, region: Path | None = None, require: bool = True,
           http: int | None = None, state: Path | None = None) -> Path:  # fmt: skip
    lines = [
        f'device_id = "{name}"', f'state_dir = "{state or m.state}"',
        f'[model]\npath = "{model or m.signed}"\nthreads = 1',
        f'[source]\ntype = "file"\npath = "{m.video}"\nloop = true',
        "[stdout]\nevery_frame = true",
        f'[trust]\nkeys = ["{m.pub}"]\nrequire_signature = {"true" if require else "false"}',
    ]
    if http is not None:
        lines.append(f'[http]\nlisten = "127.0.0.1:{http}"')
    if region is not None:
        lines.append(f"[[region]]\nname = \"door\"\nroi = [{', '.join(map(str, ROI))}]\nmodel = \"{region}\"")
    p = m.root / f"{name}.toml"
    p.write_text("\n".join(lines) + "\n")
    return p


def door_labels(stdout: str) -> set[str]:
    return {d["label"] for d in map(json.loads, stdout.splitlines()) if d.get("region") == "door"}


def test_learned_head_on_a_signed_backbone_runs_under_require_signature(made: Made) -> None:
    """Before: `learn`'s model was unsigned, so the daemon refused the user's own classes (exit 4,
    "refused (unsigned)") however it arrived. Now: as a `[[region]] model` at start, and as `[model]
    path`, where it runs at its backbone's signed version; a file replaced by an edited head or by a
    head on an unsigned backbone is refused and it runs on."""
    r = run_cli("run", "--config", str(config(made, "region", region=made.mine)), "--max-frames", "6", timeout=120)
    assert r.returncode == 0, r.stderr
    assert door_labels(r.stdout) and door_labels(r.stdout) <= CLASSES, r.stdout[-500:]
    print(f"\n[[region]] model = mine.tflite, require_signature: exit 0, door labels {sorted(door_labels(r.stdout))}")
    assert "recorded mine.tflite as learned on this device on a signed backbone" in made.learn_stderr
    records = sorted((made.state / "learned").glob("*.json"))
    assert len(records) == 1, records  # the head on the unsigned backbone got none

    model = made.root / "run" / "model.tflite"
    model.parent.mkdir()
    replace(model, made.mine)
    port = free_port()
    child = RunChild(["--config", str(config(made, "main", model=model, http=port))],
                     dict(os.environ, PYTHONUNBUFFERED="1"))  # fmt: skip
    try:
        line = wait_line(child, r"model .* fleet version|ready: ", 0, 60)
        assert "fleet version 3" in line, line  # the version the backbone's signature gives
        wait_line(child, r"ready: ", 0, 60)
        assert model_version(port) == "3"
        for src in (made.edited, made.on_unsigned):
            seen = len(child.err)
            time.sleep(1.1)  # a new mtime
            replace(model, src)
            line = wait_line(child, r"new model refused|loaded", seen, 15)
            assert "new model refused, keeping model.tflite" in line and "refused (head_not_recorded)" in line, line
            assert model_version(port) == "3"
            print(f"file replaced by {src.name}: {line}")
        child.p.send_signal(signal.SIGTERM)
        assert child.p.wait(10) == 0
    finally:
        child.kill()


def test_head_on_an_unsigned_backbone_is_refused(made: Made) -> None:
    r = run_cli("run", "--config", str(config(made, "unsigned", region=made.on_unsigned)), "--max-frames", "1",
                timeout=120)  # fmt: skip
    assert r.returncode == 4, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    print(f"\nhead on an unsigned backbone: exit 4: {last}")
    assert f"{made.on_unsigned}: refused (head_not_recorded)" in last, last
    assert "learn it on this device from a signed bundle" in last and "edge-resnet sign" in last, last


def test_edited_head_is_refused(made: Made, tmp_path: Path) -> None:
    """The edit is one that loads (head.npz and its digest in the metadata agree): only the device's
    record tells it from what the device wrote. The same edit copied elsewhere was never recorded."""
    r = run_cli("run", "--config", str(config(made, "edited", region=made.edited)), "--max-frames", "1", timeout=120)
    assert r.returncode == 4, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    print(f"\nedited head: exit 4: {last}")
    assert f"{made.edited}: refused (head_not_recorded)" in last, last

    # edited in place, where the device wrote it
    in_place = tmp_path / "mine.tflite"
    shutil.copyfile(made.mine, in_place)
    policy = TrustPolicy.of([load_public(made.pub)], require_signature=True, heads=HeadRecords(made.state))
    assert check_model(in_place, policy) is not None  # a byte-for-byte copy is what the device wrote
    made_here = tmp_path / "state"
    shutil.copytree(made.state, made_here)
    r = run_cli("learn", str(made.root / "examples"), "--model", str(made.signed), "--out", str(in_place),
                env={"STATE_DIRECTORY": str(made_here)})  # fmt: skip
    assert r.returncode == 0, r.stderr
    edit_head(in_place, in_place)
    r = run_cli("run", "--config", str(config(made, "edited2", region=in_place, state=made_here)), "--max-frames", "1",
                timeout=120)  # fmt: skip
    assert r.returncode == 4, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    print(f"edited where learn wrote it: exit 4: {last}")
    assert f"{in_place}: refused (head_changed)" in last and "run edge-resnet learn again" in last, last


def test_the_backbone_signature_is_checked_at_every_load(made: Made, tmp_path: Path) -> None:
    """The record holds the backbone's signature, verified under the `[trust]` of the moment: a retired
    or untrusted key refuses its heads too; a head learned on a recorded head inherits its backbone."""
    heads = HeadRecords(made.state)
    pub = load_public(made.pub)
    m = check_model(made.mine, TrustPolicy.of([pub], require_signature=True, heads=heads))
    assert m is not None and m.version == 3
    with pytest.raises(ModelRefused) as e:
        check_model(made.mine, TrustPolicy.of([pub], [m.key_id], require_signature=True, heads=heads))
    assert e.value.reason is Refusal.RETIRED_KEY and f"{made.mine}: its backbone: refused (retired_key)" in str(e.value)
    _, _, other = generate(tmp_path / "other")
    with pytest.raises(ModelRefused) as e:
        check_model(made.mine, TrustPolicy.of([load_public(other)], require_signature=True, heads=heads))
    assert e.value.reason is Refusal.UNKNOWN_KEY
    with pytest.raises(ModelRefused) as e:  # no record to read (verify on a workstation): unsigned, as before
        check_model(made.mine, TrustPolicy.of([pub], require_signature=True))
    assert e.value.reason is Refusal.UNSIGNED

    state = tmp_path / "state"
    shutil.copytree(made.state, state)
    again = tmp_path / "again.tflite"
    r = run_cli("learn", str(made.root / "examples"), "--model", str(made.mine), "--out", str(again),
                "--state-dir", str(state), unset=("STATE_DIRECTORY",))  # the daemon's state_dir, by hand
    assert r.returncode == 0, r.stderr
    assert str(state) in r.stderr, r.stderr  # "recorded again.tflite as learned ... (<state>/learned/...)"
    m2 = check_model(again, TrustPolicy.of([pub], require_signature=True, heads=HeadRecords(state)))
    assert m2 is not None and m2.version == 3


def test_without_require_signature_nothing_changes(made: Made) -> None:
    """Keys configured, require_signature = false: unsigned heads run as they always did (the edited
    one too: every door frame goes to its first class)."""
    for src in (made.on_unsigned, made.edited):
        r = run_cli("run", "--config", str(config(made, "open", region=src, require=False)), "--max-frames", "4",
                    timeout=120)  # fmt: skip
        assert r.returncode == 0, r.stderr
        labels = door_labels(r.stdout)
        assert labels and labels <= CLASSES, r.stdout[-500:]
        if src == made.edited:
            assert labels == {"door_open"}, labels  # the first class, sorted
        print(f"\nrequire_signature = false, {src.name}: exit 0, door labels {sorted(labels)}")


def test_a_taught_head_saved_on_a_signed_backbone_loads_under_require_signature(made: Made, tmp_path: Path) -> None:
    """Teaching from the page writes `models/door.tflite` in the state directory and records it; a
    device told to run that file as the region's model (after a restart) takes it. Before, it was
    refused as unsigned."""
    state = tmp_path / "state"
    port = free_port()
    cfg = config(made, "teach", http=port, state=state)
    cfg.write_text(cfg.read_text() + f"[[region]]\nname = \"door\"\nroi = [{', '.join(map(str, ROI))}]\n")
    d = RunChild(["--config", str(cfg)], dict(os.environ, PYTHONUNBUFFERED="1"))
    saved = state / "models" / "door.tflite"
    try:
        wait_line(d, r"ready: ", 0, 60)
        for cls in ("closed", "parcel", "closed", "parcel"):
            wait(lambda c=cls: post(port, "/api/regions/door/examples", json.dumps({"class": c}).encode())[0] == 200,
                 20, f"a stored {cls} example")  # fmt: skip
            time.sleep(0.6)  # another crop
        wait(saved.is_file, 30, "the taught head saved")
        d.p.send_signal(signal.SIGTERM)
        assert d.p.wait(10) == 0
    finally:
        d.kill()
    kept = tmp_path / "door.tflite"
    shutil.copyfile(saved, kept)
    r = run_cli("run", "--config", str(config(made, "taught", region=kept, state=state)), "--max-frames", "4",
                timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert door_labels(r.stdout) <= {"closed", "parcel", "unknown"}, r.stdout[-500:]
    print(f"\ntaught head as [[region]] model, require_signature: exit 0, door labels {sorted(door_labels(r.stdout))}")
    # that run taught the region again, on its own model (a recorded head): the file it saved is recorded
    # too, with the backbone's signature, and the record of the file it replaced is gone
    assert "teaching: region door retrained" in r.stderr, r.stderr[-2000:]
    assert read_model(saved).members != read_model(kept).members
    policy = TrustPolicy.of([load_public(made.pub)], require_signature=True, heads=HeadRecords(state))
    m = check_model(saved, policy)
    assert m is not None and m.version == 3
    assert len(list((state / "learned").glob("*.json"))) == 1
