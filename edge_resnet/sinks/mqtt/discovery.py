"""Home Assistant MQTT discovery for one device, as pure functions of what the device is (its id,
topics, model, regions, models folder and options): the one device-based document
(`<discovery_prefix>/device/<device_id>/config`, Home Assistant 2024.11+) or the same entities as one
document each (older Home Assistant), and the messages that move a device from one form to the other.

The label sensor keeps today's topic, state topic, templates, availability and unique id
(payloads.discovery_payload), so an existing user keeps the entity, its history and its entity id.
Nothing here opens a socket: the MQTT client publishes the `Message`s; docs/home-assistant.md shows
every payload and which Home Assistant version needs what; tests/test_ha_discovery.py checks each
one with Home Assistant's own schemas.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

from ... import __version__

DEVICE_BASED_SINCE = "2024.11"  # first Home Assistant release that reads <prefix>/device/<id>/config
EVENT_TYPE = "label_changed"  # the event entity's one event type (the label is an attribute)
SUMMARY_MAX = 255  # Home Assistant cuts an update's release_summary here
MIGRATE = json.dumps({"migrate_discovery": True})  # unloads an entity and keeps its registry entry

EntityIdKey = Literal["object_id", "default_entity_id"]

# The abbreviations the device document uses: each is Home Assistant's own (mqtt/abbreviations.py,
# checked by tests/test_ha_discovery.py); a key without one is sent in full.
ABBREVIATIONS = {
    "availability_topic": "avty_t",
    "command_topic": "cmd_t",
    "components": "cmps",
    "content_type": "cont_type",
    "device": "dev",
    "device_class": "dev_cla",
    "entity_category": "ent_cat",
    "event_types": "evt_typ",
    "icon": "ic",
    "image_topic": "img_t",
    "json_attributes_template": "json_attr_tpl",
    "json_attributes_topic": "json_attr_t",
    "object_id": "obj_id",
    "options": "ops",
    "origin": "o",
    "payload_available": "pl_avail",
    "payload_install": "pl_inst",
    "payload_not_available": "pl_not_avail",
    "payload_press": "pl_prs",
    "platform": "p",
    "state_topic": "stat_t",
    "unique_id": "uniq_id",
    "value_template": "val_tpl",
}
DEVICE_ABBREVIATIONS = {
    "configuration_url": "cu",
    "identifiers": "ids",
    "manufacturer": "mf",
    "model": "mdl",
    "sw_version": "sw",
}
ORIGIN_ABBREVIATIONS = {"sw_version": "sw", "support_url": "url"}

# the state document's fields the label sensor shows as attributes (those of the first sensor; `get`
# so that a state without health, or an older device's, still renders)
_ATTRIBUTES_TEMPLATE = (
    "{{ {'score': value_json.score, 'class_index': value_json.class_index, "
    "'top_k': value_json.top_k, 'frame_seq': value_json.frame_seq, "
    "'healthy': value_json.get('healthy'), 'reason': value_json.get('reason')} | tojson }}"
)
# the events payload has no `event_type`: the template adds it and keeps the label and score
_EVENT_TEMPLATE = (
    "{{ {'event_type': '" + EVENT_TYPE + "', 'label': value_json.label, 'score': value_json.score, "
    "'previous': value_json.get('previous'), 'class_index': value_json.get('class_index'), "
    "'frame_seq': value_json.get('frame_seq'), 'seq': value_json.get('seq')} | tojson }}"
)


@dataclass(frozen=True)
class Announce:
    """What the discovery documents are made of. `model` is the running model's file name (the
    device's model in Home Assistant), `models` the file names the model select offers, `regions`
    the `[[region]]` names (each gets its own sensor, event and image instead of the whole frame's)."""

    device_id: str
    topic_prefix: str = "edge-resnet"
    discovery_prefix: str = "homeassistant"
    model: str | None = None
    regions: tuple[str, ...] = ()
    models: tuple[str, ...] = ()  # empty: no model select
    snapshot: bool = False  # image entities (pictures leave the device: off unless asked for)
    fleet: bool = True  # the model update entity (issue 23's install job answers its button)
    entity_id_key: EntityIdKey = "object_id"  # "default_entity_id" for Home Assistant 2025.10+
    sw_version: str = __version__
    support_url: str | None = None  # origin's support page (http/https)
    configuration_url: str | None = None  # the device's own page, e.g. http://cam1.local:8080/

    @property
    def base(self) -> str:
        return f"{self.topic_prefix}/{self.device_id}"


@dataclass(frozen=True)
class Entity:
    """One Home Assistant entity: its platform, its id inside the device (the component id of the
    device document and the object id of its own discovery topic) and its config in full keys."""

    platform: str
    key: str
    config: dict[str, Any] = field(hash=False)


@dataclass(frozen=True)
class Message:
    """One MQTT message to publish (QoS 1). An empty payload removes a retained config."""

    topic: str
    payload: str
    retain: bool = True


def topics(a: Announce, region: str | None = None) -> dict[str, str]:
    """The device's topics the entities read and write (a region's own state, events and snapshot)."""
    leaf = f"{a.base}/{region}" if region else a.base
    return {
        "state": f"{leaf}/state",
        "events": f"{leaf}/events",
        "snapshot": f"{leaf}/snapshot",
        "availability": f"{a.base}/availability",
        "command": f"{a.base}/command",
        "model_select": f"{a.base}/model/select",
        "model_select_set": f"{a.base}/model/select/set",
        "model_update": f"{a.base}/model/update",
        "model_update_install": f"{a.base}/model/update/install",
    }


def device_info(a: Announce) -> dict[str, Any]:
    """The device as Home Assistant's device registry knows it (identifiers unchanged since the first
    sensor). Named by its device_id alone: Home Assistant names an entity "<device> <entity>"."""
    dev: dict[str, Any] = {
        "identifiers": [f"edge_resnet_{a.device_id}"],
        "name": a.device_id,
        "manufacturer": "edge-resnet",
        "model": a.model or "image classifier",
        "sw_version": a.sw_version,
    }
    if a.configuration_url:
        dev["configuration_url"] = a.configuration_url
    return dev


def origin_info(a: Announce) -> dict[str, Any]:
    """Who published the config (Home Assistant logs it and links the support page)."""
    o: dict[str, Any] = {"name": "edge-resnet", "sw_version": a.sw_version}
    if a.support_url:
        o["support_url"] = a.support_url
    return o


def availability(a: Announce) -> dict[str, Any]:
    return {
        "availability_topic": topics(a)["availability"],
        "payload_available": "online",
        "payload_not_available": "offline",
    }


def _entity(a: Announce, platform: str, key: str, name: str, conf: dict[str, Any]) -> Entity:
    """The unique id is the entity's identity (never change it); the suggested entity id is what
    Home Assistant makes of "<device name> <entity name>" for the label sensor (`sensor.cam1_label`),
    fixed so that a renamed entity or another language does not change it."""
    unique = f"edge_resnet_{a.device_id}_{key}"
    slug = f"{a.device_id}_{key}"
    ident = {"object_id": slug} if a.entity_id_key == "object_id" else {"default_entity_id": f"{platform}.{slug}"}
    return Entity(platform, key, {"name": name, "unique_id": unique, **ident, **conf})


def _seen(a: Announce, region: str | None) -> list[Entity]:
    """The sensor, event and image of the whole frame or of one region."""
    t = topics(a, region)
    pre = f"{region}_" if region else ""
    sensor = {
        "state_topic": t["state"],
        "value_template": "{{ value_json.label }}",
        "json_attributes_topic": t["state"],
        "json_attributes_template": _ATTRIBUTES_TEMPLATE,
        "icon": "mdi:eye",
    }
    event = {"state_topic": t["events"], "event_types": [EVENT_TYPE], "value_template": _EVENT_TEMPLATE}
    out = [
        _entity(a, "sensor", f"{pre}label", f"{region} label" if region else "Label", sensor),
        _entity(a, "event", f"{pre}label_event", f"{region} label change" if region else "Label change", event),
    ]
    if a.snapshot:
        image = {"image_topic": t["snapshot"], "content_type": "image/jpeg"}
        out.append(_entity(a, "image", f"{pre}snapshot", f"{region} snapshot" if region else "Snapshot", image))
    return out


def entities(a: Announce) -> list[Entity]:
    """Every entity of the device, in the order they are announced. With regions, each region has
    the sensor, event and image and the whole frame has none (the pipeline classifies only regions)."""
    t = topics(a)
    out: list[Entity] = []
    for region in a.regions or (None,):
        out += _seen(a, region)
    if a.models:
        select = {
            "state_topic": t["model_select"],
            "command_topic": t["model_select_set"],
            "options": sorted(set(a.models) | ({a.model} if a.model else set())),
            "entity_category": "config",
            "icon": "mdi:brain",
        }
        out.append(_entity(a, "select", "model_select", "Model", select))
    config = {"command_topic": t["command"], "entity_category": "config"}
    republish = {**config, "payload_press": "discovery", "icon": "mdi:home-import-outline"}
    out.append(_entity(a, "button", "discovery_button", "Republish discovery", republish))
    reload = {**config, "payload_press": "reload", "device_class": "restart"}
    out.append(_entity(a, "button", "reload_button", "Reload", reload))
    if a.fleet:
        update = {
            "state_topic": t["model_update"],
            "command_topic": t["model_update_install"],
            "payload_install": "install",
            "entity_category": "config",
        }
        out.append(_entity(a, "update", "model_update", "Model update", update))
    return out


def entity_topic(a: Announce, e: Entity) -> str:
    """`<discovery_prefix>/<platform>/<device_id>/<key>/config` (the label sensor's topic as before)."""
    return f"{a.discovery_prefix}/{e.platform}/{a.device_id}/{e.key}/config"


def device_topic(a: Announce) -> str:
    return f"{a.discovery_prefix}/device/{a.device_id}/config"


def entity_document(a: Announce, e: Entity) -> dict[str, Any]:
    """One entity's own discovery config (Home Assistant before 2024.11), in full keys."""
    return {**e.config, **availability(a), "device": device_info(a), "origin": origin_info(a)}


def _short(d: dict[str, Any], table: dict[str, str]) -> dict[str, Any]:
    return {table.get(k, k): v for k, v in d.items()}


def device_document(a: Announce) -> dict[str, Any]:
    """The device-based document (Home Assistant 2024.11+): device, origin and availability once,
    each entity a component under `cmps`, keys abbreviated as Home Assistant expands them."""
    cmps = {e.key: _short({"platform": e.platform, **e.config}, ABBREVIATIONS) for e in entities(a)}
    doc = {
        "device": _short(device_info(a), DEVICE_ABBREVIATIONS),
        "origin": _short(origin_info(a), ORIGIN_ABBREVIATIONS),
        **availability(a),
        "components": cmps,
    }
    return _short(doc, ABBREVIATIONS)


def _dumps(doc: dict[str, Any]) -> str:
    return json.dumps(doc, separators=(",", ":"))


def device_messages(a: Announce) -> list[Message]:
    """Device-based discovery: one retained message for the whole device."""
    return [Message(device_topic(a), _dumps(device_document(a)))]


def entity_messages(a: Announce) -> list[Message]:
    """Per-entity discovery: one retained message per entity."""
    return [Message(entity_topic(a, e), _dumps(entity_document(a, e))) for e in entities(a)]


def migrate_to_device(a: Announce, before: Announce | None = None) -> list[Message]:
    """From per-entity to device-based discovery without losing entity ids or history (Home Assistant's
    order): `migrate_discovery` on each old topic (unloads the entity, keeps its registry entry), the
    device document (the same unique ids take the entries back), then the old topics cleared.
    `before` is what was announced per entity (default: the same device)."""
    old = [entity_topic(before or a, e) for e in entities(before or a)]
    return [*(Message(t, MIGRATE) for t in old), *device_messages(a), *(Message(t, "") for t in old)]


def migrate_to_entities(a: Announce) -> list[Message]:
    """Back to per-entity discovery (a Home Assistant older than 2024.11 took over): the same three steps."""
    return [Message(device_topic(a), MIGRATE), *entity_messages(a), Message(device_topic(a), "")]


def components_of(doc: dict[str, Any]) -> dict[str, str]:
    """A device document's components as key -> platform: what the sink records, to remove one later."""
    return {k: str(c["p"]) for k, c in doc["cmps"].items()}


def removing_components(doc: dict[str, Any], gone: dict[str, str]) -> dict[str, Any]:
    """The device document that removes the components `gone` (key -> platform) from Home Assistant: each
    sent with only its platform, which deletes the entity and its registry entry; the others as in `doc`.
    Publish it, then `doc` itself (what stays retained): Home Assistant's documented way, as a
    component merely left out of the document would stay."""
    return {**doc, "cmps": {**doc["cmps"], **{k: {"p": p} for k, p in gone.items()}}}


def removal_messages(a: Announce) -> list[Message]:
    """Remove the device from Home Assistant: empty retained configs on every topic it may have used."""
    return [Message(device_topic(a), ""), *(Message(entity_topic(a, e), "") for e in entities(a))]


def update_state(
    installed: int | None,
    latest: int | None = None,
    *,
    title: str | None = None,
    summary: str | None = None,
    in_progress: bool = False,
    percentage: int | None = None,
) -> dict[str, Any]:
    """The retained JSON on `<prefix>/<device>/model/update` for the update entity. Only the keys
    Home Assistant accepts (it refuses the whole message for an unknown one): versions as strings,
    none sent as null; `latest` defaults to `installed` (nothing to install)."""
    doc: dict[str, Any] = {}
    if installed is not None:
        doc["installed_version"] = str(installed)
    if latest is not None or installed is not None:
        doc["latest_version"] = str(latest if latest is not None else installed)
    if title:
        doc["title"] = title
    if summary:
        doc["release_summary"] = summary[:SUMMARY_MAX]
    doc["in_progress"] = bool(in_progress)
    doc["update_percentage"] = None if percentage is None else max(0, min(100, int(percentage)))
    return doc
