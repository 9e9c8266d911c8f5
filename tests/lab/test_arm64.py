"""A Raspberry Pi user's first day on arm64 (bookworm = Pi OS Bookworm, Python 3.11; trixie = Pi OS
Trixie, Python 3.13), under qemu-user: the README's Pi install in a Pi-like system site, then
classify, info, the daemon to the host's broker, and doctor.

Each root filesystem gets a fresh copy for the run; the install follows README.md's `pi-install`
block line by line (apt lines are what the root filesystem already holds).
"""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.broker import Broker, Message, Subscriber
from tests.helpers.pki import Pki

from .conftest import LAB, REPO, eval_images, host_run, rootfs, top1_by_file
from .machine import Rootfs, fresh_copy, q

NAMES = ["arm64-bookworm", "arm64-trixie"]
VENV = "/root/er"


def readme_pi_install() -> list[str]:
    """The shell lines of README.md's pi-install block."""
    text = (REPO / "README.md").read_text()
    m = re.search(r"<!-- lab: pi-install[^>]*-->\s*```sh\n(.*?)```", text, re.S)
    assert m, "README.md has no `<!-- lab: pi-install -->` block"
    return [ln.strip() for ln in m.group(1).splitlines() if ln.strip() and not ln.startswith("#")]


class Pi:
    def __init__(self, name: str, fs: Rootfs, install_log: str, install_s: float) -> None:
        self.name = name
        self.fs = fs
        self.install_log = install_log
        self.install_s = install_s

    def er(self, args: str, timeout: float = 900, check: bool = True, env: dict[str, str] | None = None) -> Any:
        return self.fs.run(f"{VENV}/bin/edge-resnet {args}", timeout=timeout, check=check, env=env)


@pytest.fixture(scope="module", params=NAMES)
def pi(request: pytest.FixtureRequest, prepared: dict[str, Any]) -> Iterator[Pi]:
    name: str = request.param
    pristine = rootfs(prepared, name)
    root = fresh_copy(pristine, LAB / "run" / name)
    binds = {Path(prepared["data"]): "/data", LAB / "dist": "/lab/dist", LAB / "work": "/lab/work"}
    fs = Rootfs(root, binds)
    wheel = f"/lab/dist/{Path(prepared['wheel']).name}"
    log: list[str] = []
    t0 = time.monotonic()
    for line in readme_pi_install():
        if line.startswith("sudo apt"):
            # what apt installs is in the root filesystem already (python3-picamera2 is Raspberry
            # Pi OS's own package: its Debian dependencies python3-av/-prctl stand in, see rootfs.sh)
            continue
        cmd = re.sub(r"(install\b.*?)\s+edge-resnet(\s|$)", rf"\1 {wheel}\2", line)
        assert cmd != line or "pip install" not in line, f"no `edge-resnet` requirement to replace in: {line}"
        r = fs.run(cmd, timeout=1200)
        log.append(f"$ {cmd}\n{r.stdout}{r.stderr}")
    yield Pi(name, fs, "\n".join(log), time.monotonic() - t0)


def test_install_uses_only_wheels(pi: Pi, figure: Callable[[str], None]) -> None:
    assert "--only-binary=:all:" in pi.install_log, "the README's pip line must refuse source builds"
    assert "Building wheel" not in pi.install_log and "setup.py" not in pi.install_log, pi.install_log[-3000:]
    r = pi.fs.run(f"{VENV}/bin/python -m pip list --format=json")
    pkgs = {p["name"].lower(): p["version"] for p in json.loads(r.stdout)}
    py = pi.fs.run(f"{VENV}/bin/python -c 'import platform,sys; print(platform.machine(), sys.version.split()[0])'")
    assert py.stdout.split()[0] == "aarch64", py.stdout
    figure(
        f"{pi.name}: {py.stdout.strip()}, installed in {pi.install_s:.0f} s from wheels only: edge-resnet "
        f"{pkgs.get('edge-resnet')}, ai-edge-litert {pkgs.get('ai-edge-litert')}, "
        f"opencv-python-headless {pkgs.get('opencv-python-headless')}, numpy {pkgs.get('numpy')}"
    )


