"""The README's Convert commands, pasted in order (issue 22: "the README's paths do not join up").

The commands are read from README.md's Convert section itself, so the README cannot drift from what
works. The one thing a test cannot reach is the ONNX model zoo: a loopback HTTP server stands in for
it, through the mirror variable `fetch` documents (EDGE_RESNET_ZOO_URL), serving a generated
zoo-shaped ResNet (small: 64 px, so the conversion takes seconds) under the name asked for, and a
synset.txt shaped like the zoo's. `my_images/` and `my_labelled_images/` are the user's folders.
"""

from __future__ import annotations

import http.server
import json
import re
import shlex
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from tests.conftest import REPO
from tests.helpers.resnet_onnx import make_resnet


def readme_commands() -> list[list[str]]:
    """Every `edge-resnet ...` command of the Convert section's shell blocks, continuations joined and
    comments dropped, in order (the install block, pip lines, is the lab's: tests/lab)."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Convert\n", 1)[1].split("\n## ", 1)[0]
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", section, flags=re.S):
        joined = block.replace("\\\n", " ")
        words = [shlex.split(line, comments=True) for line in joined.splitlines()]
        words = [w for w in words if w]
        if words and all(w[0] == "edge-resnet" for w in words):
            commands += words
    return commands


ZOO_FILE = re.compile(r"resnet\d+-v[12]-7\.onnx")


class _Zoo(http.server.BaseHTTPRequestHandler):
    model = b""
    synset = b""
    asked: ClassVar[list[str]] = []

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        type(self).asked.append(self.path)
        name = self.path.rsplit("/", 1)[-1]
        body = self.synset if name == "synset.txt" else self.model if ZOO_FILE.fullmatch(name) else None
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def zoo(models_dir: Path) -> Iterator[str]:
    # real ImageNet names (the test data's 1001-line file: background first) as the zoo writes them
    names = (models_dir / "imagenet_labels_1001.txt").read_text().splitlines()[1:1001]
    _Zoo.synset = "".join(f"n{i:08d} {n}\n" for i, n in enumerate(names)).encode()
    _Zoo.model = make_resnet(18, 1, input_size=64, num_classes=1000).SerializeToString()
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Zoo)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/vision/classification/resnet/model"
    srv.shutdown()
    srv.server_close()


def _photos(folder: Path, entries: list[dict[str, object]], samples_dir: Path, labels: bool) -> None:
    folder.mkdir()
    for e in entries:
        (folder / str(e["file"])).symlink_to(samples_dir / str(e["file"]))
    if labels:
        truth = [{"file": e["file"], "class_index": e["class_index"]} for e in entries]
        (folder / "labels.json").write_text(json.dumps(truth))


def test_the_readme_convert_commands_join_up(tmp_path: Path, zoo: str, samples_dir: Path, models_dir: Path) -> None:
    commands = readme_commands()
    assert [c[1] for c in commands] == ["fetch", "convert", "classify"], commands
    entries = json.loads((samples_dir / "labels.json").read_text())
    _photos(tmp_path / "my_images", entries[:16], samples_dir, labels=False)
    _photos(tmp_path / "my_labelled_images", entries[500:520], samples_dir, labels=True)
    env = {"EDGE_RESNET_ZOO_URL": zoo, "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    outputs = []
    for argv in commands:
        r = subprocess.run(
            [sys.executable, "-m", "edge_resnet", *argv[1:]],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
        )
        print(f"$ {shlex.join(argv)}\n{r.stdout}{r.stderr}")
        assert r.returncode == 0, f"{shlex.join(argv)}\n{r.stderr}"
        outputs.append(r)
    fetched, _, classified = outputs
    assert fetched.stdout.strip() == "resnet50-v1-7.onnx"  # where it saved: here, as the next line needs it
    assert [p.rsplit("/", 1)[-1] for p in _Zoo.asked] == ["resnet50-v1-7.onnx", "synset.txt"]
    assert "tench, Tinca tinca" in (tmp_path / "imagenet_labels.txt").read_text().splitlines()[0]
    report = json.loads((tmp_path / "out" / "resnet50-v1-7_int8.report.json").read_text())
    assert report["evaluation"]["labelled"] == 20  # verified on the labelled folder, against its ground truth
    # the bundle carries imagenet_labels.txt's names: every photo gets three of them
    names = set((tmp_path / "imagenet_labels.txt").read_text().splitlines())
    lines = [ln for ln in classified.stdout.splitlines() if ln.strip()]
    assert len(lines) == 16, classified.stdout
    for ln in lines:  # "my_images/x.JPEG: name (0.412)  name (0.101)  name (0.050)  [3.1 ms]"
        shown = [re.sub(r" \(\d\.\d+\)$", "", part) for part in ln.split(": ", 1)[1].split("  ")[:-1]]
        assert len(shown) == 3 and set(shown) <= names, ln
