"""Pure preprocessing: geometry, normalisation and dtype paths, no model needed."""

from __future__ import annotations

from pathlib import Path
from typing import cast

import cv2
import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_resnet.errors import ConfigError
from edge_resnet.preprocess import PRESETS, PreprocessSpec, TensorInfo, affine, crop_box, crop_resize, prepare, to_input

pytestmark = pytest.mark.runtime  # every device environment runs these (tests/run.sh)


def test_crop_box_matches_resize_256_crop_224() -> None:
    # 500x375 landscape: shorter side 375 -> crop 0.875*375 = 328 px square, centred
    x0, y0, x1, y1 = crop_box(375, 500, 224, 224, 0.875)
    assert (x1 - x0, y1 - y0) == (328, 328)
    assert x0 == round((500 - 328.125) / 2) and y0 == round((375 - 328.125) / 2)


@given(st.integers(16, 2000), st.integers(16, 2000), st.integers(8, 300), st.integers(8, 300), st.floats(0.3, 1.0))
@settings(max_examples=200, deadline=None)
def test_crop_box_stays_inside_frame(fh: int, fw: int, oh: int, ow: int, cf: float) -> None:
    x0, y0, x1, y1 = crop_box(fh, fw, oh, ow, cf)
    assert 0 <= x0 < x1 <= fw and 0 <= y0 < y1 <= fh


def _t(dtype: type, scale: float = 0.0, zp: int = 0, shape: tuple[int, ...] = (1, 4, 4, 3)) -> TensorInfo:
    return TensorInfo("in", shape, np.dtype(dtype), scale, zp)


def test_float_input_is_normalised_in_model_channel_order() -> None:
    img = np.zeros((4, 4, 3), np.uint8)
    img[..., 0] = 10  # B in a BGR frame
    img[..., 2] = 200  # R
    spec = PRESETS["imagenet"]
    out = to_input(img, "BGR", spec, _t(np.float32))
    assert out.shape == (1, 4, 4, 3) and out.dtype == np.float32
    r = (200 - 0.485 * 255) / (0.229 * 255)
    b = (10 - 0.406 * 255) / (0.225 * 255)
    np.testing.assert_allclose(out[0, 0, 0], [r, (0 - 0.456 * 255) / (0.224 * 255), b], rtol=1e-5)


def test_caffe_preset_keeps_bgr() -> None:
    img = np.full((4, 4, 3), (1, 2, 3), np.uint8)
    out = to_input(img, "BGR", PRESETS["caffe"], _t(np.float32))
    np.testing.assert_allclose(out[0, 0, 0], [1 - 103.939, 2 - 116.779, 3 - 123.68], rtol=1e-5)


def test_nchw_layout() -> None:
    img = np.random.default_rng(0).integers(0, 255, (4, 4, 3), dtype=np.uint8)
    t = _t(np.float32, shape=(1, 3, 4, 4))
    assert t.layout == "NCHW" and t.hw == (4, 4)
    out = to_input(img, "RGB", PRESETS["raw"], t)
    assert out.shape == (1, 3, 4, 4)
    np.testing.assert_array_equal(out[0, 1], img[..., 1].astype(np.float32))


@given(st.sampled_from(["uint8", "int8"]), st.floats(0.004, 0.05), st.integers(-20, 20))
@settings(max_examples=60, deadline=None)
def test_quantized_input_matches_reference_formula(dtype: str, scale: float, zp_shift: int) -> None:
    zp = (128 if dtype == "uint8" else 0) + zp_shift
    img = np.random.default_rng(1).integers(0, 256, (4, 4, 3), dtype=np.uint8)
    spec = PRESETS["inception"]
    out = to_input(img, "RGB", spec, _t(np.dtype(dtype).type, scale, zp))
    real = (img.astype(np.float64) - 127.5) / 127.5
    info = np.iinfo(np.dtype(dtype))
    ref = np.clip(np.rint(real / scale + zp), info.min, info.max)
    assert np.abs(out[0].astype(np.int32) - ref).max() <= 1


def test_folded_normalisation_passes_pixels_through() -> None:
    img = np.arange(48, dtype=np.uint8).reshape(4, 4, 3)
    raw = PRESETS["raw"]
    u8 = to_input(img, "RGB", raw, _t(np.uint8, 1.0, 0))
    np.testing.assert_array_equal(u8[0], img)
    i8 = to_input(img, "RGB", raw, _t(np.int8, 1.0, -128))
    np.testing.assert_array_equal(i8[0].astype(np.int32), img.astype(np.int32) - 128)
    a, b = affine(raw, _t(np.int8, 1.0, -128))
    np.testing.assert_allclose(a, 1.0)
    np.testing.assert_allclose(b, -128.0)


