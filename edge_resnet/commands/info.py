"""`edge-resnet info`: what a model expects and carries, without running a camera."""

from __future__ import annotations

import argparse
import json
from collections import Counter
from typing import Any

import numpy as np

from ..engine import Engine, cpu_twin
from ..errors import EdgeTpuUnavailable


def register(sub: Any, name: str, helptext: str) -> None:
    p: argparse.ArgumentParser = sub.add_parser(name, help=helptext, description=helptext)
    p.add_argument("model", help="a .tflite model or edge-resnet bundle")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=run)


def describe(path: str) -> dict[str, Any]:
    from ..bundle import read_model

    mf = read_model(path)
    info: dict[str, Any] = {
        "path": str(mf.path),
        "size_bytes": len(mf.flatbuffer),
        "sha256": mf.sha256,
        "edgetpu": mf.is_edgetpu,
        "metadata": json.loads(mf.meta.to_json()) if mf.meta else None,
    }
    if mf.meta:
        info["metadata"]["labels_preview"] = mf.meta.labels[:5]
    try:
        engine = Engine.load(mf, device="cpu", warm_up=False)
    except EdgeTpuUnavailable:
        twin = cpu_twin(mf.path)
        info["note"] = (
            "compiled for the Edge TPU; tensors shown from the CPU twin"
            if twin
            else ("compiled for the Edge TPU; its tensors need the Edge TPU runtime to inspect")
        )
        if twin is None:
            return info
        engine = Engine.load(twin, device="cpu", warm_up=False)
    for key, t in (("input", engine.input), ("output", engine.output)):
        info[key] = {
            "name": t.name,
            "shape": list(t.shape),
            "dtype": str(t.dtype),
            "layout": t.layout if key == "input" else None,
            "quantization": {"scale": t.scale, "zero_point": t.zero_point} if t.quantized else None,
        }
    e = engine.embedding
    info["embedding"] = None if e is None else {
        "name": e.name,
        "shape": list(e.shape),
        "size": int(np.prod(e.shape)),
        "dtype": str(e.dtype),
        "quantization": {"scale": e.scale, "zero_point": e.zero_point} if e.quantized else None,
    }
    ops = Counter(op["op_name"] for op in engine.ops() if op.get("op_name") != "DELEGATE")
    info["ops"] = dict(sorted(ops.items()))
    info["delegate"] = engine.delegate
    info["runtime"] = f"{engine.runtime.name} {engine.runtime.version}"
    return info


def source_summary(src: dict[str, Any]) -> list[str]:
    """Where the bundle came from, one short line per fact: the full record (every calibration file
    name, several KB) is for --json."""
    if not src:
        return []
    out = []
    if src.get("onnx"):
        digest = str(src.get("onnx_sha256", ""))[:16]
        out.append(f"source:    {src['onnx']} (opset {src.get('onnx_opset', '?')}, {src.get('onnx_layout', '?')}"
                   f"{f', sha256 {digest}...' if digest else ''})")
    conv = src.get("converters")
    if isinstance(conv, dict) and conv:
        out.append(f"converted: {', '.join(f'{k} {v}' for k, v in sorted(conv.items()))}")
    cal = src.get("calibration")
    if isinstance(cal, dict):
        skipped = cal.get("unreadable_skipped") or 0
        out.append(
            f"calibration: {cal.get('images', '?')} images from {cal.get('classes', '?')} classes in "
            f"{cal.get('folder', '?')} (split {cal.get('split', '?')}, seed {cal.get('seed', '?')}"
            f"{f', {skipped} unreadable skipped' if skipped else ''})"
        )
    q = src.get("quantization")
    if isinstance(q, dict) and q.get("method"):
        out.append(f"quantized: {q['method']}")
    stem = src.get("stem_rewrite")
    if isinstance(stem, dict):
        out.append(f"stem:      {'space-to-depth rewrite' if stem.get('applied') else 'unchanged'}")
    return out


def embedding_line(e: dict[str, Any] | None, bundle: bool) -> str:
    """The pooled-feature output a head can be trained on (`edge-resnet learn`), or that there is none."""
    if e is None:
        what = "a bundle from an older converter" if bundle else "a foreign model"
        return f"none ({what}); `edge-resnet learn` needs one: convert the ONNX model with this edge-resnet"
    q = e["quantization"]
    qs = f" scale={q['scale']:.6g} zero_point={q['zero_point']}" if q else ""
    return f"{e['size']} values, output {e['name']} {e['shape']} {e['dtype']}{qs}"


def run(args: argparse.Namespace) -> int:
    info = describe(args.model)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"model:     {info['path']} ({info['size_bytes'] / 1e6:.2f} MB, sha256 {info['sha256'][:16]}...)")
    print(f"edge tpu:  {'yes (needs the Edge TPU runtime)' if info['edgetpu'] else 'no'}")
    if info.get("note"):
        print(f"note:      {info['note']}")
    for key in ("input", "output"):
        if key in info:
            t = info[key]
            q = t["quantization"]
            qs = f" scale={q['scale']:.6g} zero_point={q['zero_point']}" if q else ""
            lay = f" {t['layout']}" if t["layout"] else ""
            print(f"{key + ':':<10} {t['name']} {t['shape']} {t['dtype']}{lay}{qs}")
    if "embedding" in info:
        print(f"embedding: {embedding_line(info['embedding'], info['metadata'] is not None)}")
    if "ops" in info:
        print(f"ops:       {sum(info['ops'].values())} ({', '.join(f'{k} x{v}' for k, v in info['ops'].items())})")
        print(f"runtime:   {info['runtime']}, delegate {info['delegate']}")
    meta = info["metadata"]
    if meta:
        pp = meta["preprocess"]
        print(
            f"bundle:    v{meta['version']}, {meta['num_labels']} labels, label offset {meta['label_offset']}, "
            f"output {meta['output_kind']}"
        )
        print(
            f"preprocess: {pp['preset']} mean={pp['mean']} std={pp['std']} {pp['channel_order']} "
            f"crop={pp['crop_fraction']} {pp['interpolation']}"
        )
        names = [str(n).split(",")[0].strip() for n in meta.get("labels_preview", [])[meta["label_offset"]:]]
        if names:  # first synonym of the first classes: "tench, Tinca tinca" is "tench"
            print(f"labels:    {'; '.join(names)}; ...")
        head = meta.get("head")
        if head:  # a model from `edge-resnet learn`
            cv = head.get("cross_validation") or {}
            acc = f"held-out accuracy {cv['accuracy'] * 100:.1f}% ({cv.get('method')})" if "accuracy" in cv else (
                "accuracy not measured")
            examples = sum((head.get("examples") or {}).values())
            print(f"learned:   {len(head['classes'])} classes ({', '.join(head['classes'])}) from {examples} examples, "
                  f"head {head['kind']}, {acc}, unknown below {head.get('unknown_below', 0):.2f}, "
                  f"trained {head.get('trained_at', '?')} on backbone {str(head.get('backbone_sha256'))[:12]}")
        for line in source_summary(meta.get("source") or {}):
            print(line)
        print("           (full metadata: edge-resnet info --json)")
    else:
        print("bundle:    none (foreign model: pass --labels and preprocessing options)")
    return 0