def test_pi_system_site_still_imports(pi: Pi, figure: Callable[[str], None]) -> None:
    """picamera2's world (apt's numpy, av, prctl, a numpy C extension) and ours in one venv."""
    probe = (
        "import av, prctl, scipy.ndimage, numpy, cv2, edge_resnet.engine, numpy as np; "
        "scipy.ndimage.gaussian_filter(np.zeros((8, 8)), 1.0); "
        "print(numpy.__version__, numpy.__file__, cv2.__version__, av.__version__)"
    )
    r = pi.fs.run(f"{VENV}/bin/python -c {q(probe)}")
    numpy_version, numpy_file, cv2_version, av_version = r.stdout.split()
    apt = pi.fs.run("/usr/bin/python3 -c 'import numpy; print(numpy.__version__)'").stdout.strip()
    assert numpy_version == apt, f"the venv sees numpy {numpy_version}, apt's is {apt}"
    assert numpy_file.startswith("/usr/lib/python3/dist-packages/"), numpy_file
    figure(
        f"{pi.name}: venv sees numpy {numpy_version} (apt's, {numpy_file}); av {av_version}, "
        f"scipy.ndimage and OpenCV {cv2_version} import together"
    )


@pytest.fixture(scope="session")
def x86_reference(prepared: dict[str, Any]) -> dict[str, dict[str, int]]:
    """The same classify --json on this x86 machine, from the device install (.venv-device)."""
    exe = REPO / ".venv-device" / "bin" / "edge-resnet"
    assert exe.exists(), f"{exe} is missing: tests/run.sh (or tests/lab/run.sh) creates .venv-device"
    data = Path(prepared["data"])
    files = [str(data / "imagenet-samples" / e["file"]) for e in eval_images(data / "imagenet-samples")]
    out = {}
    for model, extra in _models(prepared, data).items():
        r = host_run([str(exe), "classify", "--json", "--top-k", "1", *extra, *files])
        assert r.returncode == 0, r.stderr[-2000:]
        out[model] = top1_by_file(r.stdout)
        assert len(out[model]) == 100
    return out


def _models(prepared: dict[str, Any], data: Path, inside: bool = False) -> dict[str, list[str]]:
    d = "/data" if inside else str(data)
    bundle = Path(prepared["mobilenet_bundle"])
    b = f"/lab/work/mobilenet/out/{bundle.name}" if inside else str(bundle)
    return {
        "mobilenet_v2": ["--model", f"{d}/models/mobilenet_v2_1.0_224_quant.tflite",
                         "--labels", f"{d}/models/imagenet_labels_1001.txt"],
        "converted_mobilenet_v2": ["--model", b],
    }  # fmt: skip


@pytest.mark.parametrize("model", ["mobilenet_v2", "converted_mobilenet_v2"])
def test_classify_agrees_with_x86(
    pi: Pi, model: str, prepared: dict[str, Any], x86_reference: dict[str, dict[str, int]],
    figure: Callable[[str], None],
) -> None:  # fmt: skip
    data = Path(prepared["data"])
    files = " ".join(q(f"/data/imagenet-samples/{e['file']}") for e in eval_images(data / "imagenet-samples"))
    args = " ".join(q(a) for a in _models(prepared, data, inside=True)[model])
    t0 = time.monotonic()
    r = pi.er(f"classify --json --top-k 1 {args} {files}", timeout=1800)
    secs = time.monotonic() - t0
    arm = top1_by_file(r.stdout)
    ref = x86_reference[model]
    assert set(arm) == set(ref), f"classified {len(arm)} of {len(ref)} images"
    same = sum(arm[f] == ref[f] for f in ref)
    figure(f"{pi.name} {model}: top-1 agrees with x86 on {same}/100 images ({secs:.0f} s for 100 under qemu)")
    assert same >= 99


def test_resnet18_bundle_info_and_classify(pi: Pi, prepared: dict[str, Any], figure: Callable[[str], None]) -> None:
    """The converted ResNet-18 loads on aarch64, XNNPACK takes it, and it classifies like on x86."""
    bundle = f"/lab/work/resnet18/out/{Path(prepared['resnet18_bundle']).name}"
    info = json.loads(pi.er(f"info --json {bundle}").stdout)
    text = json.dumps(info)
    assert "edge-resnet-bundle" in text and "int8" in text.lower(), text[:2000]
    assert "xnnpack" in str(info.get("delegate")).lower(), info.get("delegate")
    summary = pi.er(f"info {bundle}").stdout
    data = Path(prepared["data"])
    files = [e["file"] for e in eval_images(data / "imagenet-samples", 10)]
    paths = " ".join(q(f"/data/imagenet-samples/{f}") for f in files)
    arm = pi.er(f"classify --json --top-k 1 --model {bundle} {paths}")
    x86 = host_run([str(REPO / ".venv-device" / "bin" / "edge-resnet"), "classify", "--json", "--top-k", "1", "--model",
                    prepared["resnet18_bundle"], *(str(data / "imagenet-samples" / f) for f in files)])  # fmt: skip
    a, x = top1_by_file(arm.stdout), top1_by_file(x86.stdout)
    assert len(a) == len(x) == 10, (arm.stderr[-1000:], x86.stderr[-1000:])
    lat = [json.loads(ln)["latency_ms"] for ln in arm.stdout.splitlines() if ln.startswith("{")]
    figure(f"{pi.name}: ResNet-18 bundle: info ok ({len(summary.splitlines())} lines), 10 images classified, "
           f"top-1 same as x86 on {sum(a[f] == x[f] for f in x)}/10 (random weights: near-ties), "
           f"{sorted(lat)[5]:.0f} ms per image under qemu")  # fmt: skip