def test_prepare_end_to_end_shape_and_centre() -> None:
    frame = np.zeros((720, 1280, 3), np.uint8)
    frame[:, 600:680] = 255  # a white bar in the middle survives the centre crop
    out = prepare(frame, PRESETS["raw"], _t(np.uint8, 1.0, 0, (1, 224, 224, 3)))
    assert out.shape == (1, 224, 224, 3)
    assert out[0, 112, 112].min() == 255 and out[0, 112, 0].max() == 0


def test_roi_restricts_the_frame() -> None:
    frame = np.zeros((100, 200, 3), np.uint8)
    frame[:, 100:] = 200
    out = crop_resize(frame, (8, 8), 1.0, "area", roi=(100, 0, 200, 100))
    assert out.min() == 200
    with pytest.raises(ConfigError):
        crop_resize(frame, (8, 8), 1.0, "area", roi=(300, 0, 400, 10))


def test_spec_validation_and_round_trip() -> None:
    with pytest.raises(ConfigError):
        PreprocessSpec(std=(0.0, 1.0, 1.0))
    with pytest.raises(ConfigError):
        PreprocessSpec(crop_fraction=1.5)
    with pytest.raises(ConfigError):
        PreprocessSpec.from_dict({"mean": [0, 0, 0], "colour": "RGB"})
    spec = PRESETS["imagenet"]
    assert PreprocessSpec.from_dict(spec.to_dict()) == spec


def test_area_fast_is_a_box_filter_close_to_area_on_a_720p_photo(data_dir: Path) -> None:
    """The default resize takes its two-step path on a 720p frame and stays within a fraction of a
    pixel level of INTER_AREA; a spec (an older bundle) that says "area" still gets exactly INTER_AREA."""
    frame = cast("npt.NDArray[np.uint8] | None", cv2.imread(str(data_dir / "images" / "cat_720p.jpg")))  # 8-bit BGR
    assert frame is not None and frame.shape[:2] == (720, 1280)
    x0, y0, x1, y1 = crop_box(720, 1280, 224, 224, 0.875)
    exact = cast("npt.NDArray[np.uint8]", cv2.resize(frame[y0:y1, x0:x1], (224, 224), interpolation=cv2.INTER_AREA))
    assert PreprocessSpec().interpolation == "area_fast" == PRESETS["imagenet"].interpolation
    fast = crop_resize(frame, (224, 224), 0.875, "area_fast")
    diff = np.abs(fast.astype(np.int16) - exact.astype(np.int16))
    assert 0.0 < diff.mean() < 1.0, diff.mean()  # not INTER_AREA itself, but the same filter
    assert np.percentile(diff, 99) <= 4
    assert np.array_equal(crop_resize(frame, (224, 224), 0.875, "area"), exact)
    old = PreprocessSpec.from_dict({**PRESETS["imagenet"].to_dict(), "interpolation": "area"})
    t = _t(np.uint8, 1.0, 0, (1, 224, 224, 3))
    assert np.array_equal(prepare(frame, old, t)[0], to_input(exact, "BGR", old, t)[0])


def test_area_fast_is_area_at_integer_factors_and_two_step_otherwise() -> None:
    """A 224 crop of a 256-px ImageNet sample (factor 1) or a 2x/3x region is exactly "area";
    a fractional factor, shrinking by less than 2 included (640x480 frames), takes the two-step path."""
    rng = np.random.default_rng(1)
    for side in (224, 448, 672):
        frame = rng.integers(0, 256, (side, side + 40, 3), dtype=np.uint8)
        a = crop_resize(frame, (224, 224), 1.0, "area_fast")
        assert np.array_equal(a, crop_resize(frame, (224, 224), 1.0, "area")), side
    frame = cast(
        "npt.NDArray[np.uint8]",  # cv2.resize keeps uint8
        cv2.resize(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8), (640, 480), interpolation=cv2.INTER_CUBIC),
    )
    fast, exact = crop_resize(frame, (224, 224), 0.875, "area_fast"), crop_resize(frame, (224, 224), 0.875, "area")
    diff = np.abs(fast.astype(np.int16) - exact.astype(np.int16))
    assert 0.0 < diff.mean() < 1.0, diff.mean()
