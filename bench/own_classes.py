"""Your own classes from a few examples (issue 20): accuracy against examples per class, INT8 vs float.

    .venv/bin/python bench/own_classes.py [--model BUNDLE_int8.tflite] [--onnx MODEL.onnx] [--repeats 10]

Three tasks built at run time from ../shared/data (tests/helpers/own_tasks.py; nothing is copied):
fixed-camera states with large and with small objects, and five coarse ImageNet categories. Every
image is embedded once by the INT8 bundle (its embedding output, through `Engine` and the
Classifier's own `prepare`, as on the device) and by the float ONNX model (onnxruntime, its pooled
tensor as an extra output, on the very same preprocessing). Then, for k = 1, 2, 5, 10, 20 examples a
class and 10 random splits, `edge_resnet.learn.fit.train` fits a head on the k examples (with their
night variants, as `learn` does: edge_resnet/learn/augment.py) and is scored on all the others: mean
+- standard deviation of accuracy, and which head cross-validation chose.
Also the time of one `train` on 5 classes x 20 examples and of `head.probabilities` on one row.

Without --model, the data's MobileNet v2 ONNX is converted first (`edge-resnet convert ... --preset
inception`, into a temporary folder); a bundle without an embedding output (from an older converter)
leaves the INT8 column out. Prints numbers only (no assertions) and writes the final table to
bench/results/own_classes.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edge_resnet.bench.core import machine  # noqa: E402
from edge_resnet.classify import Classifier  # noqa: E402
from edge_resnet.engine import Engine  # noqa: E402
from edge_resnet.learn.augment import night  # noqa: E402
from edge_resnet.learn.fit import train  # noqa: E402
from edge_resnet.preprocess import PRESETS, PreprocessSpec, TensorInfo, prepare  # noqa: E402
from tests.helpers.own_tasks import Task, coarse_task, splits, states_task  # noqa: E402

F32 = npt.NDArray[np.float32]
KS = (1, 2, 5, 10, 20)


# ---------------------------------------------------------------------------------------------
# embeddings


class OnnxEmbedder:
    """Float embeddings through onnxruntime: the ONNX model with its pooled tensor as an extra output
    (the converter's own `find_embedding` / `with_embedding_output`, so both columns read one tensor)."""

    def __init__(self, path: Path, spec: PreprocessSpec, threads: int) -> None:
        import onnx
        import onnxruntime as ort

        from edge_resnet.convert import onnx_model

        base = onnx.load(str(path))
        emb = onnx_model.find_embedding(base)
        if emb is None:
            raise SystemExit(f"{path}: no embedding ({onnx_model.trace_embedding(base)})")
        self.tensor = emb.name
        model = onnx_model.with_embedding_output(base, emb)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        self.sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        i = self.sess.get_inputs()[0]
        shape = tuple(d if isinstance(d, int) and d > 0 else 1 for d in i.shape)
        self.input = TensorInfo(i.name, shape, np.dtype(np.float32))
        self.spec = spec

    def __call__(self, img: npt.NDArray[np.uint8]) -> F32:
        x = prepare(img, self.spec, self.input, "BGR")
        out = self.sess.run([self.tensor], {self.input.name: x})[0]
        return np.asarray(out, np.float32).reshape(-1)


class BundleEmbedder:
    """INT8 embeddings as the device gets them (`Classifier.embed`: prepare, invoke, dequantize)."""

    def __init__(self, engine: Engine) -> None:
        assert engine.embedding is not None
        self.clf = Classifier(engine)

    def __call__(self, img: npt.NDArray[np.uint8]) -> F32:
        return self.clf.embed(img).reshape(-1)


def float_spec(engine: Engine, default: PreprocessSpec) -> PreprocessSpec:
    """What the float ONNX model needs: a bundle takes camera pixels (its normalisation folded into the
    model, `preset` "...-folded"), and records the folded normalisation in its source; the geometry
    (crop, resize) is the bundle's own, so both models see the same pixels."""
    meta = engine.model.meta
    if meta is None:
        return default
    folded = meta.source.get("normalisation_folded")
    if folded:
        f = PreprocessSpec.from_dict(folded)
        return dataclasses.replace(
            meta.preprocess, mean=f.mean, std=f.std, channel_order=f.channel_order, preset=f.preset
        )
    if meta.preprocess.preset.endswith("-folded"):
        return dataclasses.replace(meta.preprocess, mean=default.mean, std=default.std, preset=default.preset)
    return meta.preprocess


def embed_all(task: Task, fn: Callable[[npt.NDArray[np.uint8]], F32]) -> tuple[F32, F32, float]:
    """Every image's embedding and its night variant's (what `learn` trains on beside each example)."""
    t0 = time.perf_counter()
    x = np.stack([fn(img) for img in task.images]).astype(np.float32)
    ms = (time.perf_counter() - t0) * 1000.0 / len(task)
    xv = np.stack([fn(night(img)) for img in task.images]).astype(np.float32)
    return x, xv, ms


def convert_bundle(onnx_path: Path, data: Path, out: Path) -> Path:
    cmd = [
        str(REPO / ".venv" / "bin" / "edge-resnet"),
        "convert",
        str(onnx_path),
        "--preset",
        "inception",
        "--labels",
        str(data / "models" / "imagenet_labels_1001.txt"),
        "--calib",
        str(data / "imagenet-samples"),
        "--out",
        str(out),
    ]
    print("converting:", " ".join(cmd), flush=True)
    r = subprocess.run(cmd, check=False)
    if r.returncode != 0:
        raise SystemExit(f"conversion failed (exit {r.returncode})")
    found = sorted(out.glob("*_int8.tflite"))
    if not found:
        raise SystemExit(f"no *_int8.tflite in {out}")
    return found[0]


# ---------------------------------------------------------------------------------------------
# evaluation


@dataclass
class Cell:
    """One (task, k, model) cell: per split, accuracy on the rest, mean per-class accuracy, and accuracy
    on the grey low-light and on the colour test frames (states tasks); the heads chosen."""

    accs: list[float] = field(default_factory=list)
    balanced: list[float] = field(default_factory=list)
    grey: list[float] = field(default_factory=list)
    colour: list[float] = field(default_factory=list)
    kinds: Counter[str] = field(default_factory=Counter)

    def mean_std(self, which: str = "accs") -> tuple[float, float]:
        v = getattr(self, which)
        return (100.0 * float(np.mean(v)), 100.0 * float(np.std(v))) if v else (float("nan"), float("nan"))


def evaluate(x: F32, xv: F32, task: Task, k: int, repeats: int, seed: int) -> Cell:
    """`learn`'s head on k examples a class (with their night variants `xv`), scored on the rest."""
    cell = Cell()
    grey = np.array([bool(p.get("grey")) for p in task.params]) if task.params else None
    for r, (tr, te) in enumerate(splits(task.labels, k, repeats, seed)):
        trained = train(x[tr], task.labels[tr], task.classes, seed=r, variants=xv[tr], variant_of=np.arange(tr.size))
        pred = trained.head.predict(x[te])
        truth = task.labels[te]
        right = pred == truth
        cell.accs.append(float(np.mean(right)))
        cell.balanced.append(float(np.mean([np.mean(right[truth == c]) for c in np.unique(truth)])))
        if grey is not None:
            g = grey[te]
            cell.grey.append(float(np.mean(right[g])) if g.any() else float("nan"))
            cell.colour.append(float(np.mean(right[~g])))
        cell.kinds[trained.head.kind] += 1
    return cell


def fmt(cell: Cell | None, which: str = "accs") -> str:
    if cell is None:
        return "-"
    m, s = cell.mean_std(which)
    return f"{m:5.1f} ± {s:4.1f}"


def detail(cell: Cell | None) -> str:
    """States: accuracy on colour / grey low-light test frames; coarse: the mean per-class accuracy."""
    if cell is None:
        return "-"
    if cell.grey:
        return f"{cell.mean_std('colour')[0]:.1f} / {float(np.nanmean(cell.grey)) * 100:.1f}"
    return f"per class {cell.mean_std('balanced')[0]:.1f}"


def kinds(cell: Cell | None) -> str:
    if cell is None:
        return "-"
    return ", ".join(f"{k} {v}" for k, v in sorted(cell.kinds.items()))


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000.0)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, help="the INT8 MobileNet v2 bundle with an embedding output")
    ap.add_argument("--onnx", type=Path, help="the float ONNX model (default: the data's MobileNet v2)")
    ap.add_argument(
        "--data", type=Path, default=Path(os.environ.get("EDGE_RESNET_DATA", REPO.parent / "shared" / "data"))
    )
    ap.add_argument("--n-per-class", type=int, default=60, help="states examples per class (default 60)")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-convert", action="store_true", help="without --model, float only")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "own_classes.md")
    args = ap.parse_args()
    data: Path = args.data.resolve()
    onnx_path: Path = args.onnx or data / "models" / "mobilenet_v2_1.0_224.onnx"

    with tempfile.TemporaryDirectory(prefix="own_classes_") as tmp:
        engine: Engine | None = None
        model_path: Path | None = args.model
        if model_path is None and not args.no_convert:
            model_path = convert_bundle(onnx_path, data, Path(tmp) / "bundle")
        spec = PRESETS["inception"]
        if model_path is not None:
            engine = Engine.load(model_path, threads=args.threads)
            spec = float_spec(engine, spec)
            if engine.embedding is None:
                print(f"{model_path.name} has no embedding output: INT8 column left out", flush=True)
                engine = None
        float_embed = OnnxEmbedder(onnx_path, spec, args.threads)
        int8_embed = BundleEmbedder(engine) if engine is not None else None
        cpu = machine()["cpu"]
        print(f"CPU: {cpu} ({os.cpu_count()} cores); float: {onnx_path.name} (embedding {float_embed.tensor!r})")
        if engine is not None:
            print(f"INT8: {engine.describe()}, embedding {engine.embedding}")
        print(f"preprocessing: float {spec}", flush=True)
        if int8_embed is not None:
            print(f"               INT8 {int8_embed.clf.preprocess}", flush=True)

        t0 = time.perf_counter()
        tasks = [
            states_task(data, "large", args.n_per_class, args.seed),
            states_task(data, "small", args.n_per_class, args.seed),
            coarse_task(data),
        ]
        print(f"tasks built in {time.perf_counter() - t0:.1f} s", flush=True)

        rows: list[tuple[str, int, Cell, Cell | None]] = []
        embeddings: dict[str, dict[str, F32]] = {}
        for task in tasks:
            counts = np.bincount(task.labels)
            sizes = ", ".join(f"{c} {n}" for c, n in zip(task.classes, counts, strict=True))
            print(f"\n== {task.name}: {len(task)} images, {sizes}")
            xf, xfv, msf = embed_all(task, float_embed)
            embeddings[task.name] = {"float": xf, "float-night": xfv}
            line = f"embedded: float {msf:.1f} ms/image"
            if int8_embed is not None:
                xi, xiv, msi = embed_all(task, int8_embed)
                embeddings[task.name].update({"int8": xi, "int8-night": xiv})
                norms = np.linalg.norm(xf, axis=1) * np.linalg.norm(xi, axis=1)
                cos = np.sum(xf * xi, axis=1) / np.maximum(norms, 1e-12)
                line += f", INT8 {msi:.1f} ms/image; cosine INT8 vs float: median {np.median(cos):.4f}"
                line += f", min {cos.min():.4f}"
            print(line, flush=True)
            for k in KS:
                if counts.min() <= k:
                    continue
                cf = evaluate(xf, xfv, task, k, args.repeats, args.seed)
                e = embeddings[task.name]
                ci = evaluate(e["int8"], e["int8-night"], task, k, args.repeats, args.seed) if int8_embed else None
                rows.append((task.name, k, cf, ci))
                print(
                    f"k={k:2d}  float {fmt(cf)} % ({detail(cf)})  INT8 {fmt(ci)} % ({detail(ci)})"
                    f"   heads: float [{kinds(cf)}] INT8 [{kinds(ci)}]",
                    flush=True,
                )

        # timings on the coarse task's float embeddings: 5 classes x 20 examples
        coarse = tasks[2]
        tr, _ = next(splits(coarse.labels, 20, 1, args.seed))
        x20, y20 = embeddings["coarse"]["float"][tr], coarse.labels[tr]
        v20, of20 = embeddings["coarse"]["float-night"][tr], np.arange(tr.size)
        t_train = median_ms(lambda: train(x20, y20, coarse.classes, seed=0, variants=v20, variant_of=of20), 7)
        head = train(x20, y20, coarse.classes, seed=0, variants=v20, variant_of=of20).head
        row = embeddings["coarse"]["float"][:1]
        head.probabilities(row)
        t_head = median_ms(lambda: head.probabilities(row), 2000)
        dim = x20.shape[1]
        print(f"\ntrain() on 5 classes x 20 examples ({dim} values): median {t_train:.0f} ms ({head.kind} chosen)")
        print(f"head.probabilities on one row: median {t_head:.3f} ms")
        print(f"CPU: {cpu}")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    models = f"float: {onnx_path.name}" + (f", INT8: {model_path.name}" if int8_embed and model_path else "")
    lines = [
        "# Your own classes: accuracy on the rest against examples per class",
        "",
        f"`bench/own_classes.py` ({models}) on {cpu}, {args.repeats} random splits a cell:",
        "mean ± standard deviation of the accuracy on every image not among the k examples a class, in %.",
        f"States: {args.n_per_class} realisations a class (seed {args.seed}), about 20 % of them grey low-light;",
        "`colour / grey`: the accuracy on each kind of test frame. Coarse: 293 ImageNet samples in 5 unbalanced",
        "categories (plain accuracy; `per class`: the mean per-class accuracy). Heads: what cross-validation",
        "chose in the splits.",
        "",
        "| task | k | float | INT8 | INT8 - float | float: colour / grey | INT8: colour / grey | heads (float) "
        "| heads (INT8) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for name, k, cf, ci in rows:
        diff = f"{ci.mean_std()[0] - cf.mean_std()[0]:+.1f}" if ci is not None else "-"
        lines.append(
            f"| {name} | {k} | {fmt(cf)} | {fmt(ci)} | {diff} | {detail(cf)} | {detail(ci)} "
            f"| {kinds(cf)} | {kinds(ci)} |"
        )
    lines += [
        "",
        f"`train` on 5 classes x 20 examples ({dim} values): median {t_train:.0f} ms; `head.probabilities` on one",
        f"row: median {t_head:.3f} ms.",
        "",
    ]
    args.out.write_text("\n".join(lines), encoding="utf-8")
    print(f"\nwrote {args.out}")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
