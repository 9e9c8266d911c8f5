"""Issue 23 part 2, the install job's parts on real files and a real HTTP server on loopback: the
download (size cap, resume with Range, refusals), the job ledger (atomic, capped, a full disk), and
the job's state machine (install.Installer) with its daemon side faked."""

from __future__ import annotations

import hashlib
import os
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import pytest

from edge_resnet.errors import ModelError
from edge_resnet.fleet import ledger as ledgermod
from edge_resnet.fleet.fetch import FetchFailed, FetchRefused, FetchStopped, fetch
from edge_resnet.fleet.health import Outcome, Rules
from edge_resnet.fleet.install import Installer, Running, Swapped, model_name
from edge_resnet.fleet.job import InstallCommand, JobState, JobStatus, Phase
from edge_resnet.fleet.ledger import Installed, JobRecord, Ledger, LedgerError
from tests.helpers.broker import free_port
from tests.helpers.fileserver import FileServer

DATA = bytes(range(256)) * 1000  # 256 000 bytes
SHA = hashlib.sha256(DATA).hexdigest()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[FileServer]:
    root = tmp_path / "srv"
    root.mkdir()
    (root / "m.tflite").write_bytes(DATA)
    (root / "nolen.tflite").write_bytes(DATA)
    s = FileServer(root).start()
    s.no_length.add("nolen.tflite")
    try:
        yield s
    finally:
        s.stop()


def left(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir()) if d.is_dir() else []


# -- the download ---------------------------------------------------------------------------------


def test_a_download_lands_whole_under_its_name_with_progress(server: FileServer, tmp_path: Path) -> None:
    d = tmp_path / "downloads"
    seen: list[int] = []
    out = fetch(server.url("m.tflite"), len(DATA), SHA, d / "j.part", d / "j.tflite",
                progress=lambda h, s: seen.append(h))  # fmt: skip
    assert out.read_bytes() == DATA and left(d) == ["j.tflite"]
    assert seen[-1] == len(DATA) and seen == sorted(seen)
    assert fetch(server.url("m.tflite"), len(DATA), SHA, d / "j.part", d / "j.tflite") == out  # done: not again
    assert len(server.requests) == 1


def test_a_partial_download_resumes_with_a_range_request(server: FileServer, tmp_path: Path) -> None:
    d = tmp_path / "downloads"
    d.mkdir()
    (d / "j.part").write_bytes(DATA[:100_000])  # what kill -9 left
    out = fetch(server.url("m.tflite"), len(DATA), SHA, d / "j.part", d / "j.tflite")
    assert out.read_bytes() == DATA and left(d) == ["j.tflite"]
    assert server.requests == [("/m.tflite", "bytes=100000-")]


def test_a_download_shorter_than_announced_is_refused_and_nothing_stays(server: FileServer, tmp_path: Path) -> None:
    d = tmp_path / "downloads"
    for url in (server.url("m.tflite"), server.url("nolen.tflite")):
        with pytest.raises(FetchRefused) as e:
            fetch(url, len(DATA) + 1000, SHA, d / "j.part", d / "j.tflite")
        assert str(e.value) == f"download shorter than announced ({len(DATA)} of {len(DATA) + 1000} bytes)"
        assert left(d) == []


def test_a_download_longer_than_announced_stops_at_the_cap(server: FileServer, tmp_path: Path) -> None:
    d = tmp_path / "downloads"
    cap = len(DATA) - 1000
    with pytest.raises(FetchRefused, match=r"^download longer than announced \(the server sends 256000 bytes, 255000"):
        fetch(server.url("m.tflite"), cap, SHA, d / "j.part", d / "j.tflite")
    seen: list[int] = []
    with pytest.raises(FetchRefused) as e:  # no Content-Length: read up to the cap, then one byte too many
        fetch(server.url("nolen.tflite"), cap, SHA, d / "j.part", d / "j.tflite", progress=lambda h, s: seen.append(h))
    assert str(e.value) == f"download longer than announced (more than {cap} bytes); stopped at the cap"
    assert max(seen) <= cap and left(d) == []


def test_a_download_with_another_digest_or_a_404_is_refused(server: FileServer, tmp_path: Path) -> None:
    d = tmp_path / "downloads"
    with pytest.raises(FetchRefused, match=r"SHA-256 .* does not match the announced"):
        fetch(server.url("m.tflite"), len(DATA), "0" * 64, d / "j.part", d / "j.tflite")
    with pytest.raises(FetchRefused, match="HTTP 404"):
        fetch(server.url("gone.tflite"), len(DATA), SHA, d / "j.part", d / "j.tflite")
    assert left(d) == []


