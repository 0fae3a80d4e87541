"""ModelSpec: an architecture inventory built from a config on the meta device, never from weights."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeVar

if TYPE_CHECKING:
    from torch import nn

    from peftplan.models.vision import VisionTower

T = TypeVar("T")
_MISSING = object()
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
        return math.prod(self.shape)


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
class RouterInfo:
    """The router (gate) of an MoE block: a hidden -> experts projection.

    `linear` says whether it is an `nn.Linear` (then it is also in `ModelSpec.linears`); transformers 5
    routers are their own modules holding a bare `weight` [E, H] (and gpt-oss a `bias` [E]).
    """

    name: str  # the module holding the weight, e.g. "model.layers.3.mlp.gate"
    in_features: int
    out_features: int
    bias: bool
    linear: bool

    @property
    def numel(self) -> int:
        return self.in_features * self.out_features + (self.out_features if self.bias else 0)


@dataclass(frozen=True)
class MoELayer:
    """One mixture-of-experts block of the main text stack.

    `experts` are the routed expert parameters with their full names. In transformers 5 they are
    fused 3D tensors whose first dimension is the expert (Mixtral, Qwen3-MoE, DeepSeek-V2:
    `gate_up_proj` [E, 2I, H] and `down_proj` [E, H, I]; gpt-oss transposed, [E, H, 2I] and
    [E, I, H], plus per-expert biases); with `fused` False they are the parameters of a ModuleList of
    per-expert Linears (older layouts). `shared` names the Linears of always-on shared experts
    (DeepSeek `shared_experts`, Qwen2-MoE `shared_expert` and its `shared_expert_gate`).
    """

    index: int  # block index in the layer stack
    path: str  # the MoE block, e.g. "model.layers.3.mlp"
    experts_path: str  # e.g. "model.layers.3.mlp.experts"
    fused: bool
    experts: tuple[ParamInfo, ...]
    router: RouterInfo | None
    shared: tuple[str, ...] = ()
    shared_params: int = 0

    @property
    def routed_params(self) -> int:
        return sum(p.numel for p in self.experts)


@dataclass(frozen=True)
class MoEInfo:
    """The experts of a mixture-of-experts model, read off the built model (plain data)."""

    num_experts: int  # routed experts per MoE block
    top_k: int  # routed experts each token visits
    expert_intermediate: int  # one routed expert's MLP width
    shared_intermediate: int  # the shared experts' MLP width in one block (0: none)
    layers: tuple[MoELayer, ...]
    dense_layers: tuple[int, ...]  # blocks with a dense MLP (first_k_dense_replace, mlp_only_layers, ...)

    @property
    def fused(self) -> bool:
        """Experts are fused 3D parameters (peft reaches them with `target_parameters` only)."""
        return any(layer.fused for layer in self.layers)

    @property
    def routed_params(self) -> int:
        return sum(layer.routed_params for layer in self.layers)

    @property
    def active_routed_params(self) -> int:
        """The routed expert parameters one token uses: top_k of the E experts of every MoE block."""
        return sum(layer.routed_params * self.top_k // self.num_experts for layer in self.layers)

    @property
    def shared_params(self) -> int:
        return sum(layer.shared_params for layer in self.layers)

    @property
    def router_params(self) -> int:
        return sum(layer.router.numel for layer in self.layers if layer.router is not None)


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
    moe: MoEInfo | None = None  # None: a dense model
    # Module prefixes the training setup keeps frozen whatever the method: a VLM's vision tower and its
    # projector unless --train-vision (see `with_vision_trained`). Presets and full fine-tuning skip them.
    frozen: tuple[str, ...] = ()

    def memo(self, name: str, build: Callable[[], T]) -> T:
        """`build()`, computed once per spec and kept under `name`: the planner prices thousands of
        candidates per spec and asks for the same facts each time. `build` must depend on the spec only
        (a spec is frozen, so the value never goes stale; `dataclasses.replace` starts a new spec empty)."""
        cached = self.__dict__.get(f"_memo_{name}", _MISSING)
        if cached is _MISSING:
            cached = build()
            object.__setattr__(self, f"_memo_{name}", cached)
        return cached  # type: ignore[no-any-return]

    @property
    def total_params(self) -> int:
        """Parameters with tied ones counted once (as `sum(p.numel() for p in model.parameters())`)."""
        return self.memo("total_params", lambda: sum(p.numel for p in self.params if p.tied_to is None))

    @property
    def vision(self) -> VisionTower | None:
        """The vision tower of a supported VLM (Qwen2-VL), else None (`models/vision.py`)."""
        from peftplan.models.vision import vision_tower

        return vision_tower(self)

    def with_vision_trained(self, trained: bool) -> ModelSpec:
        """This spec with the vision tower (and projector) trainable, or frozen (the default for a VLM)."""
        from dataclasses import replace

        tower = self.vision
        frozen = () if trained or tower is None else (tower.path,)
        return self if frozen == self.frozen else replace(self, frozen=frozen)

    def is_frozen(self, name: str) -> bool:
        """Whether parameter or module `name` lies under a frozen prefix (`frozen`)."""
        return any(name == p or name.startswith(p + ".") for p in self.frozen)

    @property
    def trainable_base_params(self) -> int:
        """Parameters full fine-tuning trains: all but the frozen ones (tied ones counted once)."""
        if not self.frozen:
            return self.total_params
        return sum(p.numel for p in self.params if p.tied_to is None and not self.is_frozen(p.name))

    @property
    def active_params(self) -> int:
        """Parameters one token uses: everything but the routed experts, plus top_k/E of those.

        Shared experts, routers and dense blocks count in full; so do the embedding and the output
        head (Mistral's and Qwen's convention: Mixtral-8x7B 12.9B, Qwen3-30B-A3B 3.3B). A dense model's
        active count is its total.
        """
        if self.moe is None:
            return self.total_params
        return self.total_params - self.moe.routed_params + self.moe.active_routed_params

    @property
    def active_params_excluding_embedding(self) -> int:
        """`active_params` without the input embedding table, which a token only indexes one row of.

        OpenAI's and DeepSeek's convention (gpt-oss-20b 3.6B, DeepSeek-V2-Lite 2.4B). A tied table is
        kept: it is also the output head, which every token multiplies by.
        """
        tied = {p.tied_to for p in self.params if p.tied_to is not None}
        untied = sum(e.numel for e in self.embeddings if f"{e.name}.weight" not in tied)
        return self.active_params - untied

    @property
    def text_config(self) -> dict[str, Any]:
        """The language-model part of the config (VLMs nest it under `text_config`)."""
        nested = self.config.get("text_config")
        return {**self.config, **nested} if isinstance(nested, dict) else self.config

    @property
    def linears_by_name(self) -> dict[str, LinearInfo]:
        """Every Linear by its name (shared: read it, never change it)."""
        return self.memo("linears_by_name", lambda: {lin.name: lin for lin in self.linears})

    def layer_linears(self, index: int = 0) -> list[LinearInfo]:
        """Linears of decoder block `index` of the main text stack."""
        # Indexed once per spec: the planner asks for every block of every candidate (O(layers²) otherwise).
        return list(self.memo("linears_by_block", self._linears_by_block).get(str(index), ()))

    def _linears_by_block(self) -> dict[str, list[LinearInfo]]:
        by_block: dict[str, list[LinearInfo]] = {}
        prefix = f"{self.layers_path}."
        for lin in self.linears:
            if lin.name.startswith(prefix):
                by_block.setdefault(lin.name[len(prefix):].split(".", 1)[0], []).append(lin)
        return by_block

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> ModelSpec:
        raw = json.loads(text)
        raw["params"] = tuple(ParamInfo(p["name"], tuple(p["shape"]), p["tied_to"]) for p in raw["params"])
        raw["linears"] = tuple(LinearInfo(**lin) for lin in raw["linears"])
        raw["embeddings"] = tuple(ModuleInfo(m["name"], m["numel"], tuple(m["shape"])) for m in raw["embeddings"])
        raw["norms"] = tuple(ModuleInfo(m["name"], m["numel"], tuple(m["shape"])) for m in raw["norms"])
        raw["frozen"] = tuple(raw.get("frozen", ()))
        moe = raw.get("moe")
        if moe is not None:
            layers = tuple(
                MoELayer(
                    index=layer["index"],
                    path=layer["path"],
                    experts_path=layer["experts_path"],
                    fused=layer["fused"],
                    experts=tuple(ParamInfo(p["name"], tuple(p["shape"]), p["tied_to"]) for p in layer["experts"]),
                    router=RouterInfo(**layer["router"]) if layer["router"] is not None else None,
                    shared=tuple(layer["shared"]),
                    shared_params=layer["shared_params"],
                )
                for layer in moe["layers"]
            )
            raw["moe"] = MoEInfo(**{**moe, "layers": layers, "dense_layers": tuple(moe["dense_layers"])})
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


# A model attribute naming module prefixes the training run keeps frozen (a VLM's vision tower): the spec
# read off that model (`ModelSpec.from_model`, what methods' `apply` select targets on) carries them.
FROZEN_ATTR = "peftplan_frozen_modules"

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


# Config keys of the routed expert count and of the experts each token visits, across MoE families.
_EXPERT_KEYS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")
_TOP_K_KEYS = ("num_experts_per_tok", "experts_per_token", "moe_top_k", "top_k")


def _is_experts_module(name: str, module: nn.Module) -> bool:
    """A routed-experts container: fused 3D expert weights (transformers 5) or a ModuleList of experts."""
    from torch import nn

    if name.rsplit(".", 1)[-1] != "experts" and "Experts" not in type(module).__name__:
        return False
    if isinstance(module, nn.ModuleList):
        return len(module) > 0
    return any(p.dim() == 3 for p in module.parameters(recurse=False))


def _moe_inventory(
    model: nn.Module, layers_path: str, num_layers: int, hidden: int, text: dict[str, Any], linears: list[LinearInfo]
) -> MoEInfo | None:
    """The experts, routers, shared experts and dense blocks of an MoE model; None for a dense model."""
    from torch import nn

    prefix = f"{layers_path}."
    blocks: dict[str, list[tuple[str, nn.Module]]] = {}  # MoE block path -> its experts modules
    for name, module in model.named_modules():
        if name.startswith(prefix) and _is_experts_module(name, module):
            if any(name.startswith(f"{other}.") for group in blocks.values() for other, _ in group):
                continue  # the per-expert modules inside a ModuleList of experts
            blocks.setdefault(name.rsplit(".", 1)[0], []).append((name, module))
    if not blocks:
        return None
    modules = dict(model.named_modules())
    linear_names = {lin.name for lin in linears}
    layers: list[MoELayer] = []
    num_experts = 0
    for path, experts in blocks.items():
        index = int(path[len(prefix):].split(".", 1)[0])
        params: list[ParamInfo] = []
        fused = not any(isinstance(m, nn.ModuleList) for _, m in experts)
        for name, module in experts:
            num_experts = num_experts or (
                len(module) if isinstance(module, nn.ModuleList)
                else next(p.shape[0] for p in module.parameters(recurse=False) if p.dim() == 3)
            )
            params += [ParamInfo(f"{name}.{pname}", tuple(p.shape)) for pname, p in module.named_parameters()]
        expert_names = {name for name, _ in experts}
        router: RouterInfo | None = None
        shared: list[str] = []
        shared_params = 0
        for child_name, child in modules[path].named_children():
            full = f"{path}.{child_name}"
            if full in expert_names:
                continue
            if "shared" in child_name:
                shared += [n for n, _ in child.named_modules(prefix=full) if n in linear_names]
                shared_params += sum(p.numel() for p in child.parameters())
                continue
            for sub_name, sub in child.named_modules(prefix=full):
                weight = getattr(sub, "weight", None)
                if router is None and isinstance(weight, nn.Parameter) and tuple(weight.shape) == (num_experts, hidden):
                    bias = getattr(sub, "bias", None)
                    router = RouterInfo(sub_name, hidden, num_experts, isinstance(bias, nn.Parameter),
                                        isinstance(sub, nn.Linear))
        layers.append(MoELayer(index, path, experts[0][0] if len(experts) == 1 else path, fused, tuple(params),
                               router, tuple(shared), shared_params))
    layers.sort(key=lambda layer: layer.index)
    configured = _first(text, *_EXPERT_KEYS)
    if configured is not None and int(configured) != num_experts:
        raise ValueError(f"the built model has {num_experts} experts per block, the config says {configured}")
    top_k = int(_first(text, *_TOP_K_KEYS, default=0) or 0)
    if not 0 < top_k <= num_experts:
        raise ValueError(f"no valid experts-per-token in the config (found {top_k} for {num_experts} experts)")
    moe_blocks = {layer.index for layer in layers}
    return MoEInfo(
        num_experts=num_experts,
        top_k=top_k,
        expert_intermediate=_expert_width(layers[0], num_experts, hidden, text),
        shared_intermediate=max(
            (lin.out_features for lin in linears if lin.name in layers[0].shared and lin.in_features == hidden
             and lin.out_features > 1), default=0),
        layers=tuple(layers),
        dense_layers=tuple(i for i in range(num_layers) if i not in moe_blocks),
    )


def _expert_width(layer: MoELayer, num_experts: int, hidden: int, text: dict[str, Any]) -> int:
    """One routed expert's MLP width, from its down projection (fused [E, H, I] or [E, I, H])."""
    for p in layer.experts:
        if p.name.endswith("down_proj") and len(p.shape) == 3:
            rows, cols = p.shape[1:]
            return cols if rows == hidden else rows
    per_expert = layer.routed_params // num_experts  # a gated MLP without biases: 3 * H * I
    return int(_first(text, "moe_intermediate_size", "intermediate_size", default=per_expert // (3 * hidden)))


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
        moe=_moe_inventory(model, layers_path, num_layers, hidden, text, linears),
        frozen=tuple(getattr(model, FROZEN_ATTR, ())),
    )
