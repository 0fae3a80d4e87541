"""Read an existing peft `adapter_config.json` into the matching peftplan method and config."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from peftplan.errors import BadInputError, UnsupportedError
from peftplan.methods import get_method
from peftplan.methods.base import Method, MethodConfig

# peft fields that change what trains; planning them exactly needs support we do not have yet.
_UNSUPPORTED_IF_SET: dict[str, Any] = {
    "layers_to_transform": None,
    "layers_pattern": None,
    "rank_pattern": {},
    "alpha_pattern": {},
    "modules_to_save": None,
    "exclude_modules": None,
    "prefix_projection": False,
    "trainable_token_indices": None,
    "target_parameters": None,
    "use_qalora": False,
}
_warned = False


def _targets(raw: Any) -> list[str]:
    if isinstance(raw, str):
        return ["all-linear"] if raw.lower() == "all-linear" else ["re:" + raw]
    if isinstance(raw, list | tuple) and raw:
        return [str(t) for t in raw]
    raise BadInputError("adapter_config.json has no target_modules")


def read_peft_config(path: Path) -> tuple[Method, MethodConfig]:
    """The method and config that reproduce the adapter `path` describes.

    Raises:
        BadInputError: a missing or malformed file, or an adapter type peftplan does not plan.
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

    set_unsupported = sorted(k for k, default in _UNSUPPORTED_IF_SET.items() if raw.get(k, default) not in (default, None, {}, []))
    if raw.get("bias", "none") != "none":
        set_unsupported.append(f"bias={raw['bias']}")
    if set_unsupported:
        raise UnsupportedError(f"{file}: peftplan cannot plan these settings exactly yet: {', '.join(set_unsupported)}")
    _warn_unknown(file, raw)

    peft_type = str(raw["peft_type"]).upper()
    values: dict[str, Any]
    if peft_type == "LORA":
        name = "dora" if raw.get("use_dora") else "rslora" if raw.get("use_rslora") else "lora"
        values = {"rank": raw.get("r", 8), "alpha": raw.get("lora_alpha", 8), "dropout": raw.get("lora_dropout", 0.0)}
        values["targets"] = _targets(raw.get("target_modules"))
    elif peft_type in ("LOHA", "LOKR"):
        name = peft_type.lower()
        values = {"rank": raw.get("r", 8), "alpha": raw.get("alpha", 8), "dropout": raw.get("module_dropout", 0.0)}
        values["targets"] = _targets(raw.get("target_modules"))
        if name == "lokr":
            values |= {"decompose_both": raw.get("decompose_both", False), "decompose_factor": raw.get("decompose_factor", -1)}
    elif peft_type == "VERA":
        name = "vera"
        values = {"rank": raw.get("r", 256), "dropout": raw.get("vera_dropout", 0.0)}
        values["targets"] = _targets(raw.get("target_modules"))
    elif peft_type == "IA3":
        name = "ia3"
        values = {"targets": _targets(raw.get("target_modules"))}
    elif peft_type in ("PREFIX_TUNING", "PROMPT_TUNING"):
        name = "prefix" if peft_type == "PREFIX_TUNING" else "prompt"
        values = {"virtual_tokens": raw.get("num_virtual_tokens", 20)}
    else:
        raise UnsupportedError(f"{file}: peft_type {raw['peft_type']!r} is not a method peftplan plans")
    method = get_method(name)
    return method, method.make_config(**values)


def _warn_unknown(file: Path, raw: dict[str, Any]) -> None:
    """Warn once about fields this peft version does not know (written by an older or newer peft)."""
    global _warned
    import dataclasses

    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    config_cls = PEFT_TYPE_TO_CONFIG_MAPPING.get(str(raw.get("peft_type", "")).upper())  # type: ignore[call-overload]
    if config_cls is None:
        return
    known = {f.name for f in dataclasses.fields(config_cls)} | {"auto_mapping"}
    others = sorted(set(raw) - known)
    if others and not _warned:
        _warned = True
        listed = ", ".join(others[:8]) + (" ..." if len(others) > 8 else "")
        print(f"peftplan: warning: {file.name}: ignoring fields this peft version does not know: {listed}",
              file=sys.stderr)
