"""Why does the INT8 TFLite model scale worse with threads under XNNPACK than onnxruntime INT8?

    .venv/bin/python bench/xnnpack_scaling.py MODEL_INT8.tflite --ort-int8 MODEL_QDQ.onnx [--onnx MODEL.onnx]

Measures, interleaved in one process (so machine noise hits every contender alike):
1. where the ops run: ops left outside the XNNPACK delegate, input/output types;
2. whole-model latency and thread scaling: TFLite with num_threads unset / 1 / 2, TFLite with
   XNNPACK's "latest features", TFLite's builtin kernels without XNNPACK (ruy), onnxruntime INT8
   (and FP32 with --onnx), each with its CPU time per wall second (does a second thread do work?);
3. per stage: TFLite prefix models (the flatbuffer cut after each stage, timed, differences taken)
   against onnxruntime's own per-node profile, at 1 and 2 threads. A stage that speeds up less
   than the others is where the scaling goes.

Writes bench/results/xnnpack_scaling.{json,md}. Uses no TensorFlow.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edge_resnet.bench import delegation, machine  # noqa: E402
from edge_resnet.bench.measure import Contender, LatencyStats, measure_interleaved  # noqa: E402
from edge_resnet.engine import Engine  # noqa: E402


def log(msg: str) -> None:
    print(f"[scaling {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- TFLite side


def _interpreter(path: Path, threads: int | None, **kw: Any) -> Callable[[], object]:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path), num_threads=threads, **kw)
    it.allocate_tensors()
    d = it.get_input_details()[0]
    x = np.zeros(d["shape"], d["dtype"])

    def run() -> None:
        it.set_tensor(d["index"], x)
        it.invoke()

    run()
    return run


def stages(ops: list[dict[str, Any]], shapes: dict[int, tuple[int, ...]]) -> list[tuple[str, int]]:
    """(stage name, index one past its last op): stem, then one stage per feature-map size, head."""
    names: list[str] = []
    for o in ops:
        shape = shapes[int(o["outputs"][0])]
        if o["op_name"] == "MAX_POOL_2D" or (len(shape) == 4 and shape[1] > 56):
            names.append("stem")
        elif len(shape) == 4 and shape[1] > 1:
            names.append(f"{shape[1]}x{shape[2]}")
        else:
            names.append("head")
    for i in range(len(ops) - 2, -1, -1):  # a PAD belongs to the op it feeds
        if ops[i]["op_name"] in ("PAD", "PADV2"):
            names[i] = names[i + 1]
    out: list[tuple[str, int]] = []
    for i, n in enumerate(names):
        if out and out[-1][0] == n:
            out[-1] = (n, i + 1)
        else:
            out.append((n, i + 1))
    return out


def cut(src: Path, k: int, dst: Path) -> None:
    """A prefix model: operators[:k], output = the first output of op k-1 (weights stay shared)."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    buf = src.read_bytes()
    m = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(buf, 0))
    sg = m.subgraphs[0]
    sg.operators = sg.operators[:k]
    sg.outputs = [sg.operators[-1].outputs[0]]
    b = flatbuffers.Builder(len(buf) + 1024)
    b.Finish(m.Pack(b), file_identifier=b"TFL3")
    dst.write_bytes(bytes(b.Output()))


