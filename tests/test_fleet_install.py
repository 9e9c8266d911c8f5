"""Issue 23 part 2, must-show 2, end to end: real daemons (child processes) on a video file, a real
mosquitto and a real HTTP server on loopback.

- three daemons in group `lab`: a good model sent to the group is applied on all three; then a bad
  one to each (always the same label, 10x slower, fails to invoke) is rolled back by itself within
  30 s of being applied, with no gap over 2 s in classification, no event lost (the MQTT events'
  seq has no hole and every label change a daemon printed arrived), and the job says `rolled_back`
  with the reason; then the refusals the install job owns, one line each with the good model still
  running: shorter than announced, longer than announced (stopped at the cap), an old command
  replayed, a lower version, a version rolled back before;
- `kill -9` during a download: no half model anywhere, and after the restart the job resumes (HTTP
  Range from where it was) and is applied; the start after that runs the installed model.

Each daemon is `edge-resnet run --config FILE` with `[fleet] enabled = true`.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import fleet_models as fm
from tests.helpers.broker import Broker, Message, Subscriber, broker
from tests.helpers.fileserver import FileServer
from tests.helpers.run_child import RunChild
from tests.helpers.video import pick_samples, write_video

__all__ = ["broker"]  # the fixture

PREFIX = "edge-resnet"
WINDOW_S = 5.0
DEVICES = ("cam-a", "cam-b", "cam-c")
TERMINAL = ("applied", "rolled_back", "rejected")


@dataclass(frozen=True)
class Bundles:
    root: Path  # served over HTTP
    start_model: Path  # what [model] path names: the published MobileNet v1 (plain .tflite)

    def command(self, name: str, job_id: str, version: int, size_delta: int = 0) -> dict[str, Any]:
        sha, size = fm.digest(self.root / name)
        return {"job_id": job_id, "sha256": sha, "size": size + size_delta, "version": version, "file": name}


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory, models_dir: Path, labels_1001: Path) -> Bundles:
    """The good model (MobileNet v2 as a bundle) and three bad ones made from it, in a second."""
    root = tmp_path_factory.mktemp("served")
    v2 = (models_dir / "mobilenet_v2_1.0_224_quant.tflite").read_bytes()
    fm.bundle(v2, labels_1001, root / "good.tflite")
    fm.bundle(fm.constant_label(v2, 3), labels_1001, root / "same-label.tflite")
    fm.bundle(fm.slower(v2, 10), labels_1001, root / "slow.tflite")
    fm.bundle(fm.fails_on_frames(v2), labels_1001, root / "fails.tflite")
    (root / "long.tflite").write_bytes((root / "good.tflite").read_bytes())  # sent without Content-Length
    return Bundles(root, models_dir / "mobilenet_v1_0.75_192_quant.tflite")


def write_config(path: Path, device: str, b: Bundles, labels: Path, video: Path, broker_url: str) -> Path:
    path.write_text(
        f'device_id = "{device}"\nstate_dir = "{path.parent / device}"\n'
        f'[model]\npath = "{b.start_model}"\nlabels = "{labels}"\nthreads = 1\n'
        f'[source]\ntype = "file"\npath = "{video}"\nloop = true\n'
        f'[mqtt]\nurl = "{broker_url}"\ndiscovery = false\nheartbeat_s = 5\n'
        "[stdout]\nenabled = true\nevery_frame = true\n"
        f'[fleet]\nenabled = true\ngroups = ["lab"]\nhealth_window_s = {WINDOW_S}\nstart_delay_max_s = 0\n'
    )
    return path


@pytest.fixture
def video(tmp_path: Path, samples_dir: Path) -> Path:
    v = tmp_path / "photos.avi"
    write_video(v, pick_samples(samples_dir, 6, start=5, step=41), seconds_each=1.0, fps=10.0)
    return v


@pytest.fixture
def served(bundles: Bundles) -> Iterator[FileServer]:
    s = FileServer(bundles.root).start()
    s.no_length.add("long.tflite")
    try:
        yield s
    finally:
        s.stop()


class Fleet:
    """Commands out, job statuses and presence in, through the test's own MQTT client."""

    def __init__(self, sub: Subscriber, server: FileServer) -> None:
        self.sub = sub
        self.server = server
        self.mark = 0  # messages before the last command sent

    def send(self, topic: str, cmd: dict[str, Any]) -> None:
        self.mark = len(self.sub.messages)
        doc = {k: v for k, v in cmd.items() if k != "file"}
        doc["url"] = self.server.url(cmd["file"])
        self.sub.client.publish(f"{PREFIX}/{topic}/model/install", json.dumps(doc), qos=1).wait_for_publish(5)

    def statuses(self, device: str, job_id: str | None = None, since: int = 0) -> list[dict[str, Any]]:
        with self.sub.cond:
            msgs = self.sub.messages[since:]
        docs = [m.json() for m in msgs if m.topic == f"{PREFIX}/{device}/model/job"]
        return [d for d in docs if job_id is None or d["job_id"] == job_id]

    def wait_end(self, device: str, job_id: str, timeout: float, since: int | None = None) -> dict[str, Any]:
        """The job's terminal status, published after the last command was sent (or after `since`)."""
        since = self.mark if since is None else since

        def ended(_: list[Message]) -> bool:
            return any(d["state"] in TERMINAL for d in self.statuses(device, job_id, since))

        assert self.sub.wait_for(ended, timeout), f"{device}: job {job_id} did not end: {self.statuses(device, job_id)}"
        return next(d for d in self.statuses(device, job_id, since) if d["state"] in TERMINAL)

    def presence(self, device: str) -> dict[str, Any] | None:
        got = self.sub.on(f"{PREFIX}/{device}/fleet")
        return got[-1].json() if got else None

    def wait_presence(self, device: str, key: str, value: Any, timeout: float) -> bool:
        """The device's newest presence document has `key` == `value`."""
        return self.sub.wait_for(lambda _: key in (self.presence(device) or {}) and
                                 (self.presence(device) or {})[key] == value, timeout)  # fmt: skip


