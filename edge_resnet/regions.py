"""Regions: several named parts of each frame, each classified on its own crop with its own model,
labels and smoothing (`[[region]]` in the config).

Regions whose models share a flatbuffer (learned heads on one backbone, the usual case) share one
loaded interpreter: the backbone is in memory once, and each frame costs one invoke per region.
The pipeline thread owns every Region; `load_regions` runs on the caller's thread (start, reload),
so a model that does not load is refused before anything changes.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

from .bundle import read_model
from .classify import Classifier, read_labels
from .config import ModelConfig, PipelineConfig, RegionConfig
from .engine import Engine
from .model import base_preprocess
from .preprocess import Box
from .smoothing import Smoother

log = logging.getLogger(__name__)


@dataclass
class Region:
    name: str
    roi: Box
    classifier: Classifier
    smoother: Smoother
    model_path: str

    @property
    def model_name(self) -> str:
        return self.classifier.bundle.path.name


def load_regions(regions: list[RegionConfig], model: ModelConfig, pipeline: PipelineConfig) -> list[Region]:
    """Each region's Classifier (`[[region]] model`, else `[model] path`), one Engine per distinct flatbuffer."""
    engines: dict[str, Engine] = {}
    out: list[Region] = []
    for r in regions:
        path = r.model or model.path
        mf = read_model(path)
        engine = engines.get(mf.sha256)
        if engine is None:
            engine = engines[mf.sha256] = Engine.load(mf, model.device, model.threads)
            log.info("region %s: model %s", r.name, engine.describe())
        else:
            log.info("region %s: %s shares the loaded backbone of %s", r.name, mf.path.name, engine.model.path.name)
        labels = read_labels(model.labels) if model.labels and r.model is None else None
        spec = None if model.preprocess.empty() else model.preprocess.apply(base_preprocess(engine))
        clf = Classifier(engine, labels, preprocess=spec, bundle=mf)
        out.append(Region(r.name, r.roi, clf, Smoother(pipeline.smoothing, pipeline.window, pipeline.min_score), path))
    return out


def engines_of(regions: list[Region]) -> int:
    """How many interpreters the regions hold (1 when they all share a backbone)."""
    return len({id(r.classifier.engine) for r in regions})


def with_settings(regions: list[Region], pipeline: PipelineConfig) -> list[Region]:
    """The same regions with fresh smoothers for new [pipeline] settings."""
    return [
        dataclasses.replace(r, smoother=Smoother(pipeline.smoothing, pipeline.window, pipeline.min_score))
        for r in regions
    ]
