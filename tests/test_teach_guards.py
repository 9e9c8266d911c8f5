"""Issue 21 must-show 3 and the starter examples: what the teaching routes refuse, the example store at
its cap and on a full disk (the daemon goes on classifying), and the most distinct crops proposed first.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edge_resnet.teach import most_distinct
from tests.helpers.broker import free_port
from tests.helpers.run_child import RunChild, http_get
from tests.test_teach import backbone, config, states_video, wait

__all__ = ["backbone"]  # the fixture


def test_most_distinct_covers_every_cluster_first() -> None:
    """Farthest-point sampling: four tight clusters of 30 crops each; the first four picks are one from
    each cluster (a colour histogram would need the clusters to differ in colour)."""
    rng = np.random.default_rng(0)
    centres = np.abs(rng.normal(0, 1, (4, 64)))
    emb = np.concatenate([c + rng.normal(0, 0.02, (30, 64)) for c in centres]).astype(np.float32)
    picks = most_distinct(emb, 6)
    assert len(picks) == 6 and len(set(picks)) == 6
    assert {p // 30 for p in picks[:4]} == {0, 1, 2, 3}
    assert most_distinct(np.zeros((0, 64), np.float32), 5) == []


def post(port: int, path: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, str]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        c.request("POST", path, body=body, headers={"Content-Type": "application/json", **(headers or {})})
        r = c.getresponse()
        return r.status, r.read().decode(errors="replace")
    finally:
        c.close()


def frames(port: int) -> float:
    _, text = http_get(f"http://127.0.0.1:{port}/metrics")
    for line in text.splitlines():
        if line.startswith("edge_resnet_frames_classified_total "):
            return float(line.split()[1])
    return 0.0


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs as the daemon's state directory (you are root here; CI runs as root too)."""
    d = tmp_path / "state"
    d.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(d)], capture_output=True, text=True)
    if r.returncode != 0:
        if os.environ.get("CI") == "true":
            pytest.fail(f"cannot mount a tmpfs for the full-disk test: {r.stderr.strip()}")
        pytest.skip(f"cannot mount a tmpfs (not root?): {r.stderr.strip()}")
    try:
        yield d
    finally:
        subprocess.run(["umount", "-l", str(d)], check=False)


