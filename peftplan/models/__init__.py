"""Model resolution and ModelSpec (architecture inventory built on the meta device)."""

from __future__ import annotations

import hashlib
import json
import os
from importlib import metadata
from pathlib import Path

from peftplan.models.resolve import ResolvedModel, resolve_model
from peftplan.models.spec import LinearInfo, ModelSpec, ModuleInfo, MoEInfo, MoELayer, ParamInfo, RouterInfo

__all__ = [
    "LinearInfo",
    "ModelSpec",
    "ModuleInfo",
    "MoEInfo",
    "MoELayer",
    "ParamInfo",
    "RouterInfo",
    "ResolvedModel",
    "cache_dir",
    "get_spec",
    "resolve_model",
    "spec_from_config",
]

# Bump when ModelSpec's fields change, so old cache files are not read (3: the MoE inventory, `moe`).
_SPEC_FORMAT = 3
# Bump when the inventory reads a model differently (2: kv heads off the built attention), so that
# specs cached by an older inventory are rebuilt; shipped specs are checked by rebuilding instead.
_INVENTORY_REVISION = 2


def cache_dir() -> Path:
    """Where peftplan caches derived data (PEFTPLAN_CACHE_DIR, else XDG cache)."""
    root = os.environ.get("PEFTPLAN_CACHE_DIR") or Path(
        os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")
    ) / "peftplan"
    return Path(root)


def _spec_key(config: dict) -> str:
    try:
        tf_version = metadata.version("transformers")
    except metadata.PackageNotFoundError:
        tf_version = "none"
    blob = json.dumps(config, sort_keys=True, default=str) + f"|{tf_version}|{_SPEC_FORMAT}|{_INVENTORY_REVISION}"
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def spec_from_config(config: dict, *, model_id: str = "", trust_remote_code: bool = False, cache: bool = True) -> ModelSpec:
    """Build (or read from the disk cache) the ModelSpec of a config dict."""
    path = cache_dir() / "specs" / f"{_spec_key(config)}.json"
    if cache and path.is_file():
        try:
            spec = ModelSpec.from_json(path.read_text())
            return spec if spec.model_id == model_id else _with_id(spec, model_id)
        except (ValueError, KeyError, TypeError):
            pass  # a stale or torn cache file: rebuild it
    from peftplan.models.build import build_model

    spec = ModelSpec.from_model(build_model(config, trust_remote_code=trust_remote_code), model_id=model_id)
    if cache:
        try:
            from peftplan.atomic import atomic_write_text

            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, spec.to_json())  # a concurrent reader never sees half a file
        except OSError:
            pass  # the cache is an optimisation; a read-only home must not fail the plan
    return spec


def _with_id(spec: ModelSpec, model_id: str) -> ModelSpec:
    from dataclasses import replace

    return replace(spec, model_id=model_id)


def get_spec(model: str, *, trust_remote_code: bool = False) -> ModelSpec:
    """ModelSpec for a catalog id, local path or Hub id."""
    resolved = resolve_model(model)
    if resolved.source == "catalog":
        shipped = shipped_spec(resolved.model_id, resolved.config)
        if shipped is not None:
            return shipped
    return spec_from_config(resolved.config, model_id=resolved.model_id, trust_remote_code=trust_remote_code)


# Catalog models ship their ModelSpec precomputed (scripts/build_model_specs.py writes them), so that
# planning a catalog model never imports torch or transformers. A file is used only when the catalog
# config it was built from is unchanged; tests/planner/test_analytic_specs.py rebuilds and compares.
SHIPPED_SPECS = Path(__file__).with_name("specs")


def config_digest(config: dict) -> str:
    """A hash of a config dict (key order ignored)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:24]


def shipped_spec_path(model_id: str) -> Path:
    return SHIPPED_SPECS / (model_id.replace("/", "__") + ".json.gz")


def shipped_spec(model_id: str, config: dict) -> ModelSpec | None:
    """The precomputed spec of a catalog model, or None if absent or built from another config."""
    import gzip

    path = shipped_spec_path(model_id)
    try:
        raw = json.loads(gzip.decompress(path.read_bytes()))
        if raw["format"] != _SPEC_FORMAT or raw["config_digest"] != config_digest(config):
            return None
        return ModelSpec.from_json(raw["spec"])
    except (OSError, ValueError, KeyError, TypeError, EOFError):
        return None
