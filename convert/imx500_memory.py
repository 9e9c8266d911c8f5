"""Will a network fit the IMX500? The estimate and the decision, as pure functions of a few sizes.

The sensor holds weights and working memory (activations) together in 8,388,480 bytes. The real
answer comes from Sony's converter, minutes into a conversion; this estimate comes from the ONNX
graph in well under a second, so a network that cannot fit at any weight width fails before the
long steps, in one line with the figures: parameters at their bit width plus the largest activation
tensor (int8, one byte an element), which the sensor must hold while a layer runs. Against the
converter's own memory report (imxconv-pt 3.18.2, 8-bit weights): ResNet-18 estimate 12.50 MB,
converter 12.17 MB; ResNet-50 26.41 vs 26.28 MB; MobileNet v2 4.69 vs 5.35 MB (its working memory
is 1.67 MB, more than its largest tensor). So it decides only what is clear-cut: "does not fit even
at MIN_WEIGHT_BITS" and "8 bits fit"; the converter's report is the final word and is printed.

MIN_WEIGHT_BITS is 4 although the IMX500 target platform offers 2-bit weights to mixed precision:
2-bit layers are padded to SIMD groups of 128 channels, and ResNet-50 did not fit even with them
(issue 25's spike), so a network over 8 MB at 4 bits is refused rather than tried for half an hour.

Mixed precision (some layers' weights at 4 bits) is asked for only when 8 bits do not fit, with a
weights budget that leaves the working memory and a margin free; when the converter still reports
too little memory, `budget_after_report` derives the next budget from the converter's own figure.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from edge_resnet.errors import ModelError

IMX500_MEMORY_BYTES = 8_388_480  # weights and working memory together, as the converter reports it
MIN_WEIGHT_BITS = 4  # the smallest weight width mixed precision reaches across a whole network in practice
BUDGET_MARGIN = 0.85  # of the memory left after working memory: layer packing and quantizer tables need room
MB = 1_000_000
FITS_INSTEAD = "ResNet-18 (fits through mixed precision) or MobileNet v2 (fits at 8 bits)"


class DoesNotFit(ModelError):
    """The network cannot fit the IMX500's memory at any weight width the tools offer."""


@dataclass(frozen=True)
class NetworkSizes:
    """What the estimate needs from a graph: its weights and its largest activation."""

    name: str
    params: int  # weight and bias elements of Conv / Gemm / MatMul (and BatchNorm left unfolded)
    largest_activation: int  # elements of the largest intermediate tensor at batch 1

    def bytes_at(self, bits: int) -> int:
        """Estimated bytes on the sensor with every weight at `bits` bits."""
        return (self.params * bits + 7) // 8 + self.largest_activation


@dataclass(frozen=True)
class MemoryPlan:
    """How a network will be quantized for the sensor, decided before quantizing."""

    sizes: NetworkSizes
    capacity: int
    needed_8bit: int  # estimated bytes at 8-bit weights
    needed_min: int  # estimated bytes at MIN_WEIGHT_BITS
    mixed_precision: bool
    weights_budget: int | None  # bytes of weights MCT's mixed precision may use; None at 8 bits

    def summary(self) -> dict[str, object]:
        return {
            "capacity_bytes": self.capacity,
            "params": self.sizes.params,
            "largest_activation_bytes": self.sizes.largest_activation,
            "estimate_8bit_bytes": self.needed_8bit,
            f"estimate_{MIN_WEIGHT_BITS}bit_bytes": self.needed_min,
            "mixed_precision": self.mixed_precision,
            "weights_budget_bytes": self.weights_budget,
        }


def _mb(n: int) -> str:
    return f"{n / MB:.2f} MB"


def plan(sizes: NetworkSizes, capacity: int = IMX500_MEMORY_BYTES) -> MemoryPlan:
    """8 bits when they fit, else mixed precision with a weights budget; DoesNotFit when even
    MIN_WEIGHT_BITS weights do not fit."""
    needed_8 = sizes.bytes_at(8)
    needed_min = sizes.bytes_at(MIN_WEIGHT_BITS)
    if needed_min > capacity:
        raise DoesNotFit(
            f"{sizes.name} does not fit the IMX500: it needs ~{_mb(needed_8)} at 8 bits and ~{_mb(needed_min)} "
            f"even with {MIN_WEIGHT_BITS}-bit weights ({sizes.params / 1e6:.2f} M parameters), the sensor has "
            f"{_mb(capacity)} for weights and working memory; convert {FITS_INSTEAD} instead"
        )
    if needed_8 <= capacity:
        return MemoryPlan(sizes, capacity, needed_8, needed_min, False, None)
    budget = int((capacity - sizes.largest_activation) * BUDGET_MARGIN)
    return MemoryPlan(sizes, capacity, needed_8, needed_min, True, budget)


@dataclass(frozen=True)
class ConverterMemory:
    """The converter's own memory figures (its `<name>_MemoryReport.json`, else its log)."""

    fits: bool
    used_bytes: int | None  # weights and working memory on the sensor ("Memory Usage")
    capacity: int | None  # "Total Memory Available On Chip"
    model_bytes: int | None = None  # weights ("Model Memory Physical Size")
    runtime_bytes: int | None = None  # working memory ("Runtime Memory Physical Size")


def _bytes(value: object) -> int | None:
    """"5353056B" (the report in bytes, --report-size-unit B), "5.1M" or a number -> bytes."""
    m = re.fullmatch(r"\s*([0-9][0-9,]*(?:\.[0-9]+)?)\s*([BKMG]?)B?\s*", str(value))
    if not m:
        return None
    scale = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[m.group(2)]
    return round(float(m.group(1).replace(",", "")) * scale)


def parse_converter_memory(report: object, log_text: str = "") -> ConverterMemory:
    """The figures from imxconv-pt's memory report (its JSON, as parsed) or, when it wrote none, whether
    its log says "Not enough memory"."""
    body = report.get("Memory Report") if isinstance(report, dict) else None
    if isinstance(body, dict):
        fits = bool(body.get("Fit In Chip", "not enough memory" not in log_text.lower()))
        return ConverterMemory(fits, _bytes(body.get("Memory Usage")),
                               _bytes(body.get("Total Memory Available On Chip")),
                               _bytes(body.get("Model Memory Physical Size")),
                               _bytes(body.get("Runtime Memory Physical Size")))
    return ConverterMemory("not enough memory" not in log_text.lower(), None, None)


def budget_after_report(budget: int | None, sizes: NetworkSizes, report: ConverterMemory,
                        capacity: int = IMX500_MEMORY_BYTES) -> int:
    """The next weights budget after the converter said the network does not fit: shrink the last budget
    (or the 8-bit weights) by the converter's own overshoot, with the margin again."""
    weights = budget if budget is not None else (report.model_bytes or sizes.params)
    if report.used_bytes is None or report.used_bytes <= capacity:
        return int(weights * BUDGET_MARGIN)
    over = report.used_bytes - (report.capacity or capacity)
    return int((weights - over) * BUDGET_MARGIN)


def fits_line(used: int, capacity: int = IMX500_MEMORY_BYTES) -> str:
    """One line for the report and the CLI: bytes used of the sensor's memory."""
    return f"{used:,} of {capacity:,} bytes ({100.0 * used / capacity:.0f} %)"
