"""The one observation-to-JSON shape: every sink publishes the same fields, built from synthetic
observations (no model, no test data)."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np

from edge_resnet.observation import Frame, Observation, Prediction, Status, observation_json
from edge_resnet.sinks.http import state_document
from edge_resnet.sinks.mqtt import event_body, state_payload
from edge_resnet.sinks.stdout import observation_dict

CORE = {"label", "score", "class_index", "top_k", "frame_seq", "captured_at", "classified_at", "model", "invoke_ms"}


def synthetic(label: str = "tabby", score: float = 0.8123456) -> Observation:
    frame = Frame(np.zeros((4, 4, 3), np.uint8), seq=7, captured_at=time.time(), captured_mono=time.monotonic())
    top = [Prediction(label, 281, score), Prediction("tiger cat", 282, 0.1)]
    return Observation(frame, top, top[0], True, 12.345, "m.tflite", time.time())


def test_every_sink_publishes_the_same_observation_fields() -> None:
    obs = synthetic()
    core = observation_json(obs)
    assert set(core) == CORE
    assert core["score"] == 0.81235 and core["top_k"][0] == {"label": "tabby", "class_index": 281, "score": 0.81235}
    st = Status(True, "ok", labels={"device_id": "cam"})
    for doc in (
        state_payload(obs, st, "cam", 0),
        event_body(obs, "dog", "cam"),
        state_document(obs, st, 5.0),
        observation_dict(obs),
    ):
        assert {k: doc[k] for k in CORE} == core


def test_nothing_classified_yet_keeps_the_schema() -> None:
    empty = observation_json(None)
    assert set(empty) == CORE and empty["top_k"] == [] and empty["label"] is None
    assert {k: state_payload(None, None, "cam", 0)[k] for k in CORE} == empty
    assert {k: state_document(None, None, None)[k] for k in CORE} == empty


def test_observation_module_is_a_leaf() -> None:
    """Sinks and tests build observations without loading the interpreter."""
    code = "import sys, edge_resnet.observation; print(sorted(m for m in sys.modules if m.startswith('edge_resnet')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['edge_resnet', 'edge_resnet.observation']"
