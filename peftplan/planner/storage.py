"""Adapter files on disk: the exact size of what a save writes (serving and task switching are
priced from it in `planner/serving.py`).

The adapter size is computed as safetensors lays it out: an 8-byte length, a compact JSON header
(one entry per tensor, data offsets in name order, padded with spaces to 8 bytes), then the data.
peft's `save_pretrained` writes fp32 tensors named `base_model.model.<module>.<suffix>` (prompt
learning: `prompt_embeddings`) with `{"format": "pt"}` metadata; peftplan's own methods (adapter,
BitFit, full) write the trainable parameters under their module names.
"""

from __future__ import annotations

import json
import json.encoder
from collections.abc import Sequence
from typing import NamedTuple

from peftplan.methods.base import Method
from peftplan.models.spec import ModelSpec
from peftplan.planner.context import DTYPE_BYTES
from peftplan.replay.terms import MemoryTerms, Shape, numel

PEFT_PREFIX = "base_model.model."
_DTYPE_NAMES = {4: "F32", 2: "BF16", 1: "U8"}
_json_string = json.encoder.encode_basestring_ascii  # what `json.dumps` writes for a str (ensure_ascii)
DISK_GBS = 3.0  # NVMe sequential read (GB/s), for load and swap times


class Entry(NamedTuple):  # a tuple: a plan lists a thousand of them per candidate
    name: str
    shape: Shape
    itemsize: int
    dtype: str = ""

    @property
    def nbytes(self) -> int:
        return numel(self.shape) * self.itemsize


def safetensors_bytes(entries: Sequence[Entry], metadata: dict[str, str] | None) -> int:
    """Exact size of a safetensors file holding `entries` (see the module docstring)."""
    # The header as `json.dumps(header, separators=(",", ":"))` writes it, one entry at a time with json's own
    # string encoder (a plan sizes thousands of tensors per candidate; building the dict costs more).
    offset = 0
    items = [] if metadata is None else [f'"__metadata__":{json.dumps(metadata, separators=(",", ":"))}']
    shapes: dict[Shape, str] = {}  # adapters repeat a few shapes
    for name, shape, itemsize, dtype in sorted(entries, key=lambda e: (-e.itemsize, e.name)):
        end = offset + numel(shape) * itemsize
        if shape not in shapes:
            shapes[shape] = ",".join(map(str, shape))
        items.append(f'{_json_string(name)}:{{"dtype":{_json_string(dtype or _DTYPE_NAMES[itemsize])},'
                     f'"shape":[{shapes[shape]}],"data_offsets":[{offset},{end}]}}')
        offset = end
    text = "{" + ",".join(items) + "}"
    length = len(text.encode())
    length += -(8 + length) % 8  # padded with spaces so the data starts 8-byte aligned
    return 8 + length + offset


def adapter_entries(spec: ModelSpec, terms: MemoryTerms, *, peft: bool, dtype: str = "bf16") -> list[Entry]:
    """The tensors a saved adapter holds, with their file names."""
    entries: list[Entry] = []
    prefix = PEFT_PREFIX if peft else ""
    for module, adapter in terms.linear_adapters.items():
        for suffix, shape in zip(adapter.names, adapter.tensors, strict=True):
            entries.append(Entry(f"{prefix}{module}.{suffix}", shape, 4))
    for name, wrapper in terms.param_adapters.items():
        # peft names it after the module (nested wrappers add `base_layer.`); the key's length barely matters
        for suffix, shape in zip(wrapper.names, wrapper.tensors, strict=True):
            entries.append(Entry(f"{prefix}{name}.{suffix}", shape, 4))
    for name, shape in zip(terms.extra_names, terms.extra_tensors, strict=True):
        entries.append(Entry(name, shape, 4))
    for name, shape in terms.frozen_saved:
        entries.append(Entry(name, shape, 4))
    if terms.trainable_base != "none":
        size = DTYPE_BYTES[dtype]
        for p in spec.params:
            if p.tied_to is not None:
                continue
            if terms.trainable_base == "biases" and p.name.rsplit(".", 1)[-1] != "bias":
                continue
            entries.append(Entry(p.name, p.shape, size))
    return entries


def adapter_file_bytes(spec: ModelSpec, method: Method, terms: MemoryTerms, *, dtype: str = "bf16") -> int:
    """Bytes of the weights file `Method.save` writes (peft's adapter_model.safetensors, or ours)."""
    from peftplan.methods._peft import PeftMethod

    peft = isinstance(method, PeftMethod)
    return safetensors_bytes(adapter_entries(spec, terms, peft=peft, dtype=dtype), {"format": "pt"} if peft else None)
