"""Depth extrapolation: trace a model cut to d and d+1 blocks, predict the full-depth step exactly.

A step's segments (`trace_step.py`) come in two kinds. Segments outside the block stack (embeddings,
head and loss, optimizer) hold live bytes that are linear in the depth L: every block adds the same
weights, states, saved activations and gradients. Block segments `forward:layer:<i>` and
`backward:layer:<i>` are linear in L and in the block index i, v(L, i) = a + b*L + c*i, because each
earlier (forward) or later (backward) block leaves the same bytes behind. Blocks 0, 1 and L-1 are
fitted as their own families: block 0 may see an input that needs no gradient (frozen embeddings),
some models put a module between blocks 0 and 1 (DeBERTa-v2's convolution), and block L-1 follows
the head's backward rather than another block's.

With d >= 4 the traces at d and d+1 blocks hold each edge block at two depths and middle blocks at
(d, 2), (d+1, 2), (d+1, 3): enough to fix every coefficient. The peak at depth N is the largest of
the extrapolated segments; a linear function of i peaks at an end, so only middle blocks 2 and N-2
are candidates. Each category (weights ... logits) and each module's bytes at a segment's peak
follow the same rule. The tests compare every segment with full-depth traces of real architectures.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from peftplan.planner.trace_step import CATEGORIES, SegmentPeak, StepTrace

__all__ = [
    "MIN_DEPTH",
    "Extrapolated",
    "extrapolate",
    "normalise_modules",
    "predict_segments",
    "segment_vector",
]

MIN_DEPTH = 4  # the shallower trace needs blocks 0 and 1, a middle block and a last block
_LAYER_SEGMENT = re.compile(r"^(forward|backward):layer:(\d+)$")
_EDGE_ROLES = {0: "first", 1: "second"}  # blocks fitted on their own; the middle starts after them
_MIDDLE = len(_EDGE_ROLES)


@dataclass
class Extrapolated:
    """The predicted peak segment at full depth, with its categories and per-module transient bytes."""

    total: int
    segment: str
    categories: dict[str, int]
    modules: dict[str, int]


def normalise_modules(peak: SegmentPeak, layers_path: str) -> dict[str, int]:
    """Per-module bytes with block indices folded: `model.layers.3.mlp` -> `model.layers.*.mlp`."""
    if not layers_path:
        return dict(peak.modules)
    pattern = re.compile(rf"^{re.escape(layers_path)}\.\d+(?=\.|$)")
    folded: dict[str, int] = {}
    for tag, nbytes in peak.modules.items():
        key = pattern.sub(f"{layers_path}.*", tag)
        folded[key] = folded.get(key, 0) + nbytes
    return folded


def segment_vector(peak: SegmentPeak, layers_path: str) -> dict[str, int]:
    """All quantities of a segment peak in one flat dict (categories, then modules prefixed by '@')."""
    values = {c: peak.categories.get(c, 0) for c in CATEGORIES}
    values.update({"@" + k: v for k, v in normalise_modules(peak, layers_path).items()})
    return values


def _combine(points: list[tuple[int, dict[str, int]]]) -> dict[str, int]:
    """sum(weight * vector) over (weight, vector) pairs, key by key (missing keys are 0)."""
    keys: dict[str, None] = {}
    for _, vector in points:
        keys.update(dict.fromkeys(vector))
    return {k: sum(w * v.get(k, 0) for w, v in points) for k in keys}


def _families(trace: StepTrace) -> dict[str, dict[int, SegmentPeak]]:
    """Segments grouped as {family: {block index (or -1 outside blocks): peak}}."""
    families: dict[str, dict[int, SegmentPeak]] = {}
    for name, peak in trace.segments.items():
        match = _LAYER_SEGMENT.match(name)
        if match is None:
            families.setdefault(name, {})[-1] = peak
            continue
        family, index = match.group(1) + ":layer", int(match.group(2))
        role = "last" if index == trace.depth - 1 else _EDGE_ROLES.get(index, "middle")
        families.setdefault(f"{family}:{role}", {})[index] = peak
    return families


def predict_segments(
    shallow: StepTrace, deep: StepTrace, depth: int, *, every_block: bool = False
) -> dict[str, dict[str, int]]:
    """Each segment's peak at `depth` blocks, as a flat vector (categories, and modules as '@name').

    Middle blocks are predicted at 1 and depth-2 only (where a linear function peaks), or at every
    index with `every_block` (for tests).

    Raises:
        ValueError: the traces are not at consecutive depths >= MIN_DEPTH, or `depth` is below them.
    """
    d = shallow.depth
    if d < MIN_DEPTH or deep.depth != d + 1 or depth < d:
        raise ValueError(
            f"need traces at d >= {MIN_DEPTH} and d + 1 blocks and a depth >= d; got {d}, {deep.depth}"
        )
    path = deep.layers_path
    low, high = _families(shallow), _families(deep)
    steps = depth - d
    predicted: dict[str, dict[str, int]] = {}
    for family, b_peaks in high.items():
        a_peaks = low.get(family, {})
        kind = family.split(":")[0]
        if family.endswith(":middle"):
            m = _MIDDLE
            if m not in a_peaks or m not in b_peaks or m + 1 not in b_peaks:
                continue
            va, vb, vc = (segment_vector(p, path) for p in (a_peaks[m], b_peaks[m], b_peaks[m + 1]))
            # v(N, i) = v(d, m) + (N - d) * (v(d+1, m) - v(d, m)) + (i - m) * (v(d+1, m+1) - v(d+1, m))
            base = _combine([(1 - steps, va), (steps, vb)])
            slope = _combine([(1, vc), (-1, vb)])
            indices = range(m, depth - 1) if every_block else sorted({m, depth - 2})
            for index in indices:
                if m <= index <= depth - 2:
                    predicted[f"{kind}:layer:{index}"] = _combine([(1, base), (index - m, slope)])
            continue
        a_peak, b_peak = _only(a_peaks), _only(b_peaks)
        if a_peak is None or b_peak is None:
            continue
        name = family
        role = family.rsplit(":", 1)[-1]
        if role == "last":
            name = f"{kind}:layer:{depth - 1}"
        elif role in _EDGE_ROLES.values():
            name = f"{kind}:layer:{list(_EDGE_ROLES.values()).index(role)}"
        predicted[name] = _combine(
            [(1 - steps, segment_vector(a_peak, path)), (steps, segment_vector(b_peak, path))]
        )
    return predicted


def extrapolate(shallow: StepTrace, deep: StepTrace, depth: int) -> Extrapolated:
    """The full-depth (`depth` blocks) peak predicted from traces at d and d+1 blocks.

    Raises:
        ValueError: the traces are not at consecutive depths >= MIN_DEPTH, or `depth` is below them.
    """
    predicted = predict_segments(shallow, deep, depth)
    if not predicted:
        raise ValueError("the traces share no segment to extrapolate")
    segment = max(predicted, key=lambda name: _total(predicted[name]))
    vector = predicted[segment]
    categories = {c: vector.get(c, 0) for c in CATEGORIES}
    modules = {k[1:]: v for k, v in vector.items() if k.startswith("@") and v}
    return Extrapolated(_total(vector), segment, categories, modules)


def _only(peaks: dict[int, SegmentPeak]) -> SegmentPeak | None:
    return next(iter(peaks.values())) if len(peaks) == 1 else None


def _total(vector: dict[str, int]) -> int:
    return sum(vector.get(c, 0) for c in CATEGORIES)