def without_input_quantize(src: Path, dst: Path) -> bool:
    """A variant whose leading QUANTIZE (uint8 pixels -> int8) is dropped: the model input becomes
    that op's int8 output (scale 1, zero point -128 for folded pixels). False when there is none."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    buf = src.read_bytes()
    m = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(buf, 0))
    sg = m.subgraphs[0]
    op0 = sg.operators[0]
    code = m.operatorCodes[op0.opcodeIndex]
    if max(code.builtinCode, code.deprecatedBuiltinCode) != schema.BuiltinOperator.QUANTIZE:
        return False
    if sg.inputs[0] != op0.inputs[0]:
        return False
    sg.inputs = [op0.outputs[0]]
    sg.operators = sg.operators[1:]
    b = flatbuffers.Builder(len(buf) + 1024)
    b.Finish(m.Pack(b), file_identifier=b"TFL3")
    dst.write_bytes(bytes(b.Output()))
    return True


# ---------------------------------------------------------------- onnxruntime side


def _ort_session(path: Path, threads: int, profile: bool = False) -> Any:
    import onnxruntime as ort

    o = ort.SessionOptions()
    o.intra_op_num_threads = threads
    o.inter_op_num_threads = 1
    o.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if profile:
        o.enable_profiling = True
        o.profile_file_prefix = str(Path(tempfile.gettempdir()) / f"ort_profile_{os.getpid()}_{threads}")
    return ort.InferenceSession(str(path), sess_options=o, providers=["CPUExecutionProvider"])


def _ort_runner(path: Path, threads: int) -> Callable[[], object]:
    s = _ort_session(path, threads)
    i = s.get_inputs()[0]
    x = {i.name: np.zeros([d if isinstance(d, int) else 1 for d in i.shape], np.float32)}
    s.run(None, x)
    return lambda: s.run(None, x)


def ort_stage_profile(path: Path, threads_list: tuple[int, ...], runs: int) -> dict[int, dict[str, float]]:
    """onnxruntime's per-node profile summed per stage (median over runs), in ms, per thread count.
    Sessions are profiled interleaved, one run each in turn."""
    sessions = {t: _ort_session(path, t, profile=True) for t in threads_list}
    i = sessions[threads_list[0]].get_inputs()[0]
    x = {i.name: np.zeros([d if isinstance(d, int) else 1 for d in i.shape], np.float32)}
    for _ in range(3):
        for s in sessions.values():
            s.run(None, x)
    for _ in range(runs):
        for s in sessions.values():
            s.run(None, x)
    out: dict[int, dict[str, float]] = {}
    for t, sess in sessions.items():
        events = json.loads(Path(sess.end_profiling()).read_text())
        spans = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("name") == "model_run")[4:]
        per_run: list[dict[str, float]] = [{} for _ in spans]
        starts = [a for a, _ in spans]
        for e in events:
            if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
                continue
            j = int(np.searchsorted(starts, e["ts"], side="right")) - 1
            if j < 0 or e["ts"] > spans[j][1]:
                continue
            args = e.get("args", {})
            shapes = args.get("output_type_shape") or [{}]
            shape: list[int] = next(iter(shapes[0].values()), []) if shapes else []
            stage = _ort_stage(str(args.get("op_name", "")), list(shape))
            per_run[j][stage] = per_run[j].get(stage, 0.0) + e["dur"] / 1000.0
        keys = sorted({k for r in per_run for k in r})
        out[t] = {k: float(np.median([r.get(k, 0.0) for r in per_run])) for k in keys}
    return out


def _ort_stage(op: str, shape: list[int]) -> str:
    """Stage of an onnxruntime node from its output shape (NCHW, or NHWC after its layout pass)."""
    if len(shape) != 4:
        return "head"
    h, w = (shape[1], shape[2]) if shape[1] == shape[2] else (shape[2], shape[3])
    if op == "MaxPool" or h > 56:
        return "stem"
    return f"{h}x{w}" if h > 1 else "head"


# ---------------------------------------------------------------- main


def _cpu_wrapped(c: Contender, acc: dict[str, list[float]]) -> None:
    f = c.run
    acc[c.key] = [0.0, 0.0]

    def run() -> object:
        w0, p0 = time.perf_counter(), time.process_time()
        r = f()
        acc[c.key][0] += time.process_time() - p0
        acc[c.key][1] += time.perf_counter() - w0
        return r

    c.run = run


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("tflite", type=Path)
    ap.add_argument("--ort-int8", type=Path, required=True, help="onnxruntime QDQ INT8 model of the same network")
    ap.add_argument("--onnx", type=Path, help="FP32 ONNX of the same network (adds onnxruntime FP32)")
    ap.add_argument("--float-tflite", type=Path, help="FP32 TFLite of the same network (adds XNNPACK FP32)")
    ap.add_argument("--runs", type=int, default=60)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = ap.parse_args()
    result: dict[str, Any] = {"created": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine()}

    eng = Engine.load(args.tflite, threads=2)
    result["graph"] = delegation(eng)
    result["io"] = {"input": str(eng.input.dtype), "output": str(eng.output.dtype)}
    log(f"graph: {result['graph']['ops']} ops, outside XNNPACK: {result['graph']['outside'] or 'none'}")

    # 2. whole model
    from ai_edge_litert.interpreter import OpResolverType

    variants: list[tuple[str, int, Callable[[], object]]] = []
    tmp = Path(tempfile.mkdtemp(prefix="xnn_scaling_"))
    int8_in = tmp / "int8_input.tflite"
    has_quantize = without_input_quantize(args.tflite, int8_in)
    for t in (1, 2):
        variants.append(("tflite-xnnpack", t, _interpreter(args.tflite, t)))
        if has_quantize:
            variants.append(("tflite-xnnpack-int8-input", t, _interpreter(int8_in, t)))
        variants.append(
            (
                "tflite-xnnpack-latest",
                t,
                _interpreter(args.tflite, t, experimental_default_delegate_latest_features=True),
            )
        )
        variants.append(
            (
                "tflite-builtin-ruy",
                t,
                _interpreter(
                    args.tflite, t, experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
                ),
            )
        )
        if args.float_tflite:
            variants.append(("tflite-xnnpack-fp32", t, _interpreter(args.float_tflite, t)))
        variants.append(("ort-int8", t, _ort_runner(args.ort_int8, t)))
        if args.onnx:
            variants.append(("ort-fp32", t, _ort_runner(args.onnx, t)))
    variants.append(("tflite-xnnpack-threads-unset", 0, _interpreter(args.tflite, None)))
    contenders = [Contender(b, t, f, 0.0, 0.0, 0.0) for b, t, f in variants]
    cpu: dict[str, list[float]] = {}
    for c in contenders:
        _cpu_wrapped(c, cpu)
    log(f"whole model: {len(contenders)} contenders x {args.runs} runs, interleaved")
    measure_interleaved(contenders, args.runs, 3, 10, log)
    whole = []
    for c in contenders:
        s = LatencyStats.of(c.samples_ms)
        whole.append(
            {
                "backend": c.backend,
                "threads": c.threads,
                "p50_ms": s.p50_ms,
                "min_ms": s.min_ms,
                "p90_ms": s.p90_ms,
                "cpu_per_wall": cpu[c.key][0] / cpu[c.key][1],
            }
        )
    result["whole"] = whole

    # 3. per stage
    ops = [o for o in eng.ops() if o["op_name"] != "DELEGATE"]
    shapes = {int(t["index"]): tuple(int(v) for v in t["shape"]) for t in eng._it.get_tensor_details()}
    cuts = stages(ops, shapes)
    log("stages: " + ", ".join(f"{n} (ops <{k})" for n, k in cuts))
    prefix: list[Contender] = []
    for name, k in cuts:
        p = tmp / f"cut{k}.tflite"
        if k < len(ops):
            cut(args.tflite, k, p)
        else:
            p = args.tflite
        for t in (1, 2):
            prefix.append(Contender(name, t, _interpreter(p, t), 0.0, 0.0, 0.0))
    log(f"per stage: {len(prefix)} prefix models x {args.runs} runs, interleaved")
    measure_interleaved(prefix, args.runs, 3, 10, log)
    med = {(c.backend, c.threads): float(np.median(c.samples_ms)) for c in prefix}
    tfl_stage: dict[int, dict[str, float]] = {1: {}, 2: {}}
    prev = {1: 0.0, 2: 0.0}
    for name, _ in cuts:
        for t in (1, 2):
            tfl_stage[t][name] = max(0.0, med[(name, t)] - prev[t])
            prev[t] = med[(name, t)]
    # 4. op by op through the stem (until the first residual ADD), 1 thread: prefix differences
    first_add = next((i for i, o in enumerate(ops) if o["op_name"] == "ADD"), min(len(ops), 12))
    stem_ops: list[Contender] = []
    for k in range(1, min(first_add, 16) + 1):
        p = tmp / f"op{k}.tflite"
        cut(args.tflite, k, p)
        label = f"{k - 1:02d} {ops[k - 1]['op_name']} -> {list(shapes[int(ops[k - 1]['outputs'][0])])}"
        stem_ops.append(Contender(label, 1, _interpreter(p, 1), 0.0, 0.0, 0.0))
    log(f"stem op by op: {len(stem_ops)} prefix models x {args.runs} runs, interleaved")
    measure_interleaved(stem_ops, args.runs, 3, 10, log)
    prev_ms, per_op = 0.0, []
    for c in stem_ops:
        m = float(np.median(c.samples_ms))
        per_op.append({"op": c.backend, "ms": m - prev_ms})
        prev_ms = m
    result["stem_ops_1thread_ms"] = per_op
    log("onnxruntime per-node profile")
    ort_stage = ort_stage_profile(args.ort_int8, (1, 2), max(10, args.runs // 3))
    result["stages"] = {"tflite_xnnpack_ms": tfl_stage, "ort_int8_ms": ort_stage}

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "xnnpack_scaling.json").write_text(json.dumps(result, indent=2) + "\n")
    md = markdown(result, [n for n, _ in cuts])
    (args.out / "xnnpack_scaling.md").write_text(md)
    print(md)
    return 0


def markdown(r: dict[str, Any], order: list[str]) -> str:
    m = r["machine"]
    lines = [
        "# XNNPACK INT8 thread scaling vs onnxruntime INT8",
        "",
        f"{r['created']}, {m['cpu']} ({m['cores']} cores, {', '.join(m['cpu_flags'])}), load at start "
        f"{m['load_average_at_start']}. Interleaved in one process; `cpu/wall` = process CPU seconds per wall "
        "second while invoking (≈1 single-threaded, up to 2 when a second thread works or spins).",
        "",
        f"Graph: {r['graph']['ops']} ops, {r['graph']['delegated_ops']} in {r['graph']['partitions']} XNNPACK "
        f"partition(s), outside: {', '.join(o['op'] for o in r['graph']['outside']) or 'none'}; input "
        f"{r['io']['input']}, output {r['io']['output']}.",
        "",
        "| runtime | threads | p50 ms | min ms | cpu/wall |",
        "|---|---:|---:|---:|---:|",
    ]
    for w in r["whole"]:
        t = w["threads"] or "unset"
        lines.append(f"| {w['backend']} | {t} | {w['p50_ms']:.2f} | {w['min_ms']:.2f} | {w['cpu_per_wall']:.2f} |")
    by = {(w["backend"], w["threads"]): w for w in r["whole"]}
    lines.append("")
    for b in sorted({w["backend"] for w in r["whole"] if w["threads"] == 1}):
        if (b, 2) in by:
            lines.append(
                f"- {b}: 1->2 threads speed-up x{by[(b, 1)]['p50_ms'] / by[(b, 2)]['p50_ms']:.2f} (p50), "
                f"x{by[(b, 1)]['min_ms'] / by[(b, 2)]['min_ms']:.2f} (min)"
            )
    ts, os_ = r["stages"]["tflite_xnnpack_ms"], r["stages"]["ort_int8_ms"]
    lines += [
        "",
        "Per stage (ms, median; TFLite from prefix-model differences, onnxruntime from its node profile):",
        "",
        "| stage | XNNPACK @1 | XNNPACK @2 | x | ORT INT8 @1 | ORT INT8 @2 | x |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for n in order:
        a1, a2 = ts[1].get(n, 0.0), ts[2].get(n, 0.0)
        o1, o2 = os_[1].get(n, 0.0), os_[2].get(n, 0.0)
        x1, x2 = (a1 / a2 if a2 else 0.0), (o1 / o2 if o2 else 0.0)
        lines.append(f"| {n} | {a1:.2f} | {a2:.2f} | {x1:.2f} | {o1:.2f} | {o2:.2f} | {x2:.2f} |")
    lines += ["", "Stem op by op, 1 thread (ms, median of prefix-model differences):", ""]
    lines += [f"- {o['op']}: {o['ms']:.2f}" for o in r.get("stem_ops_1thread_ms", [])]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
