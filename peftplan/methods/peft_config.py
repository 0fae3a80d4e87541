"""Read an existing peft `adapter_config.json` into the matching peftplan method and config.

The plan must be of exactly the adapter the file describes. Every field of the file is one of:
modelled (it becomes a peftplan setting), inert (it changes neither the trainable parameters nor a
step's memory), or left at peft's own default (read from peft's config class). Any other field is
refused in one line that names it, never planned as something else.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from peftplan.errors import BadInputError, UnsupportedError
from peftplan.methods import all_methods, get_method
from peftplan.methods._peft import peft_defaults
from peftplan.methods.base import Method, MethodConfig

# Fields that change neither what trains nor what a training step holds, whatever their value.
_INERT = frozenset(
    {
        "peft_type",
        "auto_mapping",
        "peft_version",
        "base_model_name_or_path",
        "revision",
        "inference_mode",
        "fan_in_fan_out",  # peft sets it from the layer type (GPT-2 Conv1D) whatever the file says
        "runtime_config",  # run-time only (DoRA's ephemeral GPU offload while initialising)
        # initial values only
        "init_weights",
        "init_ia3_weights",
        "projection_prng_key",
        "d_initial",
        "prompt_tuning_init",
        "prompt_tuning_init_text",
        "tokenizer_name_or_path",
        "tokenizer_kwargs",
        # peft fills these from the base model (a saved prompt-learning adapter holds them)
        "token_dim",
        "num_attention_heads",
        "num_layers",
        "encoder_hidden_size",  # used only by prefix_projection, which is refused when set
    }
)

# Task types whose peft model is the causal or masked language model peftplan builds; the others
# add a trainable head (a classifier or score layer) or need an encoder-decoder.
_PLANNED_TASK_TYPES = (None, "CAUSAL_LM", "FEATURE_EXTRACTION")

# init_lora_weights values that set only initial values. "eva" redistributes ranks, "corda" and
# "loftq" need data or quantization at init, "mica" freezes lora_B: each changes what is planned.
_INIT_ONLY = (True, False, "gaussian", "olora", "pissa", "orthogonal")


def _init_only(value: Any) -> bool:
    return value in _INIT_ONLY or (isinstance(value, str) and value.startswith("pissa_niter_"))


# Why a null field cannot be planned: peft fills it per architecture at apply time.
_NULL_REASON = {
    "target_modules": "peft then picks its own per-architecture list; list the modules",
    "feedforward_modules": "peft then picks its own per-architecture list; list the modules",
    "num_virtual_tokens": "peft needs it",
}

_warned: set[str] = set()  # files already warned about (a plan reads its file more than once)


def read_peft_config(path: Path) -> tuple[Method[Any], MethodConfig]:
    """The method and config that reproduce the adapter `path` describes.

    Raises:
        BadInputError: a missing or malformed file, an adapter type peftplan does not plan, or a
            field that changes the count or the memory and that peftplan does not model (named).
    """
    file = path / "adapter_config.json" if path.is_dir() else path
    try:
        raw = json.loads(file.read_text())
    except OSError as exc:
        raise BadInputError(f"cannot read peft config {file}: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise BadInputError(f"{file} is not valid JSON (line {exc.lineno}: {exc.msg})") from None
    except UnicodeDecodeError:
        raise BadInputError(f"{file} is a binary file, not an adapter_config.json (weights are never read from "
                            "pickle files; give the adapter's directory or its adapter_config.json)") from None
    if not isinstance(raw, dict) or "peft_type" not in raw:
        raise BadInputError(f"{file} is not a peft adapter_config.json (no 'peft_type')")
    peft_type = str(raw["peft_type"]).upper()
    reader = next((m for m in all_methods() if m.peft_fields and m.peft_fields.peft_type == peft_type), None)
    if reader is None or reader.peft_fields is None:
        raise UnsupportedError(f"{file}: peft_type {raw['peft_type']!r} is not a method peftplan plans")

    fields = reader.peft_fields
    refused = [f"{name}=null ({_NULL_REASON.get(name, 'peft needs it')})" for name in fields.required if raw.get(name) is None]
    refused += _unmodelled_fields(file, peft_type, raw, fields.modelled)
    if refused:
        raise UnsupportedError(f"{file}: peftplan does not model {'; '.join(refused)}, so it cannot plan this "
                               "adapter exactly")
    name, values = reader.from_peft(raw)
    method = get_method(name)
    return method, method.make_config(**values)


def _unmodelled_fields(file: Path, peft_type: str, raw: dict[str, Any], modelled: frozenset[str]) -> list[str]:
    """`field=value (why)` for each field that is set, not modelled and may change the count or memory."""
    defaults = peft_defaults(peft_type)
    refused: list[str] = []
    unknown: list[str] = []
    for name, value in raw.items():
        if name in modelled or name in _INERT:
            continue
        if name == "task_type":
            if value not in _PLANNED_TASK_TYPES:
                refused.append(f"task_type={value!r} (peft adds a trainable head or needs an encoder-decoder)")
        elif name == "init_lora_weights":
            if not _init_only(value):
                refused.append(f"init_lora_weights={value!r} (more than an initial value)")
        elif name == "num_transformer_submodules":  # peft writes 1 for a decoder or encoder; 2 is encoder-decoder
            if value not in (None, 1):
                refused.append(f"num_transformer_submodules={value!r} (an encoder-decoder)")
        elif name not in defaults:
            # Written by another peft version: harmless when empty, unknowable otherwise.
            if _is_empty(value) or value is False or value == 0:
                unknown.append(name)
            else:
                refused.append(f"{name}={_short(value)} (unknown to this peft version)")
        elif not _same(value, defaults[name]):
            refused.append(f"{name}={_short(value)}")
    _warn_unknown(file, unknown)
    return refused


def _is_empty(value: Any) -> bool:
    return value is None or value in ({}, [], "")


def _same(value: Any, default: Any) -> bool:
    """Equal as JSON, with null and an empty list or dict the same (peft writes either)."""
    if _is_empty(value) and _is_empty(default):
        return True
    return json.loads(json.dumps(value, default=str)) == default  # type: ignore[no-any-return]


def _short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


def _warn_unknown(file: Path, names: list[str]) -> None:
    """Warn once per file about empty fields this peft version does not know (written by an older or newer peft)."""
    key = str(file.resolve())
    if names and key not in _warned:
        _warned.add(key)
        listed = ", ".join(sorted(names)[:8]) + (" ..." if len(names) > 8 else "")
        logging.getLogger(__name__).warning(
            f"peftplan: warning: {file.name}: ignoring empty fields this peft version does not know: {listed}")