class Child(RunChild):
    """`edge-resnet run --config FILE`, its stdout (a JSON line a frame) and stderr kept."""

    def __init__(self, config: Path) -> None:
        super().__init__(["--config", str(config)], dict(os.environ, PYTHONUNBUFFERED="1"), keep_stdout=True)

    def drained(self, timeout: float = 5.0) -> None:
        """After the child exited: every line it wrote has been read."""
        for t in self.readers:
            t.join(timeout)


def frames(child: Child) -> list[dict[str, Any]]:
    return [json.loads(line) for line in list(child.out) if line.startswith("{")]


def max_gap(docs: list[dict[str, Any]]) -> float:
    t = [d["classified_at"] for d in docs]
    return max((b - a for a, b in itertools.pairwise(t)), default=0.0)


def stop(child: Child) -> int:
    child.p.send_signal(signal.SIGTERM)
    return child.p.wait(15)


def test_three_daemons_apply_a_good_model_and_roll_back_bad_ones_by_themselves(
    broker: Broker, bundles: Bundles, served: FileServer, video: Path, labels_1001: Path, tmp_path: Path
) -> None:
    sub = Subscriber(broker.port, [f"{PREFIX}/#"]).start()
    fleet = Fleet(sub, served)
    daemons = {d: Child(write_config(tmp_path / f"{d}.toml", d, bundles, labels_1001, video, broker.url))
               for d in DEVICES}  # fmt: skip
    try:
        for d, child in daemons.items():
            assert fleet.wait_presence(d, "running_version", None, 60), f"{d}:\n{child.tail()}"
            p = fleet.presence(d) or {}
            assert (p["device"], p["groups"], p["running_version"]) == (d, ["lab"], None)

        # 1. a good model for the group: applied on all three
        good = bundles.command("good.tflite", "v2-good", 2)
        t0 = time.monotonic()
        fleet.send("group/lab", good)
        for d in DEVICES:
            end = fleet.wait_end(d, "v2-good", 90)
            assert end["state"] == "applied" and end["reason"] == "", f"{d}: {end}\n{daemons[d].tail()}"
            assert end["running_version"] == 2 and end["previous_version"] is None
            steps = [s["state"] for s in fleet.statuses(d, "v2-good")]
            assert steps[0] == "queued" and "downloading" in steps and steps[-1] == "applied"
            assert any(s["reason"] == "health window" for s in fleet.statuses(d, "v2-good"))
        print(f"\ngood model (group lab): applied on {len(DEVICES)} daemons in {time.monotonic() - t0:.1f} s "
              f"(health window {WINDOW_S:g} s)")  # fmt: skip
        for d in DEVICES:
            assert fleet.wait_presence(d, "running_version", 2, 10)

        # 2. a bad model for each: rolled back by itself, with the reason
        bad = {"cam-a": ("same-label.tflite", "says 'great white shark, white shark"),
               "cam-b": ("slow.tflite", "too slow: invoke"),
               "cam-c": ("fails.tflite", "fails to invoke: ")}  # fmt: skip
        before = len(sub.messages)
        for d, (name, _) in bad.items():
            fleet.send(d, bundles.command(name, f"v3-{name.split('.')[0]}", 3))
        for d, (name, words) in bad.items():
            job = f"v3-{name.split('.')[0]}"
            end = fleet.wait_end(d, job, 90, since=before)
            assert end["state"] == "rolled_back" and end["reason"].startswith(words), f"{d}: {end}"
            assert end["running_version"] == 2
            swapped = next(s for s in fleet.statuses(d, job)
                           if s["reason"] == "health window" and s["running_version"] == 3)  # fmt: skip
            took = end["ts"] - swapped["ts"]
            ran = [f for f in frames(daemons[d]) if f["model"].startswith("v3-")]
            print(f"{d} {name}: rolled back {took:.1f} s after it was applied ({len(ran)} frames classified by it): "
                  f"{end['reason']}")  # fmt: skip
            assert took < 30.0
            if name != "fails.tflite":
                assert ran, "the bad model never classified: it was not swapped in"

        # 3. the refusals the install job owns, each one line, the good model still running (cam-a)
        # the same job twice does nothing twice: one download, one swap
        requests = len(served.requests)
        fleet.send("cam-a", bundles.command("good.tflite", "v5-again", 5))
        fleet.send("cam-a", bundles.command("good.tflite", "v5-again", 5))
        assert fleet.wait_end("cam-a", "v5-again", 60)["state"] == "applied"
        assert len(served.requests) == requests + 1
        assert [s["state"] for s in fleet.statuses("cam-a", "v5-again")].count("applied") == 1
        refusals = {
            "short": (bundles.command("good.tflite", "v6-short", 6, size_delta=+1000),
                      "download shorter than announced"),
            "long": (bundles.command("long.tflite", "v6-long", 6, size_delta=-1000),
                     "download longer than announced (more than"),
            "replayed": (good, "job v2-good ended applied before (version 2); an old command replayed"),
            "lower": (bundles.command("good.tflite", "v4-old", 4),
                      "version 4 is not newer than the installed version 5"),
            "bad again": (bundles.command("same-label.tflite", "v3-again", 3),
                          "version 3 was rolled back on this device"),
        }  # fmt: skip
        for what, (cmd, words) in refusals.items():
            fleet.send("cam-a", cmd)
            end = fleet.wait_end("cam-a", cmd["job_id"], 30)
            assert end["state"] == "rejected" and words in end["reason"] and "\n" not in end["reason"], (what, end)
            assert end["running_version"] == 5
            print(f"refused ({what}): {end['reason']}")
        assert (fleet.presence("cam-a") or {}).get("running_version") == 5
        time.sleep(1.0)
        last = frames(daemons["cam-a"])[-5:]
        assert {f["model"] for f in last} == {f"v5-{fm.digest(bundles.root / 'good.tflite')[0][:12]}.tflite"}
    finally:
        codes = {d: stop(c) if c.p.poll() is None else c.p.returncode for d, c in daemons.items()}
        for c in daemons.values():
            c.kill()
    assert codes == dict.fromkeys(DEVICES, 0), {d: daemons[d].tail() for d in DEVICES}

    # across the whole run: classification never paused for more than 2 s, and no event was lost
    for d, child in daemons.items():
        child.drained()
        docs = frames(child)
        gap = max_gap(docs[1:])
        events = [m.json() for m in sub.on(f"{PREFIX}/{d}/events")]
        seqs = sorted({int(e["seq"]) for e in events})
        changed = {f["frame_seq"] for f in docs if f["changed"]}
        got = {e["frame_seq"] for e in events}
        last_seen = max(got)
        missing = {s for s in changed if s <= last_seen} - got
        print(f"{d}: {len(docs)} frames, longest gap {gap:.2f} s; {len(seqs)} events, seq {seqs[0]}..{seqs[-1]}, "
              f"{len(missing)} lost")  # fmt: skip
        assert gap < 2.0
        assert seqs == list(range(1, seqs[-1] + 1)), "a hole in the event seq"
        assert not missing, f"label changes printed but never published: frames {sorted(missing)[:5]}"
    sub.stop()


