"""Issue 22's paper cuts, each through the CLI as a user met it: an ONNX file given as a model, the
interpreter's banner on the `--device auto` path, an Edge TPU whose runtime refuses the model under
`--device auto`, where `run` keeps its state without a config, and what the demo says offline."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from edge_resnet.errors import ExitCode

from .conftest import run_cli
from .helpers.broker import free_port

pytestmark = pytest.mark.runtime  # the interpreter's behaviour differs between runtimes: every environment runs these

BANNER = "Created TensorFlow Lite XNNPACK delegate"


def _error_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.startswith("edge-resnet: error:")]
    assert len(lines) == 1, stderr
    return lines[0]


# -- an ONNX file where a TFLite model goes ---------------------------------------------------------


@pytest.mark.parametrize("command", ["classify", "run", "demo"])
def test_an_onnx_model_is_pointed_at_convert(command: str, tmp_path: Path, models_dir: Path, data_dir: Path) -> None:
    onnx = models_dir / "mobilenet_v2_1.0_224.onnx"
    argv = {
        "classify": ["classify", str(data_dir / "images" / "parrot.jpg"), "--model", str(onnx)],
        "run": ["run", "--model", str(onnx), "--source", str(data_dir / "images"), "--max-frames", "1",
                "--state-dir", str(tmp_path / "state")],
        "demo": ["demo", "--model", str(onnx), "--images", str(data_dir / "images"), "--work", str(tmp_path),
                 "--count", "1", "--seconds-each", "0.2", "--no-http", "--max-frames", "1"],
    }[command]
    r = run_cli(*argv, timeout=120)
    assert r.returncode == int(ExitCode.MODEL), r.stderr
    line = _error_line(r.stderr)
    assert "is not a TFLite model" in line and f"edge-resnet convert {onnx}" in line, line


def test_an_onnx_model_without_its_suffix_is_recognised(tmp_path: Path, models_dir: Path, data_dir: Path) -> None:
    """By its first bytes (a protobuf ModelProto: ir_version, then a string field), whatever its name."""
    renamed = tmp_path / "model.bin"
    shutil.copy(models_dir / "resnet8_cifar10.onnx", renamed)
    photo = tmp_path / "not_a_model.tflite"
    shutil.copy(data_dir / "images" / "parrot.jpg", photo)
    parrot = str(data_dir / "images" / "parrot.jpg")
    assert "edge-resnet convert" in _error_line(run_cli("classify", parrot, "--model", str(renamed)).stderr)
    other = _error_line(run_cli("classify", parrot, "--model", str(photo)).stderr)
    assert "pass a .tflite file" in other and "convert" not in other


# -- the interpreter's banner and the Edge TPU under --device auto ------------------------------------


def _bad_reshape_model(src: Path, dest: Path) -> Path:
    """`src` with its final RESHAPE asking for 1000 values out of 1001: the model loads, XNNPACK is
    created (its banner is printed then, once per process), and preparing the graph fails."""
    try:
        from ai_edge_litert.tools import flatbuffer_utils as fu
    except ImportError:
        pytest.skip("no LiteRT flatbuffer tools in this environment (tflite-runtime)")
    m = fu.read_model_from_bytearray(bytearray(src.read_bytes()))
    sg = m.subgraphs[0]
    reshapes = [op for op in sg.operators if fu.opcode_to_name(m, op.opcodeIndex) == "RESHAPE"]
    assert reshapes
    for op in reshapes:
        shape = sg.tensors[op.inputs[1]]
        m.buffers[shape.buffer].data = np.frombuffer(np.array([1, 1000], np.int32).tobytes(), np.uint8)
    dest.write_bytes(bytes(fu.convert_object_to_bytearray(m)))
    return dest


def test_no_interpreter_banner_when_a_model_fails_to_load(
    tmp_path: Path, mobilenet_quant: Path, data_dir: Path
) -> None:
    """What was captured while the model failed is replayed (it may explain the failure), but the XNNPACK
    banner never does: it showed without -v whenever the first load of the process failed, as the Edge
    TPU attempt of `--device auto` can (the fallback then loads quietly: the banner is printed once)."""
    bad = _bad_reshape_model(mobilenet_quant, tmp_path / "bad_reshape.tflite")
    r = run_cli("classify", str(data_dir / "images" / "parrot.jpg"), "--model", str(bad), "--device", "auto")
    assert r.returncode == int(ExitCode.MODEL), r.stderr
    assert BANNER not in r.stderr, r.stderr
    assert "cannot be loaded" in _error_line(r.stderr)
    verbose = run_cli("-v", "classify", str(data_dir / "images" / "parrot.jpg"), "--model", str(bad))
    if "(xnnpack" in run_cli("-v", "classify", str(data_dir / "images" / "parrot.jpg"), "--model",
                             str(mobilenet_quant)).stderr:  # this runtime delegates the model to XNNPACK
        assert BANNER in verbose.stderr, verbose.stderr  # -v still shows everything


_FAKE_EDGETPU = r"""
#include <stddef.h>
#include <stdint.h>
typedef struct D {  /* TfLiteDelegate */
  void* data_; int (*Prepare)(void*, struct D*); void* a; void* b; void* c; int64_t flags; void* o;
} D;
static int prepare(void* context, D* d) { return 0; }  /* takes no node: the custom op stays unresolved */
static D delegate = {0, prepare, 0, 0, 0, 0, 0};
void* tflite_plugin_create_delegate(char** k, char** v, size_t n, void (*report)(const char*)) { return &delegate; }
void tflite_plugin_destroy_delegate(void* d) {}
"""


@pytest.fixture(scope="module")
def refusing_edgetpu(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A libedgetpu.so.1 that loads and makes a delegate, whose interpreter then refuses the model: what
    a real runtime older than the model's compiler, or an accelerator held by another process, does."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler to build the stand-in Edge TPU runtime")
    d = tmp_path_factory.mktemp("edgetpu")
    (d / "fake.c").write_text(_FAKE_EDGETPU)
    subprocess.run([cc, "-shared", "-fPIC", "-o", str(d / "libedgetpu.so.1"), str(d / "fake.c")], check=True)
    return d


def test_auto_falls_back_when_the_edge_tpu_runtime_refuses_the_model(
    refusing_edgetpu: Path, models_dir: Path, labels_1001: Path, data_dir: Path
) -> None:
    env = {"LD_LIBRARY_PATH": str(refusing_edgetpu)}
    parrot = str(data_dir / "images" / "parrot.jpg")
    for model in ("mobilenet_v1_0.75_192_quant_edgetpu.tflite", "mobilenet_v1_0.75_192_quant.tflite"):
        argv = ["classify", parrot, "--model", str(models_dir / model), "--labels", str(labels_1001)]
        r = run_cli(*argv, "--device", "auto", env=env)
        assert r.returncode == 0 and "macaw" in r.stdout, (model, r.stderr)
        warnings = [ln for ln in r.stderr.splitlines() if ln.startswith("WARNING edge_resnet.engine")]
        assert len(warnings) == 1 and "the Edge TPU runtime cannot run" in warnings[0], r.stderr
        assert "CPU model" in warnings[0] and BANNER not in r.stderr, r.stderr
        # asked for the Edge TPU and nothing else: one line, the hardware exit code, naming the CPU twin
        r = run_cli(*argv, "--device", "edgetpu", env=env)
        assert r.returncode == int(ExitCode.HARDWARE), r.stderr
        assert "CPU model" in _error_line(r.stderr)


# -- where `run` keeps its state -------------------------------------------------------------------------


def test_run_without_a_config_keeps_state_in_the_users_folder(
    tmp_path: Path, mobilenet_quant: Path, labels_1001: Path, data_dir: Path
) -> None:
    """A `run` from a shell, even as root, does not create the service's /var/lib/edge-resnet (where a
    root-owned event queue would later lock the service user out): it says where state goes."""
    home = tmp_path / "home"
    base = ["run", "--model", str(mobilenet_quant), "--labels", str(labels_1001), "--source",
            str(data_dir / "images"), "--max-frames", "1"]
    r = run_cli(*base, env={"HOME": str(home), "XDG_STATE_HOME": ""},
                unset=("STATE_DIRECTORY", "INVOCATION_ID"), timeout=120)
    assert r.returncode == 0, r.stderr
    state = home / ".local" / "state" / "edge-resnet"
    said = [ln for ln in r.stderr.splitlines() if "no --config: state" in ln]
    assert len(said) == 1 and str(state) in said[0] and "--state-dir" in said[0], r.stderr
    assert f"state_dir: {state}" in r.stderr and state.is_dir()
    # systemd's StateDirectory= wins (the service never passes --state-dir), and --state-dir wins over both
    unit = tmp_path / "unit-state"
    r = run_cli(*base, env={"HOME": str(home), "STATE_DIRECTORY": str(unit)}, timeout=120)
    assert r.returncode == 0 and f"state_dir: {unit}" in r.stderr and "no --config" in r.stderr, r.stderr
    mine = tmp_path / "mine"
    r = run_cli(*base, "--state-dir", str(mine), env={"STATE_DIRECTORY": str(unit)}, timeout=120)
    assert r.returncode == 0 and f"state_dir: {mine}" in r.stderr and "no --config" not in r.stderr, r.stderr


# -- the demo, offline ----------------------------------------------------------------------------------


def test_demo_names_its_video_and_the_whole_offline_way(
    tmp_path: Path, mobilenet_quant: Path, labels_1001: Path, samples_dir: Path
) -> None:
    from edge_resnet.commands import demo
    from edge_resnet.errors import InputError

    # offline (the host name does not resolve: `.invalid` never does): one line with every flag it takes
    with pytest.raises(InputError) as e:
        demo.download("http://samples.invalid/n01440764_tench.JPEG", tmp_path / "tench.JPEG")
    said = str(e.value)
    assert "host name samples.invalid not resolved" in said and "offline?" in said, said
    for flag in ("--onnx", "--labels", "--images", "--model"):
        assert flag in said, said
    port = free_port()
    r = run_cli("demo", "--model", str(mobilenet_quant), "--labels", str(labels_1001), "--images", str(samples_dir),
                "--work", str(tmp_path / "work"), "--count", "2", "--seconds-each", "0.5",
                "--http", f"127.0.0.1:{port}", "--max-frames", "3", timeout=120)
    assert r.returncode == 0, r.stderr
    video = tmp_path / "work" / "demo.avi"
    assert f"edge-resnet demo: playing {video}; open http://127.0.0.1:{port}/" in r.stdout, r.stdout
    assert video.stat().st_size > 10_000
    assert "0.0 fps" not in r.stderr + r.stdout, "a rate printed before one was measured"


def test_the_tensorflow_interpreter_named_in_the_environment_works_or_says_why(
    mobilenet_quant: Path, data_dir: Path
) -> None:
    """EDGE_RESNET_INTERPRETER=tensorflow died in a traceback (`tensorflow.lite` imported as a module has
    no Interpreter: only `tf.lite` has); now it classifies where TensorFlow is installed (the workstation)
    and is one line where it is not (a device)."""
    r = run_cli("classify", str(data_dir / "images" / "parrot.jpg"), "--model", str(mobilenet_quant),
                "--labels", str(data_dir / "models" / "imagenet_labels_1001.txt"),
                env={"EDGE_RESNET_INTERPRETER": "tensorflow"})
    assert "Traceback" not in r.stderr, r.stderr
    if importlib.util.find_spec("tensorflow") is None:
        assert r.returncode == int(ExitCode.DEPENDENCY), r.stderr
        assert "no TFLite interpreter found" in _error_line(r.stderr)
        return
    assert r.returncode == 0, r.stderr
    assert "macaw" in r.stdout, r.stdout
    info = run_cli("info", str(mobilenet_quant), env={"EDGE_RESNET_INTERPRETER": "tensorflow"})
    assert "runtime:   tensorflow" in info.stdout, info.stdout + info.stderr