def test_teaching_routes_refuse_bad_input_and_a_full_disk_stops_only_the_examples(
    backbone: Path, data_dir: Path, tmp_path: Path, small_disk: Path
) -> None:
    video = tmp_path / "states.avi"
    states_video(data_dir, video)
    port = free_port()
    conf = config(tmp_path, "cam", backbone, video, free_port(), port)
    text = conf.read_text().replace(f'state_dir = "{tmp_path / "cam"}"', f'state_dir = "{small_disk}"')
    text = "\n".join(ln for ln in text.splitlines() if not ln.startswith("[mqtt]") and not ln.startswith("url ="))
    conf.write_text(text + "\n")
    d = RunChild(["--config", str(conf)], dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        wait(lambda: http_get(f"http://127.0.0.1:{port}/api/regions/door/crop")[0] == 200, 60, "the first crop")
        _, crop = http_get(f"http://127.0.0.1:{port}/api/regions/door/crop")
        seq = json.loads(crop)["seq"]
        outside_before = sorted(p for p in tmp_path.rglob("*") if small_disk not in p.parents and p != small_disk)

        # a class name that would escape its folder, an empty one, `unknown`, a body that is not JSON
        for name in ("../escape", "a/b", "..", "", "unknown", "line\nbreak"):
            code, body = post(port, "/api/regions/door/examples", json.dumps({"class": name, "seq": seq}).encode())
            assert code == 400 and "rename it" in body, (name, code, body)
        code, body = post(port, "/api/regions/door/examples", b"class=open")
        assert code == 400 and "JSON" in body
        # a foreign origin, a body over the limit, an unknown region
        code, _ = post(port, "/api/regions/door/examples", b'{"class": "open"}', {"Origin": "http://evil.example"})
        assert code == 403
        # a 9 MiB import is refused from its head alone (413 before a byte of it is read)
        with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
            s.sendall(b"POST /api/regions/door/import HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                      b"Content-Type: application/zip\r\nContent-Length: %d\r\n\r\n" % (9 * 2**20))
            assert s.recv(64).startswith(b"HTTP/1.0 413")
        code, _ = post(port, "/api/regions/nowhere/examples", b'{"class": "open"}')
        assert code == 404
        outside_after = sorted(p for p in tmp_path.rglob("*") if small_disk not in p.parents and p != small_disk)
        assert outside_after == outside_before
        assert not (small_disk / "examples" / "door").exists() or not any(
            (small_disk / "examples" / "door").rglob("*.jpg"))  # fmt: skip

        code, body = post(port, "/api/regions/door/examples", json.dumps({"class": "open"}).encode())
        assert code == 200, body
        # the disk fills up: storing examples stops, said in one line; classification goes on
        filler = small_disk / "filler"
        subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=64k"], capture_output=True, check=False)
        code, body = post(port, "/api/regions/door/examples", json.dumps({"class": "open"}).encode())
        print(f"\nfull disk: {code} {body}")
        assert code == 507 and "full" in json.loads(body)["message"], body
        before = frames(port)
        time.sleep(2.0)
        assert frames(port) > before + 5, "classification stopped on a full disk"
        assert d.p.poll() is None
        filler.unlink()
        code, body = post(port, "/api/regions/door/examples", json.dumps({"class": "closed"}).encode())
        assert code == 200, body
        regions = json.loads(http_get(f"http://127.0.0.1:{port}/api/regions/")[1])["regions"]
        assert regions[0]["examples"] == {"open": 1, "closed": 1}, regions
    finally:
        d.kill()


def test_store_at_its_cap_drops_the_oldest_and_says_so(backbone: Path, data_dir: Path, tmp_path: Path) -> None:
    """The example store's cap through the teaching routes (a Teacher on a real Classifier, fed crops as
    the pipeline would): the oldest example goes and the answer names it."""
    from edge_resnet.classify import Classifier
    from edge_resnet.config import PipelineConfig
    from edge_resnet.engine import Engine
    from edge_resnet.observation import Frame
    from edge_resnet.regions import Region
    from edge_resnet.smoothing import Smoother
    from edge_resnet.teach import Teacher
    from tests.helpers.own_tasks import states_task

    clf = Classifier(Engine.load(backbone, threads=1))
    roi = (0, 0, 256, 256)

    class Pipe:
        def __init__(self) -> None:
            self.regions = [Region("door", roi, clf, Smoother(PipelineConfig().smoothing), str(backbone))]
            self.settled = True
            self.swapped: list[str] = []

        def swap_region(self, name: str, c: Classifier) -> None:
            self.swapped.append(name)

    pipe = Pipe()
    t = Teacher(pipe, tmp_path / "state", max_examples=3)  # type: ignore[arg-type]
    task = states_task(data_dir, "large", 3, seed=1)
    said = []
    for i, img in enumerate(task.images[:5]):
        res = clf.classify(img, roi=roi)
        for j in range(5):  # KEEP_EVERY: one frame in five is kept for the page
            t.seen("door", Frame(img, i * 5 + j, time.time(), time.monotonic()), roi, clf, res, res.top)
        code, _, body = t.post("/api/regions/door/examples", {}, json.dumps({"class": f"c{i % 2}"}).encode(), "")
        assert code == 200, body
        said.append(json.loads(body)["message"])
    print("\n" + "\n".join(said))
    assert sum(t._regions["door"].store.counts().values()) == 3
    assert [m.split(" stored")[0] for m in said] == ["frame 0", "frame 5", "frame 10", "frame 15", "frame 20"]
    assert "oldest example of c0 was removed" in said[3] and "oldest example of c1" in said[4]
