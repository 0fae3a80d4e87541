"""`--model` resolution: catalog id, local directory or config.json, or a Hugging Face id (online only)."""

from __future__ import annotations

import json
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

import peftplan.models.catalog as catalog
from peftplan.errors import BadInputError, UnknownNameError

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class ResolvedModel:
    """A model argument turned into a HF config dict, with where it came from."""

    model_id: str
    config: dict[str, Any]
    source: Literal["catalog", "local", "hub"]
    path: Path | None = None  # the directory holding config.json (and maybe weights), when local


def resolve_model(name: str) -> ResolvedModel:
    """Resolve `name`.

    Raises:
        BadInputError: a malformed local config, or a Hub id while offline.
        UnknownNameError: neither a catalog id, a path nor a Hub id.
    """
    entry = catalog.catalog_entry(name)
    if entry is not None:
        return ResolvedModel(entry.id, catalog.catalog_config_dict(entry.id), "catalog")
    path = Path(name).expanduser()
    if path.exists():
        return _resolve_local(path)
    if name.startswith(("/", ".", "~")) or name.endswith(".json"):
        raise BadInputError(f"no such file or directory: {name}")
    if _HUB_ID.match(name):
        return _resolve_hub(name)
    # The catalog's own suggestions: ids, their names and aliases, compared on normalised names.
    suggestions = catalog.suggest_model_ids(name)
    hint = f"Did you mean: {', '.join(suggestions)}? " if suggestions else ""
    hint += "Use a catalog id (`peftplan models`), a local directory or config.json path, or a Hub id."
    error = UnknownNameError("model", name, [], hint=hint)
    error.suggestions = suggestions
    raise error


def read_config_file(path: Path) -> dict[str, Any]:
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInputError(f"cannot read {path}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise BadInputError(f"{path} is not valid JSON (line {exc.lineno}: {exc.msg})") from None
    if not isinstance(config, dict) or "model_type" not in config:
        raise BadInputError(f"{path} is not a transformers config.json (no 'model_type' key)")
    return config


def _resolve_local(path: Path) -> ResolvedModel:
    config_path = path / "config.json" if path.is_dir() else path
    if not config_path.is_file():
        raise BadInputError(f"{path} has no config.json")
    config = read_config_file(config_path)
    model_id = str(config.get("_name_or_path") or config_path.parent.name)
    return ResolvedModel(model_id, config, "local", config_path.parent)


def _reachable(host: str, timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


# A model that is not in the catalog can always be planned from its config.json, with no network.
LOCAL_HINT = "Or give a local directory holding its config.json, or the config.json path."


def _resolve_hub(repo_id: str) -> ResolvedModel:
    suggestions = catalog.suggest_model_ids(repo_id)
    hint = f" Did you mean: {', '.join(suggestions)}?" if suggestions else " See `peftplan models`."
    hint += " " + LOCAL_HINT
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes"}:
        raise BadInputError(f"{repo_id!r} is not in the offline catalog and HF_HUB_OFFLINE is set.{hint}")
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    if not _reachable(host):
        # Fail fast instead of huggingface_hub's minute of retries when there is no network.
        raise BadInputError(f"{repo_id!r} is not in the offline catalog and {host} is unreachable.{hint}")
    try:
        from huggingface_hub import hf_hub_download

        local = hf_hub_download(repo_id, "config.json", etag_timeout=5)
    except Exception as exc:  # network, auth, missing repo: all mean "cannot fetch"
        reason = type(exc).__name__
        raise BadInputError(f"cannot fetch config.json of {repo_id!r} from the Hub ({reason}).{hint}") from None
    return ResolvedModel(repo_id, read_config_file(Path(local)), "hub", Path(local).parent)
