"""Issue 24, must-show 3: client certificates. A real mosquitto with `require_certificate true` and
`use_identity_as_username true`, a CA made with openssl (tests/helpers/pki.py): the daemon with
`[mqtt] cert_file` and `key_file` connects (the broker knows it by its certificate's name); one without
is refused, and its /healthz says why; `doctor` checks every broker of the list and says which failed
and why, one row each."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from edge_resnet import doctor as d
from edge_resnet.errors import ConfigError, ExitCode
from edge_resnet.sinks.mqtt import MqttConfig, tls_problem
from edge_resnet.sinks.mqtt.tls import client_context
from tests.conftest import run_cli
from tests.helpers.broker import Broker, Subscriber, free_port
from tests.helpers.pki import Pki
from tests.helpers.run_child import RunChild, http_get, run_args
from tests.helpers.video import pick_samples, write_video

DEVICE = "cam-1"


def wait_until(pred: Callable[[], object], timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.1)
    return bool(pred())


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def mtls(pki: Pki, tmp_path: Path) -> Iterator[Broker]:
    """TLS with the test CA; clients must show a certificate it signed; CN = user name."""
    b = Broker(tmp_path / "mtls", pki=pki, require_certificate=True).start()
    try:
        yield b
    finally:
        b.stop()


class Daemon(RunChild):
    def __init__(self, args: list[str], state_dir: Path) -> None:
        super().__init__(args, dict(os.environ, STATE_DIRECTORY=str(state_dir), PYTHONUNBUFFERED="1"))


def test_cert_and_key_both_or_neither_and_usable(pki: Pki, tmp_path: Path) -> None:
    cert, key = pki.client("pair")
    other_cert, other_key = pki.client("other")
    with pytest.raises(ConfigError, match=r"\[mqtt\] cert_file: set without key_file"):
        MqttConfig(url="mqtts://127.0.0.1", cert_file=str(cert))
    with pytest.raises(ConfigError, match="is not the key of"):
        client_context(str(pki.ca), str(cert), str(other_key))
    enc = tmp_path / "enc.key"
    r = os.system(f"openssl pkey -in {key} -aes256 -passout pass:x -out {enc} 2>/dev/null")
    assert r == 0
    with pytest.raises(ConfigError, match="is encrypted"):
        client_context(str(pki.ca), str(cert), str(enc))
    cfg = MqttConfig(url="mqtts://127.0.0.1", cert_file=str(cert), key_file=str(tmp_path / "nope.key"))
    problems = cfg.file_problems()
    print("\n" + "\n".join(problems))
    assert len(problems) == 1 and problems[0].startswith(f"[mqtt] key_file: {tmp_path / 'nope.key'} cannot be read")
    assert MqttConfig(url="mqtts://127.0.0.1", cert_file=str(cert), key_file=str(key)).file_problems() == []
    assert other_cert.exists()


def test_daemon_with_a_client_certificate_connects_one_without_is_refused(
    pki: Pki, mtls: Broker, mobilenet_quant: Path, labels_1001: Path, samples_dir: Path, tmp_path: Path
) -> None:
    video = tmp_path / "v.avi"
    write_video(video, pick_samples(samples_dir, 3), seconds_each=1.0, fps=10)
    cert, key = pki.client(DEVICE)
    base = f"edge-resnet/{DEVICE}"
    sub = Subscriber(mtls.plain_port, [f"{base}/#"]).start()  # the test listens on the plain listener
    http = free_port()
    healthz = f"http://127.0.0.1:{http}/healthz"
    args = run_args(mobilenet_quant, labels_1001, video, "--loop", "--http", f"127.0.0.1:{http}")

    with_cert = tmp_path / "with.toml"
    with_cert.write_text(
        f'device_id = "{DEVICE}"\n[mqtt]\nurl = "{mtls.url}"\nca_file = "{pki.ca}"\n'
        f'cert_file = "{cert}"\nkey_file = "{key}"\n'
    )
    dmn = Daemon([*args, "--config", str(with_cert)], tmp_path / "s1")
    try:
        assert sub.wait_for(lambda ms: any(m.topic == f"{base}/events" for m in ms), 90), dmn.tail()
        assert wait_until(lambda: "mqtt connected" in http_get(healthz)[1], 10), http_get(healthz)
        code, body = http_get(healthz)
        print(f"\nwith a client certificate: /healthz {code}\n  " + "\n  ".join(body.splitlines()))
        assert code == 200 and body.splitlines()[0] == "ok"
        logged = mtls.log.read_text()
        assert f"as edge-resnet-{DEVICE} " in logged and f"u'{DEVICE}'" in logged, mtls.tail_log()  # CN = user
        dmn.p.send_signal(signal.SIGTERM)
        assert dmn.p.wait(15) == 0, dmn.tail()
    finally:
        dmn.kill()
        sub.stop()

    without = tmp_path / "without.toml"
    without.write_text(f'device_id = "nocert"\n[mqtt]\nurl = "{mtls.url}"\nca_file = "{pki.ca}"\n')
    dmn = Daemon([*args, "--config", str(without)], tmp_path / "s2")
    try:
        assert wait_until(lambda: "client certificate" in http_get(healthz)[1], 60), (http_get(healthz), dmn.tail())
        time.sleep(3.0)  # more refused retries: the words stay, the log says it once
        code, body = http_get(healthz)
        lines = body.splitlines()
        print("without one: /healthz " + str(code) + "\n  " + "\n  ".join(lines))
        assert code == 200 and lines[0] == "degraded: mqtt never connected", lines
        mqtt_line = next(line for line in lines if line.startswith("mqtt: "))
        assert f"broker 127.0.0.1:{mtls.port}: client certificate required" in mqtt_line
        assert "set [mqtt] cert_file and key_file" in mqtt_line
        said = [line for line in dmn.err if "client certificate required" in line]
        assert len(said) == 1, dmn.tail()
        assert "as edge-resnet-nocert " not in mtls.log.read_text()  # refused before MQTT: never connected
    finally:
        dmn.kill()


def test_doctor_names_each_broker_and_why(pki: Pki, mtls: Broker, tmp_path: Path) -> None:
    """Through the CLI, a config without a client certificate: a list of 3 (a TLS broker that works, a
    host that does not resolve, a broker that requires a client certificate) gives one row each."""
    good = Broker(tmp_path / "good", pki=pki).start()
    try:
        cfg = tmp_path / "three.toml"
        cfg.write_text(
            f'[mqtt]\nurl = ["{good.url}", "mqtts://nosuch.invalid:8883", "{mtls.url}"]\nca_file = "{pki.ca}"\n'
        )
        r = run_cli("doctor", "--config", str(cfg), "--state-dir", str(tmp_path), timeout=120)
        out = r.stdout.splitlines()
        rows = [line for line in out if line.startswith("broker")]
        shown = [line for i, line in enumerate(out) if line.startswith("broker") or out[i - 1].startswith("broker")]
        print("\n" + "\n".join(shown))
        assert r.returncode == ExitCode.PROBLEMS, r.stdout + r.stderr
        assert len(rows) == 3, r.stdout
        assert rows[0].split()[:3] == ["broker", "1", "ok"] and f"127.0.0.1:{good.port} reachable" in rows[0]
        assert "TLS certificate verified" in rows[0] and "MQTT CONNECT accepted" in rows[0]
        assert rows[1].split()[:3] == ["broker", "2", "FAIL"]
        assert "broker host nosuch.invalid: name not resolved (DNS)" in rows[1]
        assert rows[2].split()[:3] == ["broker", "3", "FAIL"]
        assert f"broker 127.0.0.1:{mtls.port}: client certificate required" in rows[2]
    finally:
        good.stop()


def test_doctor_with_a_client_certificate_accepted_refused_and_wrong_password(
    pki: Pki, mtls: Broker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The broker check with the config's certificate and credentials (what `doctor --config` passes):
    accepted by the broker whose CA signed it, refused by one that trusts another CA for its clients,
    and a broker that takes the certificate but not the password: auth."""
    other = Pki(tmp_path / "other-ca", "other-CA")
    strict = Broker(tmp_path / "strict", pki=pki, require_certificate=True, client_ca=other.ca).start()
    users = Broker(tmp_path / "users", pki=pki, users={DEVICE: "right"}).start()
    try:
        cert, key = pki.client(DEVICE)
        monkeypatch.setenv("EDGE_RESNET_MQTT_PASSWORD", "wrong")
        cfg = MqttConfig(
            url=[mtls.url, strict.url, users.url],
            ca_file=str(pki.ca),
            cert_file=str(cert),
            key_file=str(key),
            username=DEVICE,
        )
        rows = d.check_broker(cfg.url, timeout=5, mqtt=cfg)
        print("\n" + d.format_table(rows))
        assert [c.result for c in rows] == [d.Result.OK, d.Result.FAIL, d.Result.FAIL]
        assert f"client certificate {cert} accepted" in rows[0].detail
        assert f"broker 127.0.0.1:{strict.port}: client certificate refused" in rows[1].detail
        assert "signed by the CA the broker trusts" in rows[1].fix
        assert f"broker 127.0.0.1:{users.port} refused the connection: not authorized" in rows[2].detail
        assert "EDGE_RESNET_MQTT_PASSWORD" in rows[2].fix
        # the sink's own diagnosis says the same for a refused certificate
        problem = tls_problem("127.0.0.1", strict.port, str(pki.ca), 5.0, str(cert), str(key))
        assert problem is not None and problem.startswith("client certificate refused")
    finally:
        strict.stop()
        users.stop()
