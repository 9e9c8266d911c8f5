"""Issue 22: a config file's mistakes take one run to fix, not one run each. `config check` lists them
all, `run` names the first and the count, a near miss gets "did you mean", every line names its file."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from edge_resnet import config as configmod
from edge_resnet.errors import ConfigError, ExitCode

from .conftest import run_cli

# one unknown key near `url`, one wrong type, one number out of range, one unknown source type
FOUR_MISTAKES = """\
[model]
path = "m.tflite"
threads = "four"

[pipeline]
window = 5000

[source]
type = "opencv2"

[mqtt]
urll = "mqtt://broker.lan"
"""

FOUR_LINES = [
    "[model] threads: expected an integer, got 'four'",
    "[pipeline] window: 5000 is out of range; use 1..1000, e.g. 3",
    "[source] type: 'opencv2' is unknown; did you mean `opencv`?",
    "[mqtt] unknown key 'urll'; did you mean `url`?",
]


@pytest.fixture
def four(tmp_path: Path) -> Path:
    p = tmp_path / "four.toml"
    p.write_text(FOUR_MISTAKES)
    return p


def errors_of(e: ConfigError) -> list[str]:
    errors: list[str] = getattr(e, "errors", [str(e)])
    return errors


def test_config_check_lists_every_mistake_in_one_run(four: Path) -> None:
    r = run_cli("config", "check", str(four), timeout=60)
    assert r.returncode == ExitCode.CONFIG, r.stderr
    assert r.stderr.splitlines() == [f"edge-resnet: error: {four}: {line}" for line in FOUR_LINES]
    print(r.stderr)


def test_run_names_the_first_mistake_and_how_many_more(four: Path) -> None:
    r = run_cli("run", "--config", str(four), timeout=60)
    assert r.returncode == ExitCode.CONFIG, r.stderr
    assert r.stderr.splitlines() == [
        f"edge-resnet: error: {four}: {FOUR_LINES[0]} ... and 3 more errors; "
        f"run `edge-resnet config check {four}` to see all"
    ]


def test_api_callers_get_one_config_error_carrying_all(four: Path) -> None:
    with pytest.raises(ConfigError) as ei:
        configmod.load(four)
    assert str(ei.value) == f"{four}: {FOUR_LINES[0]}"
    assert errors_of(ei.value) == [f"{four}: {line}" for line in FOUR_LINES]


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as ei:
        configmod.config_from_dict(tomllib.loads(text))
    return errors_of(ei.value)


def test_every_failed_check_of_one_table_is_named() -> None:
    """`__post_init__` raises at its first bad value; each one is still named (a table from
    sinkconfig, whose checks know nothing of collecting)."""
    found = problems('[mqtt]\nurl = "http://broker"\nkeepalive = 1\ntopic_prefix = "a/#"\nqueue_max = 0\n')
    assert [p.split(":")[0] for p in found] == [
        "[mqtt] url", "[mqtt] topic_prefix", "[mqtt] keepalive", "[mqtt] queue_max"
    ], found


def test_a_default_put_back_for_a_bad_value_makes_no_error_of_its_own() -> None:
    """height = -480 is one mistake: the width-without-height that its default leaves is not another."""
    assert problems('[source]\nwidth = 640\nheight = -480\nfps = -1\n') == [
        "[source] height: -480 is out of range; use 16..8192 (pixels, e.g. 480)",
        "[source] fps: -1.0 is out of range; use 0.1..1000 (frames per second, e.g. 30; or leave it out)",
    ]


def test_checks_across_tables_come_after_the_tables() -> None:
    found = problems(
        'device_id = "my cam"\n[pipeline]\nwindow = 0\n'
        '[[region]]\nname = "a"\nroi = [0, 0, 5, 5]\n[[region]]\nname = "a"\nroi = [5, 5, 9, 9]\n'
    )
    assert [p.split(";")[0] for p in found] == [
        "[pipeline] window: 0 is out of range",
        "device_id: 'my cam' is not usable in MQTT topics",
        "[[region]] name 'a' is used twice",
    ], found


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ('[mqqt]\nurl = "mqtt://b"\n', "unknown top-level key 'mqqt'; did you mean `mqtt`?"),
        ('[model]\ndevcie = "cpu"\n', "[model] unknown key 'devcie'; did you mean `device`?"),
        ('[model]\ndevice = "edgtpu"\n', "[model] device: 'edgtpu' is not one of 'cpu', 'edgetpu', 'auto'; "
         "did you mean `edgetpu`?"),
        ('[pipeline]\nsmoothing = "hysterisis"\n', "did you mean `hysteresis`?"),
        ('log_level = "warnig"\n', "did you mean `warning`?"),
        ('[model.preprocess]\npreset = "imagnet"\n', "did you mean `imagenet`?"),
    ],
)
def test_a_near_miss_gets_did_you_mean(text: str, line: str) -> None:
    found = problems(text)
    assert len(found) == 1 and found[0].endswith(line), found


def test_a_far_miss_gets_the_short_list_instead() -> None:
    import dataclasses

    from edge_resnet.sinkconfig import HttpConfig

    known = "known keys: " + ", ".join(sorted(f.name for f in dataclasses.fields(HttpConfig)))
    assert problems('[http]\ncolour = "red"\nsize = 3\n') == [
        f"[http] unknown key 'colour'; {known}", f"[http] unknown key 'size'; {known}"
    ]


def test_labels_that_do_not_fit_name_the_labels_file(tmp_path: Path, data_dir: Path, mobilenet_quant: Path) -> None:
    labels = tmp_path / "ten.txt"
    labels.write_text("\n".join(f"class{i}" for i in range(10)))
    image = data_dir / "images" / "owl.jpg"
    r = run_cli("classify", str(image), "--model", str(mobilenet_quant), "--labels", str(labels), timeout=120)
    assert r.returncode == ExitCode.MODEL, r.stderr
    assert r.stderr.strip().splitlines()[-1] == (
        f"edge-resnet: error: labels file {labels} has 10 labels but the model has 1001 outputs "
        f"(model {mobilenet_quant.name}); pass the labels made for this model"
    )
