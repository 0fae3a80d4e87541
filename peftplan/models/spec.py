"""ModelSpec: an architecture inventory built from a config on the meta device, never from weights."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from torch import nn

ModelKind = Literal["decoder", "encoder", "vlm"]
LinearRole = Literal["attn", "mlp", "other", "output"]

# Path segments that place a Linear in attention or in the MLP; used by the `attn` and `mlp` presets.
_ATTN_SEGMENTS = ("attn", "attention")
_MLP_SEGMENTS = ("mlp", "feed_forward", "ffn", "intermediate", "block_sparse_moe", "experts", "moe")


@dataclass(frozen=True)
class ParamInfo:
    """One parameter; `tied_to` names the parameter whose storage it shares (counted once)."""

    name: str
    shape: tuple[int, ...]
    tied_to: str | None = None

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass(frozen=True)
class LinearInfo:
    """A Linear (or GPT-2 style Conv1D) layer, with its role in the block."""

    name: str
    in_features: int
    out_features: int
    bias: bool
    role: LinearRole
    in_block: bool  # inside the main text stack (`ModelSpec.layers_path`)
    conv1d: bool = False

    @property
    def leaf(self) -> str:
        return self.name.rsplit(".", 1)[-1]


@dataclass(frozen=True)
class ModuleInfo:
    """A module summarised by its parameter count (embeddings, norms)."""

    name: str
    numel: int
    shape: tuple[int, ...] = ()


@dataclass(frozen=True)
class ModelSpec:
    """Everything the planner and the methods need to know about an architecture."""

    model_id: str
    architecture: str
    model_type: str
    kind: ModelKind
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    intermediate_size: int
    tie_word_embeddings: bool
    layers_path: str
    params: tuple[ParamInfo, ...]
    linears: tuple[LinearInfo, ...]
    embeddings: tuple[ModuleInfo, ...]
    norms: tuple[ModuleInfo, ...]
    config: dict[str, Any] = field(repr=False)

    @property
    def total_params(self) -> int:
        """Parameters with tied ones counted once (as `sum(p.numel() for p in model.parameters())`)."""
        total: int | None = self.__dict__.get("_total_params")
        if total is None:  # computed once: the planner prices thousands of candidates per spec
            total = sum(p.numel for p in self.params if p.tied_to is None)
            object.__setattr__(self, "_total_params", total)
        return total

    @property
    def text_config(self) -> dict[str, Any]:
        """The language-model part of the config (VLMs nest it under `text_config`)."""
        nested = self.config.get("text_config")
        return {**self.config, **nested} if isinstance(nested, dict) else self.config

    def layer_linears(self, index: int = 0) -> list[LinearInfo]:
        """Linears of decoder block `index` of the main text stack."""
        # Indexed once per spec: the planner asks for every block of every candidate (O(layers²) otherwise).
        by_block: dict[str, list[LinearInfo]] | None = self.__dict__.get("_linears_by_block")
        if by_block is None:
            by_block = {}
            prefix = f"{self.layers_path}."
            for lin in self.linears:
                if lin.name.startswith(prefix):
                    by_block.setdefault(lin.name[len(prefix):].split(".", 1)[0], []).append(lin)
            object.__setattr__(self, "_linears_by_block", by_block)
        return list(by_block.get(str(index), ()))

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> ModelSpec:
        raw = json.loads(text)
        raw["params"] = tuple(ParamInfo(p["name"], tuple(p["shape"]), p["tied_to"]) for p in raw["params"])
        raw["linears"] = tuple(LinearInfo(**lin) for lin in raw["linears"])
        raw["embeddings"] = tuple(ModuleInfo(m["name"], m["numel"], tuple(m["shape"])) for m in raw["embeddings"])
        raw["norms"] = tuple(ModuleInfo(m["name"], m["numel"], tuple(m["shape"])) for m in raw["norms"])
        return cls(**raw)

    @classmethod
    def from_model(cls, model: nn.Module, *, model_id: str = "") -> ModelSpec:
        """Inventory a live (meta or real) transformers model."""
        return _inventory(model, model_id=model_id)


def _role(name: str, output_name: str | None, model_kind: ModelKind) -> LinearRole:
    if name == output_name:
        return "output"
    parents = name.split(".")[:-1]
    if any(seg in p for p in parents for seg in _ATTN_SEGMENTS):
        return "attn"
    if any(p in _MLP_SEGMENTS for p in parents):
        return "mlp"
    # BERT-style encoders put the FFN output at `layer.N.output.dense`.
    if model_kind == "encoder" and len(parents) >= 2 and parents[-1] == "output" and parents[-2].isdigit():
        return "mlp"
    return "other"


def _find_layers_path(model: nn.Module, num_layers: int) -> str:
    from torch import nn

    candidates = [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList) and len(module) == num_layers and name
    ]
    if not candidates:
        raise ValueError(f"cannot find the {num_layers}-block layer stack of {type(model).__name__}")
    # Prefer the language model's stack over e.g. a vision tower of the same depth.
    candidates.sort(key=lambda n: ("visual" in n or "vision" in n, len(n)))
    return candidates[0]


ENCODER_TYPES = {"bert", "roberta", "xlm-roberta", "deberta", "deberta-v2", "distilbert", "electra", "albert"}


def _model_kind(config: dict[str, Any], architecture: str) -> ModelKind:
    if "vision_config" in config or ("ConditionalGeneration" in architecture and "text_config" in config):
        return "vlm"
    # Not `is_decoder`: PretrainedConfig defaults it to False for decoder-only models too.
    if config.get("model_type") in ENCODER_TYPES or "MaskedLM" in architecture:
        return "encoder"
    return "decoder"


# Leaf names of an attention's key projection, and of a fused query/key/value projection.
_KEY_LEAVES = frozenset({"k_proj", "key", "k", "wk", "key_proj", "k_lin"})
_FUSED_QKV_LEAVES = frozenset({"query_key_value", "qkv_proj", "c_attn", "Wqkv", "qkv", "W_pack", "in_proj"})


def _built_kv_heads(linears: list[LinearInfo], layers_path: str, heads: int, head_dim: int) -> int | None:
    """The key/value heads the built attention of block 0 has, from its projection widths.

    Configs spell this many ways (falcon's and gpt_bigcode's `multi_query: true` leave the kv-head key
    at the head count, which the modelling code then ignores), so the same model named by a catalog id
    or by its config.json path must be read off the weights. None when no projection is recognised.
    """
    prefix = f"{layers_path}.0."
    for lin in linears:
        if lin.role != "attn" or not lin.name.startswith(prefix):
            continue
        width, rest = divmod(lin.out_features, head_dim)
        if rest:
            continue
        if lin.leaf in _KEY_LEAVES:
            return width
        if lin.leaf in _FUSED_QKV_LEAVES and width > heads and (width - heads) % 2 == 0:
            return (width - heads) // 2
    return None


def _first(cfg: dict[str, Any], *keys: str, default: Any = None) -> Any:
    for key in keys:
        if cfg.get(key) is not None:
            return cfg[key]
    return default


def _inventory(model: nn.Module, *, model_id: str) -> ModelSpec:
    from torch import nn

    # JSON-normalised so that a spec read back from the disk cache compares equal to a fresh one.
    config = json.loads(json.dumps(model.config.to_dict(), default=str))  # type: ignore[union-attr,operator]
    config.pop("transformers_version", None)
    architecture = type(model).__name__
    kind = _model_kind(config, architecture)
    nested = config.get("text_config")
    text = {**config, **nested} if isinstance(nested, dict) else config

    hidden = int(_first(text, "hidden_size", "n_embd", "d_model"))
    num_layers = int(_first(text, "num_hidden_layers", "n_layer", "num_layers"))
    heads = int(_first(text, "num_attention_heads", "n_head", "num_heads"))
    kv_heads = int(_first(text, "num_key_value_heads", "num_kv_heads", default=heads))
    head_dim = int(_first(text, "head_dim", default=hidden // heads))
    intermediate = int(_first(text, "intermediate_size", "n_inner", "ffn_dim", default=4 * hidden) or 4 * hidden)
    vocab = int(_first(text, "vocab_size"))

    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None  # type: ignore[operator]
    output_name = None
    params: list[ParamInfo] = []
    first_name: dict[int, str] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        tied_to = first_name.get(id(p))
        first_name.setdefault(id(p), name)
        params.append(ParamInfo(name, tuple(p.shape), tied_to))

    linears: list[LinearInfo] = []
    embeddings: list[ModuleInfo] = []
    norms: list[ModuleInfo] = []
    layers_path = _find_layers_path(model, num_layers)
    for name, module in model.named_modules():
        if module is output and output is not None:
            output_name = name
        is_conv1d = type(module).__name__ == "Conv1D" and hasattr(module, "nf")
        if isinstance(module, nn.Linear) or is_conv1d:
            weight = module.weight
            in_f, out_f = (weight.shape[0], weight.shape[1]) if is_conv1d else (weight.shape[1], weight.shape[0])
            linears.append(
                LinearInfo(
                    name=name,
                    in_features=int(in_f),
                    out_features=int(out_f),
                    bias=getattr(module, "bias", None) is not None,
                    role="other",
                    in_block=name.startswith(layers_path + "."),
                    conv1d=is_conv1d,
                )
            )
        elif isinstance(module, nn.Embedding):
            embeddings.append(ModuleInfo(name, module.weight.numel(), tuple(module.weight.shape)))
        elif "norm" in type(module).__name__.lower() and not list(module.children()):
            numel = sum(p.numel() for p in module.parameters(recurse=False))
            norms.append(ModuleInfo(name, numel))
    linears = [
        LinearInfo(**{**asdict(lin), "role": _role(lin.name, output_name, kind)}) for lin in linears
    ]
    kv_heads = _built_kv_heads(linears, layers_path, heads, head_dim) or kv_heads
    tied = any(p.tied_to is not None for p in params)
    return ModelSpec(
        model_id=model_id,
        architecture=architecture,
        model_type=str(config.get("model_type", "")),
        kind=kind,
        hidden_size=hidden,
        num_layers=num_layers,
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        vocab_size=vocab,
        intermediate_size=intermediate,
        tie_word_embeddings=tied,
        layers_path=layers_path,
        params=tuple(params),
        linears=tuple(linears),
        embeddings=tuple(embeddings),
        norms=tuple(norms),
        config=config,
    )