def test_local_paths_are_fetched_with_the_same_cap(server: FileServer, tmp_path: Path) -> None:
    src = server.root / "m.tflite"
    d = tmp_path / "downloads"
    assert fetch(str(src), len(DATA), SHA, d / "a.part", d / "a.tflite").read_bytes() == DATA
    assert fetch(f"file://{src}", len(DATA), SHA, d / "b.part", d / "b.tflite").read_bytes() == DATA
    with pytest.raises(FetchRefused, match="longer than announced"):
        fetch(str(src), len(DATA) - 1, SHA, d / "c.part", d / "c.tflite")
    with pytest.raises(FetchRefused, match="shorter than announced"):
        fetch(str(src), len(DATA) + 1, SHA, d / "c.part", d / "c.tflite")
    assert left(d) == ["a.tflite", "b.tflite"]


def test_a_network_that_keeps_failing_is_a_failure_and_a_stop_keeps_the_part(tmp_path: Path) -> None:
    d = tmp_path / "downloads"
    with pytest.raises(FetchFailed, match=r"failed after 2 tries \(.*refused"):
        fetch(f"http://127.0.0.1:{free_port()}/m.tflite", 10, SHA, d / "j.part", d / "j.tflite", retries=2)
    root = tmp_path / "slow"
    root.mkdir()
    (root / "m.tflite").write_bytes(DATA)
    slow = FileServer(root, rate=200_000).start()
    stop = threading.Event()
    try:
        with pytest.raises(FetchStopped):
            fetch(slow.url("m.tflite"), len(DATA), SHA, d / "j.part", d / "j.tflite", stop=stop,
                  progress=lambda h, s: stop.set() if h >= 50_000 else None)  # fmt: skip
    finally:
        slow.stop()
    kept = (d / "j.part").read_bytes()
    assert 50_000 <= len(kept) < len(DATA) and DATA.startswith(kept)


# -- the ledger -----------------------------------------------------------------------------------


def cmd(job: str = "j1", version: int = 2, url: str = "/nowhere", size: int = 10, sha: str = "ab" * 32
        ) -> InstallCommand:  # fmt: skip
    return InstallCommand(job, url, sha, size, version)


def rec(job: str = "j1", version: int = 2, state: JobState = JobState.APPLIED, phase: Phase = Phase.DONE
        ) -> JobRecord:  # fmt: skip
    return JobRecord(cmd(job, version), JobStatus(job, state, version), phase)


def test_the_ledger_survives_a_restart_and_is_replaced_whole(tmp_path: Path) -> None:
    led = Ledger(tmp_path / "fleet")
    led.put(rec("j1", 2, JobState.DOWNLOADING, Phase.DOWNLOADING))
    led.put(rec("j0", 1), installed=(Installed(1, "/m/v1.tflite", "cd" * 32, "j0"), None), bad=(5, "too slow"))
    again = Ledger(tmp_path / "fleet")
    assert again.to_json() == led.to_json()
    assert again.current == Installed(1, "/m/v1.tflite", "cd" * 32, "j0") and again.bad == {5: "too slow"}
    assert [r.command.job_id for r in again.unfinished()] == ["j1"] and again.latest_job == "j0"
    assert left(tmp_path / "fleet") == ["ledger.json"]  # no temporary file left