def test_daemon_events_reach_the_hosts_broker(
    pi: Pi, host_broker: Broker, prepared: dict[str, Any], figure: Callable[[str], None]
) -> None:
    dev = f"lab-{pi.name}"
    sub = Subscriber(host_broker.port, [f"edge-resnet/{dev}/#"]).start()
    try:
        model = "--model /data/models/mobilenet_v2_1.0_224_quant.tflite --labels /data/models/imagenet_labels_1001.txt"
        t0 = time.monotonic()
        r = pi.er(
            f"run {model} --source /lab/work/{Path(prepared['video']).name} --fast --device-id {dev} "
            f"--mqtt mqtt://127.0.0.1:{host_broker.port}",
            timeout=600,
        )
        secs = time.monotonic() - t0
        events_topic = f"edge-resnet/{dev}/events"
        assert sub.wait_for(lambda ms: len([m for m in ms if m.topic == events_topic]) >= 3, 30), (
            f"events seen: {[m.text for m in sub.on(events_topic)]}\n{r.stderr[-2000:]}"
        )
        events = [m.json() for m in sub.on(events_topic)]
        want = list(prepared["video_classes"])  # ImageNet class indices (background is not a class)
        got = [e.get("class_index") for e in events]
        seqs = [e["seq"] for e in events]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), seqs
        avail = sub.on(f"edge-resnet/{dev}/availability")
        assert avail and avail[-1].text == "offline", [m.text for m in avail]
        figure(
            f"{pi.name}: daemon ran {secs:.0f} s on the 24-frame video; {len(events)} events on the host's "
            f"broker, labels {[e.get('label') for e in events]} (photos' classes {want}, got {got}); "
            f"last availability 'offline'"
        )
        assert sum(w in got for w in want) >= 2, f"events {got} do not name the photos' classes {want}"
    finally:
        sub.stop()


def test_doctor(pi: Pi, host_broker: Broker, figure: Callable[[str], None]) -> None:
    r = pi.er(
        f"doctor --json --model /data/models/mobilenet_v2_1.0_224_quant.tflite "
        f"--mqtt mqtt://127.0.0.1:{host_broker.port} --state-dir /tmp",
        check=False,
    )
    assert r.returncode in (0, 9), r.stderr[-2000:]  # 9: problems found (no camera in the lab)
    rows = json.loads(r.stdout)
    checks = rows["checks"] if isinstance(rows, dict) else rows
    by = {c["name"]: c for c in checks}
    assert by["model"]["result"] == "ok", by["model"]
    assert by["broker"]["result"] == "ok", by["broker"]
    assert by["interpreter"]["result"] == "ok", by["interpreter"]
    assert by["camera"]["result"] == "skip"  # no config, no --source: the camera is information (issue 22)
    figure(f"{pi.name}: doctor: model {by['model']['detail']}; broker {by['broker']['detail']}")


def learned_top1(stdout: str) -> dict[str, str]:
    """`classify --json` lines of a learned model -> file name -> top-1 label (the user's class)."""
    return {Path(r["path"]).name: r["top_k"][0]["label"] for r in map(json.loads, stdout.splitlines())
            if r}  # fmt: skip


