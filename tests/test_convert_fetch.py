"""`fetch` against a local HTTP server on 127.0.0.1: Range resume, validation, files already there, labels."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edge_resnet.convert import fetch
from edge_resnet.errors import ExitCode, InputError, ModelError
from tests.conftest import run_cli


def _tiny_classifier() -> bytes:
    """A small but real 4-D image classifier: Conv -> GAP -> Flatten -> Gemm."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(0, 0.1, (8, 3, 3, 3)).astype(np.float32), "w")
    fc = numpy_helper.from_array(rng.normal(0, 0.1, (10, 8)).astype(np.float32), "fc")
    # an unused initializer makes the file long enough to interrupt mid-way
    pad = numpy_helper.from_array(rng.normal(0, 1, 50_000).astype(np.float32), "unused")
    nodes = [
        helper.make_node("Conv", ["data", "w"], ["c"], kernel_shape=[3, 3]),
        helper.make_node("GlobalAveragePool", ["c"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "fc"], ["logits"], transB=1),
    ]
    g = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])], [w, fc, pad],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 8)])
    m.ir_version = 4
    return bytes(m.SerializeToString())


def synset_txt() -> bytes:
    """The zoo's synset.txt shape: 1000 lines of `nXXXXXXXX name, other name`."""
    return "".join(f"n{i:08d} class {i}, c{i}\n" for i in range(1000)).encode()


class _State:
    files: ClassVar[dict[str, bytes]] = {}
    cut_first_at: int | None = None  # close the first full-body response after this many bytes
    honour_range = True
    requests: ClassVar[list[tuple[str, str | None]]] = []


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        name = self.path.rsplit("/", 1)[-1]
        rng = self.headers.get("Range")
        _State.requests.append((name, rng))
        body = _State.files.get(name)
        if body is None:
            self.send_error(404)
            return
        start = 0
        if rng and _State.honour_range:
            start = int(rng.split("=")[1].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        chunk = body[start:]
        if _State.cut_first_at is not None and start == 0:
            self.wfile.write(chunk[: _State.cut_first_at])
            _State.cut_first_at = None
            self.wfile.flush()
            self.connection.shutdown(2)
            return
        self.wfile.write(chunk)


@pytest.fixture()
def server() -> Iterator[str]:
    _State.files = {
        "resnet18-v1-7.onnx": _tiny_classifier(),
        "resnet34-v1-7.onnx": b"version https://git-lfs",
        "synset.txt": synset_txt(),
    }
    _State.cut_first_at = None
    _State.honour_range = True
    _State.requests = []
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/models"
    srv.shutdown()
    srv.server_close()


def test_names() -> None:
    assert fetch.canonical("ResNet50") == "resnet50-v1-7"
    assert fetch.canonical("resnet101-v2.onnx") == "resnet101-v2-7"
    with pytest.raises(InputError):
        fetch.canonical("resnet51")


def test_interrupted_download_resumes_with_range(server: str, tmp_path: Path) -> None:
    _State.cut_first_at = 50_000
    path = fetch.fetch("resnet18-v1", out=tmp_path, base_url=server, timeout=5)
    assert path.read_bytes() == _State.files["resnet18-v1-7.onnx"]
    assert _State.requests[0] == ("resnet18-v1-7.onnx", None)
    assert any(r == "bytes=50000-" for _, r in _State.requests[1:]), _State.requests
    onnx.load(str(path))
    n = len(_State.requests)
    assert fetch.fetch("resnet18-v1", out=tmp_path, base_url=server) == path  # cache hit: no request
    assert len(_State.requests) == n


def test_partial_file_from_an_earlier_run_is_continued(server: str, tmp_path: Path) -> None:
    body = _State.files["resnet18-v1-7.onnx"]
    (tmp_path / "resnet18-v1-7.onnx.part").write_bytes(body[:1234])
    path = fetch.fetch("resnet18-v1", out=tmp_path, base_url=server, timeout=5)
    assert path.read_bytes() == body
    assert _State.requests == [("resnet18-v1-7.onnx", "bytes=1234-")]


def test_server_without_range_restarts_cleanly(server: str, tmp_path: Path) -> None:
    _State.honour_range = False
    body = _State.files["resnet18-v1-7.onnx"]
    (tmp_path / "resnet18-v1-7.onnx.part").write_bytes(b"stale bytes")
    assert fetch.fetch("resnet18-v1", out=tmp_path, base_url=server, timeout=5).read_bytes() == body


def test_lfs_pointer_is_rejected_and_removed(server: str, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not a usable ONNX classifier"):
        fetch.fetch("resnet34-v1", out=tmp_path, base_url=server, timeout=5)
    assert not list(tmp_path.iterdir())


def test_http_404_is_one_line(server: str, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="HTTP 404"):
        fetch.fetch("resnet152-v2", out=tmp_path, base_url=server, timeout=5)


def test_cli_saves_here_and_prints_the_path(server: str, tmp_path: Path) -> None:
    """Issue 22: the README's next line takes the bare file name, so fetch saves into --out, by default
    the current folder, with the 1000 class names beside it; stdout is the model's path."""
    proc = run_cli("fetch", "resnet18-v1", "--out", str(tmp_path), "--base-url", server)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(tmp_path / "resnet18-v1-7.onnx")
    assert "saved resnet18-v1-7.onnx" in proc.stderr and "imagenet_labels.txt" in proc.stderr
    names = (tmp_path / "imagenet_labels.txt").read_text().splitlines()
    assert len(names) == 1000 and names[7] == "class 7, c7"  # synset ids dropped, order kept
    assert sorted(p.name for p in tmp_path.iterdir()) == ["imagenet_labels.txt", "resnet18-v1-7.onnx"]
    assert ("synset.txt", None) in _State.requests  # two folders above resnet/model, as in the zoo


def test_a_labels_file_that_is_not_the_synset_list_is_refused(server: str, tmp_path: Path) -> None:
    _State.files["synset.txt"] = b"<html>rate limited</html>\n"
    with pytest.raises(InputError, match="not the ImageNet synset list"):
        fetch.fetch_labels(tmp_path, base_url=server, timeout=5)
    assert not list(tmp_path.iterdir())


def test_an_unresolvable_host_is_a_dns_failure_not_an_interruption(tmp_path: Path) -> None:
    """Issue 22: a DNS failure was logged three times as "download interrupted ... resuming". `.invalid`
    never resolves (RFC 2606): one line says so, names the offline way, and nothing is retried."""
    proc = run_cli("fetch", "resnet50-v1", "--out", str(tmp_path), "--base-url", "http://zoo.invalid/models")
    assert proc.returncode == int(ExitCode.INPUT), proc.stderr
    assert proc.stderr.count("\n") == 1, proc.stderr  # the error, no "interrupted ... resuming" warnings
    line = proc.stderr.strip()
    assert line.startswith("edge-resnet: error: download of http://zoo.invalid/models/resnet50-v1-7.onnx failed")
    assert "host name zoo.invalid not resolved" in line and "offline?" in line and "copy the .onnx" in line
    assert "interrupted" not in line and "tries" not in line
