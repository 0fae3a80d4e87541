"""The offline model catalog: peftplan's own table of architecture figures (`catalog.toml`).

Each entry holds the common figures (hidden size, layers, heads, ...) under peftplan's names, and the
remaining architecture keys under their Hugging Face names in `extra`. `catalog_config_dict` turns an
entry back into a config.json-shaped dict that transformers accepts. Pure Python: no torch, no transformers.
"""

from __future__ import annotations

import copy
import difflib
import tomllib
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

from peftplan.errors import UnknownNameError

__all__ = [
    "FIGURES",
    "CatalogEntry",
    "catalog_aliases",
    "catalog_config_dict",
    "catalog_entry",
    "catalog_ids",
    "figure_keys",
    "suggest_model_ids",
]

# The common figures, in the order they are written to a config dict.
FIGURES = ("hidden", "layers", "heads", "kv_heads", "intermediate", "vocab", "tied", "max_positions")
_OPTIONAL_FIGURES = frozenset({"kv_heads", "intermediate"})  # None: the HF default applies (or no such key)
_TABLE_KEYS = frozenset({"model_type", "architecture", "license", "nulls", "extra", *FIGURES})

_DEFAULT_KEYS: dict[str, str | None] = {
    "hidden": "hidden_size",
    "layers": "num_hidden_layers",
    "heads": "num_attention_heads",
    "kv_heads": "num_key_value_heads",
    "intermediate": "intermediate_size",
    "vocab": "vocab_size",
    "tied": "tie_word_embeddings",
    "max_positions": "max_position_embeddings",
}
_NO_KV_HEADS: dict[str, str | None] = {"kv_heads": None}
# Where a model type names a figure differently, or has no key for it (None).
_KEYS_BY_TYPE: dict[str, dict[str, str | None]] = {
    "gpt2": {
        "hidden": "n_embd",
        "layers": "n_layer",
        "heads": "n_head",
        "kv_heads": None,
        "intermediate": "n_inner",  # None means 4 * hidden
        "max_positions": "n_positions",
    },
    "bert": _NO_KV_HEADS,
    "roberta": _NO_KV_HEADS,
    "deberta": _NO_KV_HEADS,
    "deberta-v2": _NO_KV_HEADS,
    "gpt_neox": _NO_KV_HEADS,
    # num_kv_heads only shapes the weights with new_decoder_architecture; multi_query means one kv head.
    "falcon": {"kv_heads": "num_kv_heads", "intermediate": "ffn_hidden_size"},  # None means 4 * hidden
}


def figure_keys(model_type: str) -> dict[str, str | None]:
    """The HF config key of each common figure for `model_type` (None: that type has no such key)."""
    return {**_DEFAULT_KEYS, **_KEYS_BY_TYPE.get(model_type, {})}


@dataclass(frozen=True)
class CatalogEntry:
    """One catalog model: the common figures plus the other HF config keys in `extra` (shared: do not mutate)."""

    id: str
    model_type: str
    architecture: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int | None
    intermediate: int | None
    vocab: int
    tied: bool
    max_positions: int
    license: str
    extra: dict[str, Any] = field(default_factory=dict, hash=False)

    def config_dict(self) -> dict[str, Any]:
        """A config.json-shaped dict (a fresh copy) for `transformers.AutoConfig.for_model(**d)`."""
        config: dict[str, Any] = {"model_type": self.model_type, "architectures": [self.architecture]}
        for name, key in figure_keys(self.model_type).items():
            value = getattr(self, name)
            if key is not None and value is not None:
                config[key] = value
        config.update(copy.deepcopy(self.extra))
        return config


@dataclass(frozen=True)
class _Catalog:
    entries: dict[str, CatalogEntry]
    by_lower: dict[str, str]  # lower-cased id -> id
    aliases: dict[str, str]  # lower-cased alias -> id


def _parse_entry(model_id: str, table: dict[str, Any]) -> CatalogEntry:
    unknown = set(table) - _TABLE_KEYS
    if unknown:
        raise ValueError(f"catalog entry {model_id!r}: unknown keys {sorted(unknown)}")
    missing = {"model_type", "architecture", "license", *FIGURES} - _OPTIONAL_FIGURES - set(table)
    if missing:
        raise ValueError(f"catalog entry {model_id!r}: missing {sorted(missing)}")
    keys = figure_keys(table["model_type"])
    for name, key in keys.items():
        if key is None and name in table:
            raise ValueError(f"catalog entry {model_id!r}: {table['model_type']} has no HF key for {name!r}")
    extra = dict(table.get("extra", {}))
    # TOML has no null: `nulls` lists the HF keys whose value is JSON null.
    for key in table.get("nulls", []):
        if key in extra:
            raise ValueError(f"catalog entry {model_id!r}: {key!r} is both in nulls and in extra")
        extra[key] = None
    clash = set(extra) & ({k for k in keys.values() if k} | {"model_type", "architectures"})
    if clash:
        raise ValueError(f"catalog entry {model_id!r}: extra repeats a figure key: {sorted(clash)}")
    figures: dict[str, Any] = {name: table.get(name) for name in FIGURES}
    return CatalogEntry(
        id=model_id,
        model_type=table["model_type"],
        architecture=table["architecture"],
        license=table["license"],
        extra=extra,
        **figures,
    )


