"""What preprocessing a model wants (`PreprocessSpec`, the presets): pure data, no OpenCV, so the
config can check `[model.preprocess]` without loading cv2. The pixels are worked in `preprocess`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal, get_args

from .errors import ConfigError

ChannelOrder = Literal["RGB", "BGR"]
Interpolation = Literal["area_fast", "area", "linear", "cubic", "nearest"]
INTERPOLATIONS: tuple[str, ...] = get_args(Interpolation)


@dataclass(frozen=True)
class PreprocessSpec:
    """How pixels become model values; stored in every converted bundle.

    `mean` and `std` are in 0..255 pixel units and in the model's channel order: the model sees
    `(pixel - mean) / std`. `crop_fraction` is the share of the shorter side kept by the centre
    crop (0.875 = "resize to 256, crop 224"). `interpolation` "area_fast" (the default) is a box
    filter like "area" at a quarter of its cost; a bundle records its choice, so one converted with
    "area" keeps it and a model is always fed as it was calibrated.
    """

    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    channel_order: ChannelOrder = "RGB"
    crop_fraction: float = 0.875
    interpolation: Interpolation = "area_fast"
    preset: str = field(default="custom", compare=False)

    def __post_init__(self) -> None:
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ConfigError("preprocess mean and std need three values (R,G,B order of the model)")
        if any(s <= 0 for s in self.std):
            raise ConfigError(f"preprocess std must be > 0, got {self.std}")
        if not 0.05 <= self.crop_fraction <= 1.0:
            raise ConfigError(f"preprocess crop_fraction must be in 0.05..1.0, got {self.crop_fraction}")
        if self.channel_order not in ("RGB", "BGR"):
            raise ConfigError(f"preprocess channel_order must be RGB or BGR, got {self.channel_order!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise ConfigError(
                f"preprocess interpolation must be one of {sorted(INTERPOLATIONS)}, got {self.interpolation!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PreprocessSpec:
        known = {"mean", "std", "channel_order", "crop_fraction", "interpolation", "preset"}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown preprocess keys {sorted(unknown)}; known: {sorted(known)}")
        kw: dict[str, Any] = dict(d)
        for k in ("mean", "std"):
            if k in kw:
                kw[k] = tuple(float(v) for v in kw[k])
        return cls(**kw)


_IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
_IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)

PRESETS: dict[str, PreprocessSpec] = {
    # torchvision and ONNX model zoo ResNets
    "imagenet": PreprocessSpec(_IMAGENET_MEAN, _IMAGENET_STD, "RGB", preset="imagenet"),
    # TF-slim / Keras "inception" style: [-1, 1]
    "inception": PreprocessSpec((127.5,) * 3, (127.5,) * 3, "RGB", preset="inception"),
    # Caffe / Keras ResNet50: BGR, mean subtraction only
    "caffe": PreprocessSpec((103.939, 116.779, 123.68), (1.0,) * 3, "BGR", preset="caffe"),
    # pixels 0..255 as they are (e.g. MLPerf Tiny ResNet-8, most Coral uint8 models)
    "raw": PreprocessSpec((0.0,) * 3, (1.0,) * 3, "RGB", preset="raw"),
}


def preset(name: str) -> PreprocessSpec:
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown preprocessing preset {name!r}; choose one of {sorted(PRESETS)}") from None


def merge_preprocess(
    base: PreprocessSpec | None, preset_name: str | None, changes: dict[str, Any], tag: str
) -> PreprocessSpec | None:
    """The one override merge (`[model.preprocess]` and the --preset/--mean/... flags): start from
    the preset if one is named, else `base` (the bundle's spec or what the model's quantization
    implies), then set each given key. `tag` names the result's origin ("config", "custom").
    None only when there is nothing to start from and nothing was asked."""
    spec = preset(preset_name) if preset_name else base
    given = {k: v for k, v in changes.items() if v is not None}
    if not given:
        return spec
    if spec is None:
        if "mean" not in given or "std" not in given:
            raise ConfigError("--mean and --std go together (or start from --preset NAME)")
        spec = PreprocessSpec()
    return replace(spec, preset=tag, **given)