def test_kill_9_during_a_download_leaves_no_half_model_and_the_job_resumes(
    broker: Broker, bundles: Bundles, video: Path, labels_1001: Path, tmp_path: Path
) -> None:
    server = FileServer(bundles.root, rate=400_000).start()
    sub = Subscriber(broker.port, [f"{PREFIX}/#"]).start()
    fleet = Fleet(sub, server)
    cfg = write_config(tmp_path / "cam-k.toml", "cam-k", bundles, labels_1001, video, broker.url)
    state = tmp_path / "cam-k"
    child = Child(cfg)
    try:
        assert fleet.wait_presence("cam-k", "running_version", None, 60), child.tail()
        cmd = bundles.command("good.tflite", "v2-resume", 2)
        fleet.send("cam-k", cmd)

        def a_fifth(_: list[Message]) -> bool:
            return any(s["state"] == "downloading" and s["progress"] >= 20 for s in fleet.statuses("cam-k"))

        assert sub.wait_for(a_fifth, 60), child.tail()
        child.p.send_signal(signal.SIGKILL)
        child.p.wait(5)
        fleet_dir = state / "fleet"
        part = fleet_dir / "downloads" / "v2-resume.part"
        have = part.stat().st_size
        assert 0.2 * cmd["size"] <= have < cmd["size"]
        models = sorted(str(p.relative_to(state)) for p in state.rglob("*.tflite"))
        assert models == [], f"a model file after kill -9: {models}"
        ledger = json.loads((fleet_dir / "ledger.json").read_text())
        assert ledger["current"] is None and ledger["jobs"][-1]["phase"] == "downloading"
        print(f"\nkill -9 at {100 * have // cmd['size']}% of {cmd['size']} bytes: only {part.name} "
              f"({have} bytes), no model file")  # fmt: skip

        server.rate = None
        n_before = len(sub.messages)
        child = Child(cfg)
        end = fleet.wait_end("cam-k", "v2-resume", 90)
        assert end["state"] == "applied", f"{end}\n{child.tail()}"
        after = [m.json() for m in sub.messages[n_before:] if m.topic.endswith("/model/job")]
        first = next(s for s in after if s["state"] == "downloading")
        ranges = [r for p, r in server.requests if p == "/good.tflite"]
        print(f"after the restart: resumed at {first['progress']}% (HTTP Range {ranges[-1]}), job {end['state']}")
        assert first["progress"] >= 20 and ranges[-1] == f"bytes={have}-"
        assert sorted(p.name for p in (fleet_dir / "models").iterdir()) == [
            f"v2-{cmd['sha256'][:12]}.tflite"
        ] and not any((fleet_dir / "downloads").iterdir())
        assert fleet.wait_presence("cam-k", "running_version", 2, 10)
        assert stop(child) == 0

        # the next start runs the installed model, not [model] path
        n_before = len(sub.messages)
        child = Child(cfg)

        def announced(ms: list[Message]) -> bool:
            return any(m.topic == f"{PREFIX}/cam-k/fleet" for m in ms[n_before:])

        assert sub.wait_for(announced, 60), child.tail()
        assert fleet.presence("cam-k") == {**(fleet.presence("cam-k") or {}), "running_version": 2,
                                           "model": f"v2-{cmd['sha256'][:12]}.tflite"}  # fmt: skip
        assert stop(child) == 0
        child.drained()
        assert {f["model"] for f in frames(child)} == {f"v2-{cmd['sha256'][:12]}.tflite"}
        print(f"restarted: runs version 2 ({len(frames(child))} frames) from the start")
    finally:
        child.kill()
        server.stop()
        sub.stop()