@cache
def _catalog() -> _Catalog:
    raw = tomllib.loads(resources.files("peftplan.models").joinpath("catalog.toml").read_text("utf-8"))
    alias_table: dict[str, str] = raw.pop("aliases", {})
    entries = {model_id: _parse_entry(model_id, table) for model_id, table in raw.items()}
    by_lower: dict[str, str] = {}
    for model_id in entries:
        if model_id.lower() in by_lower:
            raise ValueError(
                f"catalog ids {by_lower[model_id.lower()]!r} and {model_id!r} differ only in case"
            )
        by_lower[model_id.lower()] = model_id
    aliases: dict[str, str] = {}
    for alias, target in alias_table.items():
        if target not in entries:
            raise ValueError(f"catalog alias {alias!r} points to unknown id {target!r}")
        if alias.lower() in by_lower or alias.lower() in aliases:
            raise ValueError(f"catalog alias {alias!r} repeats an id or another alias")
        aliases[alias.lower()] = target
    return _Catalog(entries, by_lower, aliases)


def catalog_ids() -> list[str]:
    """All catalog ids, sorted."""
    return sorted(_catalog().entries)


def catalog_aliases() -> dict[str, str]:
    """Short names (lower case) and the catalog id each stands for."""
    return dict(_catalog().aliases)


def catalog_entry(model_id: str) -> CatalogEntry | None:
    """The entry for an exact id, a case-insensitive id or an alias; None if there is none."""
    cat = _catalog()
    name = model_id.strip()
    key = name.lower()
    resolved = name if name in cat.entries else cat.by_lower.get(key) or cat.aliases.get(key)
    return cat.entries[resolved] if resolved is not None else None


def catalog_config_dict(model_id: str) -> dict[str, Any]:
    """A HF config.json-shaped dict for a catalog model (a fresh copy each call).

    Raises:
        UnknownNameError: `model_id` is neither a catalog id nor an alias.
    """
    entry = catalog_entry(model_id)
    if entry is None:
        raise UnknownNameError("catalog model", model_id, catalog_ids())
    return entry.config_dict()


def _normalised(name: str) -> str:
    """`name` lower-cased without separators, so that "Llama-3.1_8B" and "llama3.18b" compare equal."""
    return "".join(ch for ch in name.strip().lower() if ch.isalnum())


def suggest_model_ids(name: str, n: int = 3, cutoff: float = 0.6) -> list[str]:
    """Up to `n` catalog ids close to `name`, best first.

    Every id, the name after its organisation, and every alias is a candidate; each is compared with
    difflib on normalised names (see `_normalised`), and with the query's own name after an
    organisation too, so that a missing letter or separator ("lama-3-8b") still finds its model.
    """
    if n <= 0:
        return []
    cat = _catalog()
    candidates: list[tuple[str, str]] = []  # (candidate name, id)
    for lower, model_id in cat.by_lower.items():
        candidates += [(lower, model_id), (lower.rsplit("/", 1)[-1], model_id)]
    for alias, model_id in cat.aliases.items():
        candidates += [(alias, model_id), (alias.rsplit("/", 1)[-1], model_id)]
    query = name.strip().lower()
    queries = {_normalised(query), _normalised(query.rsplit("/", 1)[-1])} - {""}
    best: dict[str, tuple[float, float]] = {}  # id -> (normalised score, raw score: the tie-break)
    for candidate, model_id in candidates:
        matcher = difflib.SequenceMatcher(None, b=_normalised(candidate))
        score = 0.0
        for q in queries:
            matcher.set_seq1(q)
            score = max(score, matcher.ratio())
        raw = difflib.SequenceMatcher(None, query, candidate).ratio()
        if score >= cutoff and (score, raw) > best.get(model_id, (0.0, 0.0)):
            best[model_id] = (score, raw)
    return sorted(best, key=lambda model_id: best[model_id], reverse=True)[:n]
