"""Home Assistant's own MQTT discovery code as the judge of our discovery payloads.

Home Assistant needs Python 3.12+ and hundreds of packages, so it lives in its own environment
(`.venv-ha`, made by tests/venvs.sh; or the interpreter named by EDGE_RESNET_HA_PYTHON). `check()`
runs this very file there (`python -I ha_schema.py`, the messages as JSON on stdin), where `_judge()`
does what Home Assistant 2025.1 does with a message on its discovery topic:
- the topic must match its discovery topic pattern (`TOPIC_MATCHER`);
- a device-based config (`<prefix>/device/<id>/config`): abbreviations expanded by Home Assistant's
  `_replace_all_abbreviations`, the whole checked by `DEVICE_DISCOVERY_SCHEMA` (device, origin,
  `cmps`), then each component given the device, origin and shared options exactly as
  `async_discovery_message_received` does, and checked by its platform's `DISCOVERY_SCHEMA`;
- a per-entity config: abbreviations expanded, origin checked (`MQTT_ORIGIN_INFO_SCHEMA`), the
  platform's `DISCOVERY_SCHEMA`;
- a key the platform schema silently drops (they use REMOVE_EXTRA) is reported as an error: a
  misspelt or too-new key would otherwise pass and do nothing;
- given sample payloads for a topic an entity reads, the entity's templates are rendered by Home
  Assistant's template engine and the result handled as the platform does (the event's
  `event_type`, the update's JSON schema, the select's options, the sensor's attributes).
Only the standard library is imported at the top: the same file runs in both interpreters.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HA_VERSION = "2025.1.4"  # tests/venvs.sh installs this one
REPO = Path(__file__).resolve().parents[2]
ENV = "EDGE_RESNET_HA_PYTHON"


def ha_python() -> Path | None:
    """The Home Assistant interpreter: $EDGE_RESNET_HA_PYTHON, else .venv-ha/bin/python, else None."""
    named = os.environ.get(ENV)
    if named:
        return Path(named)
    local = REPO / ".venv-ha" / "bin" / "python"
    return local if local.exists() else None


def require_ha_python() -> Path:
    """The interpreter, or the test stops: failed under CI=true (the check must run there), skipped elsewhere."""
    import pytest

    py = ha_python()
    if py is not None and py.exists():
        return py
    why = (
        f"no Home Assistant interpreter: {ENV}={py} does not exist" if py is not None
        else "no Home Assistant interpreter: run `bash tests/venvs.sh` (makes .venv-ha with "
        f"homeassistant=={HA_VERSION}) or set {ENV}"
    )  # fmt: skip
    if os.environ.get("CI") == "true":
        pytest.fail(why)
    pytest.skip(why)


@dataclass
class Verdict:
    """What Home Assistant made of one message: `errors` empty means it would take it as is."""

    topic: str
    kind: str  # "device", "entity", "migrate", "remove" or "invalid"
    errors: list[str]
    entities: list[dict[str, Any]] = field(default_factory=list)  # platform, key, config (validated)
    renders: list[dict[str, Any]] = field(default_factory=list)  # template checks on sample payloads


@dataclass
class Judgement:
    version: str
    verdicts: list[Verdict]
    abbreviations: dict[str, dict[str, str]]  # Home Assistant's own tables

    def errors(self) -> list[str]:
        out = [f"{v.topic}: {e}" for v in self.verdicts for e in v.errors]
        out += [f"{r['topic']} -> {r['entity']}: {r['error']}" for v in self.verdicts for r in v.renders if r["error"]]
        return out


def check(
    messages: list[tuple[str, str]],
    samples: dict[str, list[str]] | None = None,
    discovery_prefix: str = "homeassistant",
    python: Path | None = None,
) -> Judgement:
    """Judge (topic, payload) discovery messages with Home Assistant's code; `samples` are payloads
    (as sent) on the topics the entities read, for their templates."""
    py = python or require_ha_python()
    request = {"prefix": discovery_prefix, "messages": messages, "samples": samples or {}}
    p = subprocess.run(
        [str(py), "-I", str(Path(__file__).resolve())], input=json.dumps(request), capture_output=True,
        text=True, timeout=300, check=False,
    )  # fmt: skip
    if p.returncode != 0:
        raise RuntimeError(f"Home Assistant check failed (exit {p.returncode}):\n{p.stderr[-3000:]}")
    out = json.loads(p.stdout)
    return Judgement(out["version"], [Verdict(**v) for v in out["verdicts"]], out["abbreviations"])


# ---------------------------------------------------------------- inside Home Assistant's interpreter


def _judge(request: dict[str, Any]) -> dict[str, Any]:
    import asyncio
    import importlib

    import voluptuous as vol  # type: ignore[import-not-found]
    from homeassistant.components.mqtt import abbreviations  # type: ignore[import-not-found]
    from homeassistant.components.mqtt import discovery as ha  # type: ignore[import-not-found]
    from homeassistant.components.mqtt.const import SUPPORTED_COMPONENTS  # type: ignore[import-not-found]
    from homeassistant.components.mqtt.models import MqttValueTemplate  # type: ignore[import-not-found]
    from homeassistant.components.mqtt.schemas import (  # type: ignore[import-not-found]
        DEVICE_DISCOVERY_SCHEMA,
        MQTT_ORIGIN_INFO_SCHEMA,
    )
    from homeassistant.components.mqtt.update import MQTT_JSON_UPDATE_SCHEMA  # type: ignore[import-not-found]
    from homeassistant.const import __version__  # type: ignore[import-not-found]
    from homeassistant.core import HomeAssistant  # type: ignore[import-not-found]
    from homeassistant.util.json import json_loads, json_loads_object  # type: ignore[import-not-found]

    prefix: str = request["prefix"]
    samples: dict[str, list[str]] = request["samples"]

    def platform_check(platform: str, conf: dict[str, Any]) -> tuple[dict[str, Any] | None, list[str]]:
        if platform not in SUPPORTED_COMPONENTS:
            return None, [f"{platform!r} is not an MQTT platform Home Assistant {__version__} supports"]
        schema = importlib.import_module(f"homeassistant.components.mqtt.{platform}").DISCOVERY_SCHEMA
        try:
            valid = schema(dict(conf))
        except vol.Invalid as e:
            return None, [f"{platform}: {e}"]
        dropped = sorted(set(conf) - set(valid))
        return valid, [f"{platform}: key {k!r} is unknown to Home Assistant {__version__} (dropped)" for k in dropped]

    async def renders(hass: Any, platform: str, valid: dict[str, Any]) -> list[dict[str, Any]]:
        """The entity's handling of each sample payload on its state topic, as the platform does it."""
        out: list[dict[str, Any]] = []
        topic = valid.get("state_topic")
        for payload in samples.get(topic, []) if topic else []:
            result: Any = None
            error = ""

            def render(key: str, payload: str = payload) -> Any:
                tpl = valid.get(key)
                if tpl is None:
                    return payload
                tpl.hass = hass
                return MqttValueTemplate(tpl).async_render_with_possible_json_value(payload)

            try:
                if platform == "sensor":
                    state = render("value_template")
                    has_attrs = valid.get("json_attributes_template") is not None
                    attrs = json_loads(render("json_attributes_template")) if has_attrs else {}
                    if not isinstance(attrs, dict):
                        error = f"attributes are not a JSON object: {attrs!r}"
                    elif not state or len(str(state)) > 255:
                        error = f"state {state!r} is empty or longer than 255 characters"
                    result = {"state": state, "attributes": attrs}
                elif platform == "event":
                    data = json_loads_object(render("value_template"))
                    etype = str(data.pop("event_type", ""))
                    if etype not in valid["event_types"]:
                        error = f"event_type {etype!r} is not one of {valid['event_types']}"
                    result = {"event_type": etype, "attributes": data}
                elif platform == "update":
                    result = MQTT_JSON_UPDATE_SCHEMA(json_loads(render("value_template")))
                elif platform == "select":
                    result = render("value_template")
                    if result not in valid["options"]:
                        error = f"{result!r} is not one of the options {valid['options']}"
                else:
                    result = render("value_template")
            except Exception as e:  # a template or schema error is the finding
                error = f"{type(e).__name__}: {e}"
            out.append({"topic": topic, "entity": valid.get("unique_id"), "result": result, "error": error})
        return out

    def listed(platform: str, key: str, valid: dict[str, Any]) -> dict[str, Any]:
        shown = {k: (v.template if hasattr(v, "template") else v) for k, v in valid.items()}
        return {"platform": platform, "key": key, "config": json.loads(json.dumps(shown, default=str))}

    async def one(hass: Any, topic: str, payload: str) -> dict[str, Any]:
        v: dict[str, Any] = {"topic": topic, "kind": "invalid", "errors": [], "entities": [], "renders": []}
        trimmed = topic.replace(f"{prefix}/", "", 1)
        match = ha.TOPIC_MATCHER.match(trimmed) if topic.startswith(f"{prefix}/") else None
        if match is None or match.end() != len(trimmed):
            v["errors"].append(f"not a discovery topic under {prefix}/")
            return v
        component, _node, _object = match.groups()
        if payload == "":
            v["kind"] = "remove"
            return v
        try:
            doc = ha.MQTTDiscoveryPayload(json_loads_object(payload))
        except ValueError as e:
            v["errors"].append(f"not a JSON object: {e}")
            return v
        if ha._async_process_discovery_migration(doc):
            v["kind"] = "migrate"
            return v
        ha._replace_all_abbreviations(doc)
        found: list[tuple[str, str, dict[str, Any]]] = []
        if component == "device":
            v["kind"] = "device"
            try:
                DEVICE_DISCOVERY_SCHEMA(doc)
            except vol.Invalid as e:
                v["errors"].append(f"device: {e}")
                return v
            for key, conf in doc["components"].items():
                conf = dict(conf)
                platform = conf.pop("platform")
                merged = ha.MQTTDiscoveryPayload(conf)
                merged["device"] = doc["device"]
                merged["origin"] = doc.get("origin")
                ha._merge_common_device_options(merged, doc)
                found.append((platform, key, dict(merged)))
        else:
            v["kind"] = "entity"
            if "origin" in doc:
                try:
                    MQTT_ORIGIN_INFO_SCHEMA(doc["origin"])
                except vol.Invalid as e:
                    v["errors"].append(f"origin: {e}")
            found.append((component, _object, dict(doc)))
        for platform, key, conf in found:
            valid, errors = platform_check(platform, conf)
            v["errors"] += [f"{key}: {e}" for e in errors]
            if valid is not None:
                v["entities"].append(listed(platform, key, valid))
                v["renders"] += await renders(hass, platform, valid)
        return v

    async def main() -> list[dict[str, Any]]:
        import tempfile

        with tempfile.TemporaryDirectory() as config_dir:
            hass = HomeAssistant(config_dir)
            return [await one(hass, t, p) for t, p in request["messages"]]

    return {
        "version": __version__,
        "verdicts": asyncio.run(main()),
        "abbreviations": {
            "entity": abbreviations.ABBREVIATIONS,
            "device": abbreviations.DEVICE_ABBREVIATIONS,
            "origin": abbreviations.ORIGIN_ABBREVIATIONS,
        },
    }


if __name__ == "__main__":
    json.dump(_judge(json.load(sys.stdin)), sys.stdout)