def test_with_require_signature_only_a_model_signed_by_a_trusted_key_is_installed(
    broker: Broker, bundles: Bundles, video: Path, labels_1001: Path, models_dir: Path, tmp_path: Path
) -> None:
    from edge_resnet.fleet.keys import generate, load_private
    from edge_resnet.fleet.manifest import sign_model

    _, key, pub = generate(tmp_path / "keys")
    _, other, _ = generate(tmp_path / "other-keys")
    root = tmp_path / "served"
    root.mkdir()
    good = (bundles.root / "good.tflite").read_bytes()
    for name in ("unsigned", "foreign", "signed"):
        (root / f"{name}.tflite").write_bytes(good)
    sign_model(root / "foreign.tflite", load_private(other), 2)
    sign_model(root / "signed.tflite", load_private(key), 2)
    start = fm.bundle((models_dir / "mobilenet_v1_0.75_192_quant.tflite").read_bytes(), labels_1001,
                      tmp_path / "start.tflite")  # fmt: skip
    sign_model(start, load_private(key), 1)
    signed = Bundles(root, start)
    cfg = write_config(tmp_path / "cam-s.toml", "cam-s", signed, labels_1001, video, broker.url)
    cfg.write_text(cfg.read_text() + f'[trust]\nkeys = ["{pub}"]\nrequire_signature = true\n')
    server = FileServer(root).start()
    sub = Subscriber(broker.port, [f"{PREFIX}/#"]).start()
    fleet = Fleet(sub, server)
    child = Child(cfg)
    try:
        assert fleet.wait_presence("cam-s", "running_version", 1, 60), child.tail()  # its signature's version
        for cmd, words in (
            (signed.command("unsigned.tflite", "v2-unsigned", 2), "refused (unsigned): it carries no signature"),
            (signed.command("foreign.tflite", "v2-foreign", 2), "refused (unknown_key)"),
            (signed.command("signed.tflite", "v3-mislabelled", 3),
             "the bundle is signed as version 2 but the command says 3"),
        ):
            fleet.send("cam-s", cmd)
            end = fleet.wait_end("cam-s", cmd["job_id"], 30)
            assert end["state"] == "rejected" and end["reason"].startswith(words), end
            assert end["running_version"] == 1
            print(f"\nrefused ({cmd['file']}, version {cmd['version']}): {end['reason']}")
        fleet.send("cam-s", signed.command("signed.tflite", "v2-signed", 2))
        end = fleet.wait_end("cam-s", "v2-signed", 60)
        assert end["state"] == "applied" and end["running_version"] == 2 and end["previous_version"] == 1, end
        print(f"signed by the trusted key: {end['state']}, version {end['previous_version']} -> "
              f"{end['running_version']}")

        def state_names_version_2(_: list[Message]) -> bool:  # the retained state document names it too
            got = sub.on(f"{PREFIX}/cam-s/state")
            return bool(got) and got[-1].json().get("model_version") == 2

        assert sub.wait_for(state_names_version_2, 40), [m.json() for m in sub.on(f"{PREFIX}/cam-s/state")][-1:]
        assert stop(child) == 0
    finally:
        child.kill()
        server.stop()
        sub.stop()