def test_the_ledger_is_capped_and_an_unreadable_one_is_moved_aside(tmp_path: Path) -> None:
    led = Ledger(tmp_path / "fleet")
    for i in range(ledgermod.MAX_JOBS + 30):
        led.jobs[f"j{i}"] = rec(f"j{i}", i + 1)
    led.put(rec("last", 999))
    assert len(led.jobs) == ledgermod.MAX_JOBS and "last" in led.jobs and "j0" not in led.jobs
    (tmp_path / "fleet" / "ledger.json").write_text("{half a ledg")
    fresh = Ledger(tmp_path / "fleet")
    assert fresh.jobs == {} and fresh.current is None
    assert [n for n in left(tmp_path / "fleet") if n.startswith("ledger.json.unreadable-")]


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 KB tmpfs (root or CAP_SYS_ADMIN: skipped otherwise, a failure under CI=true)."""
    d = tmp_path / "tiny"
    d.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(d)], capture_output=True, text=True)
    if r.returncode != 0:
        msg = f"cannot mount a tmpfs here ({r.stderr.strip() or 'needs root'})"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    try:
        yield d
    finally:
        subprocess.run(["umount", "-l", str(d)], check=False, capture_output=True)


def fill(d: Path) -> None:
    fd = os.open(d / "ballast", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        while True:
            os.write(fd, bytes(4096))
    except OSError as e:
        assert e.errno == 28, e
    finally:
        os.close(fd)


def test_a_full_disk_is_one_clear_error_and_the_old_ledger_stays(tiny_disk: Path) -> None:
    led = Ledger(tiny_disk / "fleet")
    led.put(rec("j1", 2))
    before = (tiny_disk / "fleet" / "ledger.json").read_bytes()
    fill(tiny_disk)
    with pytest.raises(LedgerError) as e:
        led.put(rec("j2", 3))
    msg = str(e.value)
    assert "cannot write the fleet job ledger" in msg and "No space left on device" in msg and "free space" in msg
    assert "\n" not in msg
    assert (tiny_disk / "fleet" / "ledger.json").read_bytes() == before
    assert left(tiny_disk / "fleet") == ["ledger.json"]
    (tiny_disk / "ballast").unlink()
    led.put(rec("j2", 3))
    assert "j2" in Ledger(tiny_disk / "fleet").jobs


# -- the job's state machine, the daemon faked ------------------------------------------------------


class F(NamedTuple):
    at: float
    ok: bool
    invoke_ms: float
    label: str
    error: str = ""


@dataclass
class FakeDaemon:
    """install.Effects without a daemon: a model version that runs, frames the new model gives."""

    version: int | None = 1
    path: str = "/etc/edge-resnet/m.tflite"
    new_frames: list[F] = field(default_factory=list)
    signed: int | None = None
    fails_to_load: str | None = None
    calls: list[str] = field(default_factory=list)

    def running(self) -> Running:
        return Running(self.version, self.path)

    def verify(self, path: Path) -> int | None:
        self.calls.append("verify")
        return self.signed

    def swap_in(self, path: Path, version: int) -> Swapped:
        self.calls.append(f"swap_in {path.name}")
        if self.fails_to_load:
            raise ModelError(self.fails_to_load)
        prev = Running(self.version, self.path)
        self.version, self.path = version, str(path)
        before = [F(i * 0.1, True, 10.0, lab) for i, lab in enumerate(["cat", "dog"] * 20)]
        return Swapped(7, time.monotonic(), None, prev, before)

    def outcomes(self, swapped: Swapped) -> Sequence[Outcome]:
        return self.new_frames

    def swap_back(self, swapped: Swapped) -> None:
        self.calls.append("swap_back")
        self.version, self.path = swapped.previous.version, swapped.previous.path

    def settle(self, swapped: Swapped) -> None:
        self.calls.append("settle")


def installer(fleet: Path, daemon: FakeDaemon, published: list[JobStatus]) -> Installer:
    return Installer(Ledger(fleet), daemon, published.append, Rules(window_s=0.3), start_delay_max_s=0.0,
                     poll_s=0.02)  # fmt: skip


def job(src: Path, job_id: str = "j2", version: int = 2) -> JobRecord:
    c = InstallCommand(job_id, str(src), SHA, len(DATA), version)
    return JobRecord(c, JobStatus(job_id, JobState.QUEUED, version), Phase.QUEUED)


@pytest.fixture
def src(tmp_path: Path) -> Path:
    p = tmp_path / "m.tflite"
    p.write_bytes(DATA)
    return p


def states(published: list[JobStatus]) -> list[str]:
    out: list[str] = []
    for s in published:
        word = s.state.value + (f" ({s.reason})" if s.reason == "health window" else "")
        if not out or out[-1] != word:
            out.append(word)
    return out


def test_a_healthy_model_is_applied_step_by_step(tmp_path: Path, src: Path) -> None:
    d = FakeDaemon(new_frames=[F(i * 0.1, True, 11.0, lab) for i, lab in enumerate(["cat", "owl"] * 10)])
    published: list[JobStatus] = []
    inst = installer(tmp_path / "fleet", d, published)
    end = inst.run(job(src))
    assert states(published) == ["downloading", "verifying", "verifying (health window)", "applied"]
    assert end.phase is Phase.DONE and end.status.state is JobState.APPLIED and end.status.reason == ""
    assert published[-1].running_version == 2 and published[-1].previous_version == 1
    model = tmp_path / "fleet" / "models" / model_name(2, SHA)
    assert model.read_bytes() == DATA and left(tmp_path / "fleet" / "downloads") == []
    led = Ledger(tmp_path / "fleet")
    assert led.current == Installed(2, str(model), SHA, "j2")
    assert led.previous == Installed(1, "/etc/edge-resnet/m.tflite")
    assert d.calls == ["verify", f"swap_in {model.name}", "settle"]


def test_an_unhealthy_model_is_swapped_back_and_its_version_marked_bad(tmp_path: Path, src: Path) -> None:
    d = FakeDaemon(new_frames=[F(i * 0.1, True, 11.0, "shark") for i in range(20)])
    published: list[JobStatus] = []
    end = installer(tmp_path / "fleet", d, published).run(job(src))
    assert end.status.state is JobState.ROLLED_BACK and end.status.reason.startswith("says 'shark' on every frame")
    assert d.calls[-1] == "swap_back" and d.version == 1 and published[-1].running_version == 1
    led = Ledger(tmp_path / "fleet")
    assert led.current is None and led.bad == {2: end.status.reason}
    assert left(tmp_path / "fleet" / "models") == []


def test_a_model_that_does_not_load_is_rejected_and_marked_bad(tmp_path: Path, src: Path) -> None:
    d = FakeDaemon(fails_to_load="m.tflite loads but fails when run (bad op)")
    published: list[JobStatus] = []
    end = installer(tmp_path / "fleet", d, published).run(job(src))
    assert end.status.state is JobState.REJECTED
    assert end.status.reason == "the model does not run here: m.tflite loads but fails when run (bad op)"
    assert 2 in Ledger(tmp_path / "fleet").bad and d.version == 1


def test_a_bundle_signed_for_another_version_is_rejected_before_it_runs(tmp_path: Path, src: Path) -> None:
    d = FakeDaemon(signed=3)
    published: list[JobStatus] = []
    end = installer(tmp_path / "fleet", d, published).run(job(src))
    assert end.status.state is JobState.REJECTED
    assert end.status.reason.startswith("the bundle is signed as version 3 but the command says 2")
    assert not any(c.startswith("swap_in") for c in d.calls) and 2 not in Ledger(tmp_path / "fleet").bad


def test_a_job_that_died_in_its_health_window_is_rolled_back_at_the_next_start(tmp_path: Path, src: Path) -> None:
    led = Ledger(tmp_path / "fleet")
    r = job(src)
    led.put(JobRecord(r.command, JobStatus("j2", JobState.VERIFYING, 2, "health window"), Phase.WATCHING))
    d = FakeDaemon()
    published: list[JobStatus] = []
    end = installer(tmp_path / "fleet", d, published).run(led.unfinished()[0])
    assert end.status.state is JobState.ROLLED_BACK and "stopped during its health window" in end.status.reason
    assert 2 in Ledger(tmp_path / "fleet").bad and d.calls == []


def test_a_job_whose_version_was_overtaken_while_queued_is_rejected(tmp_path: Path, src: Path) -> None:
    d = FakeDaemon(version=5)
    published: list[JobStatus] = []
    end = installer(tmp_path / "fleet", d, published).run(job(src))
    assert end.status.state is JobState.REJECTED
    assert end.status.reason.startswith("version 2 is not newer than the installed version 5")


def test_a_full_state_disk_rejects_the_job_and_nothing_is_swapped(tiny_disk: Path, src: Path) -> None:
    d = FakeDaemon(new_frames=[F(0.0, True, 10.0, "cat")] * 10)
    published: list[JobStatus] = []
    inst = installer(tiny_disk / "fleet", d, published)
    fill(tiny_disk)
    end = inst.run(job(src))
    assert end.status.state is JobState.REJECTED and "cannot write the fleet job ledger" in end.status.reason
    assert [s.state for s in published] == [JobState.REJECTED] and d.calls == [] and d.version == 1


def test_golden_images_a_bundle_carries_are_checked_on_the_loaded_model(
    tmp_path: Path, models_dir: Path, labels_1001: Path, samples_dir: Path
) -> None:
    import json

    from edge_resnet.config import ModelConfig
    from edge_resnet.fleet.swap import check_golden
    from edge_resnet.images import load_image
    from edge_resnet.model import load_classifier
    from tests.helpers import fleet_models as fm
    from tests.helpers.video import pick_samples

    flat = (models_dir / "mobilenet_v1_0.75_192_quant.tflite").read_bytes()
    photos = pick_samples(samples_dir, 2, start=11)
    plain = load_classifier(ModelConfig(path=str(fm.bundle(flat, labels_1001, tmp_path / "plain.tflite"))))
    said = [plain.classify(load_image(p.path), k=1).top.label for p in photos]
    images = {f"golden/{i}.jpg": p.path.read_bytes() for i, p in enumerate(photos)}

    def with_golden(name: str, labels: list[str]) -> Path:
        doc = {"images": [{"file": f"golden/{i}.jpg", "label": lab} for i, lab in enumerate(labels)]}
        return fm.bundle(flat, labels_1001, tmp_path / name, files={"golden.json": json.dumps(doc).encode(), **images})

    check_golden(load_classifier(ModelConfig(path=str(with_golden("right.tflite", said)))))
    with pytest.raises(ModelError) as e:
        check_golden(load_classifier(ModelConfig(path=str(with_golden("wrong.tflite", [said[0], "toaster"])))))
    assert str(e.value) == f"golden images: 1 of 2 wrong (golden/1.jpg: expected 'toaster', got {said[1]!r})"
    check_golden(plain)  # a bundle without golden images: nothing to check