@pytest.fixture(scope="session")
def x86_learned(prepared: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Issue 20 on x86 (the device install, .venv-device): `learn` on the states examples with the
    converted MobileNet v2, then `classify` of the 100 test frames with the learned model."""
    exe = str(REPO / ".venv-device" / "bin" / "edge-resnet")
    st = prepared["states"]
    out = tmp_path_factory.mktemp("learn-x86") / "states.tflite"
    r = host_run([exe, "learn", st["examples"], "--model", prepared["mobilenet_bundle"], "--out", str(out)])
    assert r.returncode == 0, r.stderr[-2000:]
    files = sorted(Path(st["test"]).glob("*.png"))
    r = host_run([exe, "classify", "--json", "--top-k", "1", "--model", str(out), *map(str, files)])
    assert r.returncode == 0, r.stderr[-2000:]
    return learned_top1(r.stdout)


def test_learn_and_classify_agree_with_x86(
    pi: Pi, prepared: dict[str, Any], x86_learned: dict[str, str], figure: Callable[[str], None]
) -> None:
    """Issue 20 must-show 4: the device learns the same states from the same examples (its own
    embeddings, its own head fit) and labels the 100 test frames as x86 does (>= 99 of 100)."""
    st = prepared["states"]
    bundle = f"/lab/work/mobilenet/out/{Path(prepared['mobilenet_bundle']).name}"
    t0 = time.monotonic()
    r = pi.er(f"learn /lab/work/states/examples --model {bundle} --out /root/states.tflite", timeout=1800)
    learn_s = time.monotonic() - t0
    accuracy = next((ln for ln in r.stderr.splitlines() if ln.startswith("accuracy:")), "?")
    files = " ".join(q(f"/lab/work/states/test/{name}") for name in sorted(st["truth"]))
    t0 = time.monotonic()
    c = pi.er(f"classify --json --top-k 1 --model /root/states.tflite {files}", timeout=1800)
    arm = learned_top1(c.stdout)
    assert set(arm) == set(x86_learned) == set(st["truth"]), (len(arm), len(x86_learned))
    same = sum(arm[f] == x86_learned[f] for f in arm)
    right_arm = sum(arm[f] == st["truth"][f] for f in arm)
    right_x86 = sum(x86_learned[f] == st["truth"][f] for f in arm)
    figure(
        f"{pi.name}: learn on 3 states x 10 examples in {learn_s:.0f} s under qemu ({accuracy.split(';')[0]}); "
        f"classify of 100 test frames: {same}/100 labels as on x86 (right: arm64 {right_arm}, x86 {right_x86}; "
        f"{time.monotonic() - t0:.0f} s)"
    )
    assert same >= 99


# -- issue 24 must-show 4: two bridged brokers and a client certificate, on the emulated Pi ----------


def _fo_seqs(msgs: list[Message], topic: str, since: float = 0.0) -> list[int]:
    return [int(m.json()["seq"]) for m in msgs if m.topic == topic and m.at >= since]


def test_daemon_fails_over_to_the_second_broker_losing_nothing(
    pi: Pi, prepared: dict[str, Any], tmp_path: Path, figure: Callable[[str], None]
) -> None:
    """`[mqtt] url = [first, second]`, two bridged mosquittos on the host: the first is killed while the
    daemon on the emulated Pi classifies; it publishes on the second (qemu's seconds measured), and every
    seq it made reached a broker."""
    dev = f"lab-fo-{pi.name}"
    events = f"edge-resnet/{dev}/events"
    a = Broker(tmp_path / "a").start()
    b = Broker(tmp_path / "b", bridge=[a.port]).start()
    sub_a = Subscriber(a.port, [f"edge-resnet/{dev}/#"]).start()
    sub_b = Subscriber(b.port, [f"edge-resnet/{dev}/#"]).start()
    cfg = pi.fs.path("/root/failover.toml")
    cfg.write_text(f'device_id = "{dev}"\n[mqtt]\nurl = ["{a.url}", "{b.url}"]\nkeepalive = 5\nheartbeat_s = 2.0\n')
    state = "/root/failover-state"
    result: dict[str, Any] = {}
    video = f"/lab/work/{Path(prepared['video_emulated']).name}"

    def daemon() -> None:
        result["r"] = pi.er(
            "run --model /data/models/mobilenet_v2_1.0_224_quant.tflite --labels /data/models/imagenet_labels_1001.txt "
            f"--source {video} --loop --duration 45 --config /root/failover.toml",
            timeout=400, check=False, env={"STATE_DIRECTORY": state},
        )  # fmt: skip

    t = threading.Thread(target=daemon, daemon=True)
    t0 = time.monotonic()
    t.start()
    try:
        # about a frame a second under qemu: the 5 s-a-photo video gives one label change per photo
        assert sub_a.wait_for(lambda ms: len(_fo_seqs(ms, events)) >= 2, 180), result.get("r")
        startup_s = time.monotonic() - t0
        killed = time.time()
        a.kill()
        on_a = set(_fo_seqs(sub_a.messages, events))  # nothing reaches the first after its death

        def direct(ms: list[Message]) -> list[Message]:  # published on the second, not bridged from the first
            return [m for m in ms if m.topic == events and m.at >= killed and int(m.json()["seq"]) not in on_a]

        assert sub_b.wait_for(lambda ms: bool(direct(ms)), 60), result.get("r")
        first_s = direct(sub_b.messages)[0].at - killed
        online = [m.at for m in sub_b.messages if m.topic == f"edge-resnet/{dev}/availability"
                  and m.text == "online" and m.at >= killed]  # fmt: skip
        online_s = f"{online[0] - killed:.1f} s" if online else "?"
        t.join(300)
        assert not t.is_alive() and result["r"].returncode == 0, result["r"].stderr[-3000:]
        db_path = pi.fs.path(f"{state}/events.sqlite")
        with closing(sqlite3.connect(db_path)) as db:  # the last seq ever given (AUTOINCREMENT)
            last = int(db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()[0])
            left = int(db.execute("SELECT count(*) FROM events").fetchone()[0])
        on_b = set(_fo_seqs(sub_b.messages, events))
        got = on_b | set(_fo_seqs(sub_a.messages, events))
        lost = sorted(set(range(1, last + 1)) - got)
        after = len(direct(sub_b.messages))
        figure(
            f"{pi.name}: first events after {startup_s:.0f} s under qemu; first broker killed: online on the "
            f"second after {online_s}, first event there after {first_s:.1f} s ({after} events published "
            f"there); seq 1..{last} made, {len(got)} received ({len(on_b)} seen on the second, bridged or "
            f"direct), {len(lost)} lost, {left} still queued"
        )
        assert first_s < 40.0, first_s  # 10 s on the workstation; here a label change takes ~5 s of video
        assert after >= 1 and not lost and left == 0, (lost, left)
    finally:
        a.stop()
        b.stop()
        t.join(300)
        sub_a.stop()
        sub_b.stop()


def test_client_certificate_connects_and_doctor_says_when_missing(
    pi: Pi, prepared: dict[str, Any], tmp_path: Path, figure: Callable[[str], None]
) -> None:
    """A `require_certificate` broker on the host: the daemon on the emulated Pi with cert_file/key_file
    (files copied into the root filesystem, the daemon runs as root there) connects and publishes; without
    them, `doctor` there names the broker and the missing client certificate."""
    dev = f"lab-cert-{pi.name}"
    pki = Pki(tmp_path / "pki")
    cert, key = pki.client(dev)
    inside = pi.fs.path("/root/pki")
    inside.mkdir(exist_ok=True)
    for f in (pki.ca, cert, key):
        shutil.copy(f, inside / f.name)
    ca_in, cert_in, key_in = (f"/root/pki/{f.name}" for f in (pki.ca, cert, key))
    mtls = Broker(tmp_path / "mtls", pki=pki, require_certificate=True).start()
    sub = Subscriber(mtls.plain_port, [f"edge-resnet/{dev}/#"]).start()
    try:
        pi.fs.path("/root/with-cert.toml").write_text(
            f'device_id = "{dev}"\n[mqtt]\nurl = "{mtls.url}"\nca_file = "{ca_in}"\n'
            f'cert_file = "{cert_in}"\nkey_file = "{key_in}"\n'
        )
        t0 = time.monotonic()
        r = pi.er(
            "run --model /data/models/mobilenet_v2_1.0_224_quant.tflite --labels /data/models/imagenet_labels_1001.txt "
            f"--source /lab/work/{Path(prepared['video']).name} --fast --max-frames 8 --config /root/with-cert.toml",
            timeout=400, check=False, env={"STATE_DIRECTORY": "/root/cert-state"},
        )  # fmt: skip
        secs = time.monotonic() - t0
        topic = f"edge-resnet/{dev}/events"
        assert sub.wait_for(lambda ms: any(m.topic == topic for m in ms), 30), (r.returncode, r.stderr[-3000:])
        assert r.returncode == 0, r.stderr[-3000:]
        logged = mtls.log.read_text()
        assert f"as edge-resnet-{dev} " in logged and f"u'{dev}'" in logged, mtls.tail_log()  # CN = user name

        pi.fs.path("/root/no-cert.toml").write_text(f'[mqtt]\nurl = "{mtls.url}"\nca_file = "{ca_in}"\n')
        d = pi.er("doctor --config /root/no-cert.toml --state-dir /tmp", timeout=300, check=False)
        rows = [ln for ln in d.stdout.splitlines() if ln.startswith("broker")]
        figure(
            f"{pi.name}: with a client certificate: daemon ran {secs:.0f} s, {len(sub.on(topic))} events, the "
            f"broker knew it as user {dev!r}; without: doctor exit {d.returncode}, {rows}"
        )
        assert d.returncode == 9, d.stdout + d.stderr[-2000:]  # problems found
        assert len(rows) == 1 and "FAIL" in rows[0], d.stdout
        assert f"broker 127.0.0.1:{mtls.port}: client certificate required" in rows[0], d.stdout
    finally:
        sub.stop()
        mtls.stop()
