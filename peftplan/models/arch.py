"""The architecture facts the activation model needs, read from a ModelSpec and its config.

Families differ in what autograd saves: pre-norm RMSNorm decoders with gated MLPs (Llama, Mistral,
Qwen, Gemma, Phi-3), GPT-2 (LayerNorm, fused QKV, tanh GELU written out in Python, dropout), parallel
attention/MLP blocks (Phi, GPT-NeoX, Falcon) and post-norm encoders (BERT, RoBERTa, DeBERTa).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from peftplan.models.spec import LinearInfo, ModelSpec

Family = Literal["llama", "gpt2", "parallel", "bert"]
NormKind = Literal["rms", "rms_gemma", "layer"]

_ATTN_OUT_LEAVES = ("o_proj", "dense", "c_proj", "out_proj", "wo")
_LLAMA_LIKE = {
    "llama", "mistral", "qwen2", "qwen2_vl", "qwen2_5_vl", "qwen3", "mixtral", "gemma", "gemma2", "phi3",
    "olmo", "olmo2", "granite", "stablelm", "cohere", "internlm2", "qwen3_moe", "smollm3",
}
_PARALLEL = {"phi", "gpt_neox", "falcon", "gptj", "codegen"}
# Model types whose `...ForCausalLM.forward` calls `load_balancing_loss_func` and adds it to the loss when
# `output_router_logits` is on (transformers 5.23, e.g. models/mixtral/modeling_mixtral.py:623-631; the
# config default is off). DeepSeek-V2/V3 record router logits but compute no auxiliary loss.
AUX_LOSS_TYPES = frozenset({
    "dbrx", "ernie4_5_moe", "flex_olmo", "gpt_oss", "granitemoe", "granitemoeshared", "jamba", "jetmoe", "minimax",
    "olmoe", "phimoe", "qwen2_moe", "qwen3_moe", "qwen3_next", "mixtral",
})
# Model types whose PreTrainedModel has `_supports_sdpa = False` in transformers 5.23, so that a model built
# without an explicit `attn_implementation` runs `eager_attention_forward` (models/gpt_oss/modeling_gpt_oss.py:379;
# checked against the installed transformers by tests/planner/test_moe_attention.py).
NO_SDPA_TYPES = frozenset({"gpt_oss"})
# gpt-oss's router: top-k of the raw logits, then a softmax over the k values in their own dtype
# (`GptOssTopKRouter.forward`, modeling_gpt_oss.py:125-129), and its experts' clamped gate
# (`GptOssExperts._apply_gate`, :81-87).
_TOPK_THEN_SOFTMAX_TYPES = frozenset({"gpt_oss"})
_CLAMPED_GATE_TYPES = frozenset({"gpt_oss"})
# DeepSeek-V2's router casts its input and weight to fp32 before `F.linear` (`DeepseekV2TopkRouter.forward`,
# models/deepseek_v2/modeling_deepseek_v2.py:99); autocast runs the linear in the low dtype anyway.
_FP32_ROUTER_TYPES = frozenset({"deepseek_v2"})
# Routers that cast the normalised top-k weights back to the logits' dtype (`router_top_value =
# router_top_value.to(router_logits.dtype)`, e.g. `Qwen3MoeTopKRouter.forward`, models/qwen3_moe/modeling_qwen3_moe.py:264
# in transformers 5.23): the experts' rows are weighted in that dtype, not in fp32 (Mixtral, DeepSeek-V2).
LOW_WEIGHTS_TYPES = frozenset({
    "flex_olmo", "mellum", "olmoe", "qwen2_moe", "qwen3_5_moe", "qwen3_moe", "qwen3_next", "qwen3_omni_moe",
    "qwen3_vl_moe", "qwen4_exp",
})
_ENCODERS = {"bert", "roberta", "deberta", "deberta-v2", "xlm-roberta", "electra", "distilbert"}


@dataclass(frozen=True)
class BlockLinears:
    """The Linears of one block, by their place in it."""

    attn_in: tuple[LinearInfo, ...]
    attn_out: LinearInfo | None
    mlp_in: tuple[LinearInfo, ...]
    mlp_out: LinearInfo | None
    other: tuple[LinearInfo, ...]
    shared: tuple[LinearInfo, ...] = ()  # an MoE block's always-on shared experts (DeepSeek, Qwen2-MoE)
    experts: tuple[str, ...] = ()  # an MoE block's fused expert parameters (full names)
    router: str | None = None  # its router's weight (full name) when the router is not a Linear


@dataclass(frozen=True)
class LatentAttention:
    """DeepSeek-V2's multi-head latent attention (`DeepseekV2Attention`, modeling_deepseek_v2.py:290-418):
    the widths of its projections, per head where said."""

    q_lora_rank: int  # 0: `q_proj` straight from the hidden state (V2-Lite), else q_a_proj -> norm -> q_b_proj
    kv_lora_rank: int  # the compressed key/value latent (kv_a_proj_with_mqa -> kv_a_layernorm -> kv_b_proj)
    qk_nope: int  # per head: the part of q and k without rotary embedding
    qk_rope: int  # per head: the rotary part (k's is one head, shared by all heads)
    v_head: int  # per head: the value width

    @property
    def qk_head(self) -> int:
        return self.qk_nope + self.qk_rope


@dataclass(frozen=True)
class Arch:
    """What the activation model needs to know about one architecture."""

    family: Family
    norm: NormKind
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    causal: bool
    act: str  # activation function name (HF spelling)
    gated: bool
    norms_per_layer: int
    qk_norm: bool  # per-head RMSNorm on queries and keys (Qwen3, OLMo-2)
    embed_scale: bool  # embeddings multiplied by sqrt(hidden) (Gemma)
    final_softcap: bool  # tanh soft-capping of the logits (Gemma 2)
    attn_softcap: bool
    moe_experts: int  # routed experts of the fused MoE blocks (0: dense MLP)
    moe_top_k: int  # routed experts each token visits
    attn_dropout: float
    hidden_dropout: float
    embed_dropout: float
    learned_positions: bool  # absolute position embeddings added to the input (GPT-2, BERT)
    rotary: bool
    rotary_fraction: float  # share of each head that rotary embeddings rotate (Phi, GPT-NeoX: partial)
    cpu_math_attention: bool  # SDPA falls back to the math kernel on CPU (Falcon's expanded MQA keys)
    mlm_head: bool  # BERT-style prediction head: dense + activation + LayerNorm before the decoder
    lm_head: bool  # produces vocabulary logits (causal or masked LM)
    tied: bool
    # Mixture of experts (from `ModelSpec.moe`); `intermediate` is then one routed expert's width.
    moe_shared_intermediate: int = 0  # width of the shared experts of one MoE block (0: none)
    moe_dense_layers: tuple[int, ...] = ()  # blocks with a dense MLP of width `dense_intermediate`
    dense_intermediate: int = 0  # the dense MLP's width (the config's intermediate_size)
    moe_router_bias: bool = False  # the router adds a bias (gpt-oss)
    moe_aux_loss: bool = False  # the model adds the load-balancing loss to a training forward's loss
    head_bias: bool = False  # the output layer adds a bias (Phi-2)
    logit_scale: bool = False  # the logits are multiplied by the config's `logit_scale` (Cohere)
    # Multimodal rotary positions (Qwen2-VL's mrope): position ids are (3, B, S), so the cos/sin tables are
    # (B, S, head_dim), one per example, not one (1, S, head_dim) shared by the batch
    # (transformers 5.23 `modeling_qwen2_vl.py:125-142`, `Qwen2VLRotaryEmbedding.forward`).
    rope_per_example: bool = False
    # Attention beyond the Llama shape:
    sdpa: bool = True  # transformers' default attention for this model is SDPA (False: eager, `NO_SDPA_TYPES`)
    attn_sinks: bool = False  # a learned sink logit per head is concatenated to the scores (gpt-oss)
    attn_masks: int = 1  # distinct 4-D masks the eager path builds (gpt-oss: full and sliding-window)
    mla: LatentAttention | None = None  # DeepSeek-V2's latent attention
    # MoE routing and experts beyond Mixtral's:
    moe_topk_then_softmax: bool = False  # softmax over the top-k logits only, in their dtype (gpt-oss)
    moe_router_fp32: bool = False  # the router's input and weight are cast to fp32 first (DeepSeek-V2)
    moe_low_weights: bool = False  # the routing weights are cast to the router logits' dtype (Qwen3-MoE)
    moe_expert_bias: bool = False  # the fused experts add per-expert biases (gpt-oss)
    moe_clamped_gate: bool = False  # gpt-oss's clamped `gate * sigmoid(alpha * gate) * (up + 1)`

    @property
    def moe_layers(self) -> int:
        """Blocks that route tokens through the fused experts."""
        return self.layers - len(self.moe_dense_layers) if self.moe_experts else 0

    def is_moe_layer(self, index: int) -> bool:
        """Block `index` routes tokens through the fused experts."""
        return self.moe_experts > 0 and index not in self.moe_dense_layers

    @property
    def q_width(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_width(self) -> int:
        return self.kv_heads * self.head_dim

    @property
    def groups(self) -> int:
        return max(1, self.heads // max(1, self.kv_heads))


def _first(cfg: dict, *keys: str, default: Any = None) -> Any:
    for key in keys:
        if cfg.get(key) is not None:
            return cfg[key]
    return default


def _float(cfg: dict, *keys: str) -> float:
    value = _first(cfg, *keys, default=0.0)
    return float(value) if isinstance(value, int | float) else 0.0


def arch_of(spec: ModelSpec) -> Arch:
    """The architecture facts of `spec` (its family decides how a block is replayed)."""
    return spec.memo("arch", lambda: _read_arch(spec))


def _read_arch(spec: ModelSpec) -> Arch:
    cfg = spec.text_config
    model_type = spec.model_type
    family: Family
    if model_type in _ENCODERS or spec.kind == "encoder" and not _is_causal_lm(spec):
        family = "bert"
    elif model_type == "gpt2":
        family = "gpt2"
    elif model_type in _PARALLEL:
        family = "parallel"
    else:
        family = "llama"  # the common modern decoder, also the fallback
    block = block_linears(spec, 0)
    block_norms = [n for n in spec.norms if n.name.startswith(f"{spec.layers_path}.0.")]
    per_head = [n for n in block_norms if n.numel == spec.head_dim]
    # The hidden-width norms (LayerNorm's numel counts its bias too); not MLA's latent norms (kv_a_layernorm).
    layer_norms = [n for n in block_norms if n.numel in (spec.hidden_size, 2 * spec.hidden_size)
                   and n.numel != spec.head_dim]
    norm: NormKind = "layer" if layer_norms and layer_norms[0].numel == 2 * spec.hidden_size else "rms"
    if model_type.startswith("gemma"):
        norm = "rms_gemma"
    act = str(_first(cfg, "hidden_act", "hidden_activation", "activation_function", default="gelu"))
    if model_type.startswith("gemma") and act == "gelu":
        act = "gelu_pytorch_tanh"  # transformers maps Gemma's legacy "gelu" to the tanh approximation
    mlp_in_width = sum(lin.out_features for lin in block.mlp_in)
    moe = spec.moe
    # Experts held as Linears (a ModuleList, older layouts) are priced as Linears: only fused ones route here.
    moe_experts = moe.num_experts if moe is not None and moe.fused else 0
    gated = family == "llama" and (len(block.mlp_in) >= 2 or mlp_in_width == 2 * spec.intermediate_size or moe_experts > 0)
    embedding_names = {e.name.rsplit(".", 1)[-1] for e in spec.embeddings}
    return Arch(
        family=family,
        norm=norm,
        # the shapes
        hidden=spec.hidden_size, layers=spec.num_layers, heads=spec.num_heads, kv_heads=spec.num_kv_heads,
        head_dim=spec.head_dim,
        intermediate=moe.expert_intermediate if moe_experts and moe is not None else spec.intermediate_size,
        vocab=spec.vocab_size,
        causal=family != "bert",
        act=act,
        gated=gated,
        norms_per_layer=max(1, len(layer_norms)),
        qk_norm=bool(per_head),
        embed_scale=model_type.startswith("gemma"),
        final_softcap=cfg.get("final_logit_softcapping") is not None,
        attn_softcap=cfg.get("attn_logit_softcapping") is not None,
        moe_experts=moe_experts,
        moe_top_k=moe.top_k if moe is not None else int(_first(cfg, "num_experts_per_tok", default=2) or 2),
        attn_dropout=_float(cfg, "attention_dropout", "attention_probs_dropout_prob", "attn_pdrop"),
        hidden_dropout=_float(cfg, "hidden_dropout_prob", "resid_pdrop", "hidden_dropout"),
        embed_dropout=_float(cfg, "embd_pdrop", "hidden_dropout_prob") if family in ("gpt2", "bert") else _float(cfg, "embd_pdrop"),
        learned_positions=bool(embedding_names & {"wpe", "position_embeddings"}),
        rotary=family in ("llama", "parallel"),
        # transformers 5 keeps the factor in `rope_parameters`; older configs at the top level.
        rotary_fraction=float(_first({**cfg, **(cfg.get("rope_parameters") or {})}, "partial_rotary_factor",
                                     "rotary_pct", default=1.0) or 1.0),
        cpu_math_attention=model_type == "falcon",
        mlm_head=any(lin.role == "other" and not lin.in_block and "transform" in lin.name or lin.name == "lm_head.dense"
                     for lin in spec.linears),
        lm_head=any(lin.role == "output" for lin in spec.linears),
        tied=spec.tie_word_embeddings,
        moe_shared_intermediate=moe.shared_intermediate if moe_experts and moe is not None else 0,
        moe_dense_layers=moe.dense_layers if moe_experts and moe is not None else (),
        dense_intermediate=spec.intermediate_size,
        moe_router_bias=bool(moe_experts and moe is not None and moe.layers[0].router is not None
                             and moe.layers[0].router.bias),
        moe_aux_loss=bool(moe_experts and cfg.get("output_router_logits") and model_type in AUX_LOSS_TYPES),
        head_bias=any(lin.role == "output" and lin.bias for lin in spec.linears),
        logit_scale=cfg.get("logit_scale") not in (None, 0, 1, 1.0),
        rope_per_example=any(isinstance(rope, dict) and "mrope_section" in rope
                             for rope in (cfg.get("rope_scaling"), cfg.get("rope_parameters"))),
        sdpa=model_type not in NO_SDPA_TYPES,
        attn_sinks=any(p.name == f"{spec.layers_path}.0.self_attn.sinks" for p in spec.params),
        attn_masks=2 if "sliding_attention" in (cfg.get("layer_types") or ()) else 1,
        mla=_latent_attention(cfg, block),
        moe_topk_then_softmax=bool(moe_experts) and model_type in _TOPK_THEN_SOFTMAX_TYPES,
        moe_router_fp32=bool(moe_experts) and model_type in _FP32_ROUTER_TYPES,
        moe_low_weights=bool(moe_experts) and model_type in LOW_WEIGHTS_TYPES,
        moe_expert_bias=bool(moe_experts) and any(name.endswith("_bias") for name in block_experts(spec)),
        moe_clamped_gate=bool(moe_experts) and model_type in _CLAMPED_GATE_TYPES,
    )


def block_experts(spec: ModelSpec) -> tuple[str, ...]:
    """The fused expert parameters of the first MoE block (full names; empty on a dense model)."""
    return tuple(p.name for p in spec.moe.layers[0].experts) if spec.moe is not None and spec.moe.layers else ()


def _latent_attention(cfg: dict, block: BlockLinears) -> LatentAttention | None:
    """MLA's widths when the block projects keys and values through `kv_a_proj_with_mqa`, else None."""
    if not any(lin.leaf == "kv_a_proj_with_mqa" for lin in block.attn_in):
        return None
    return LatentAttention(q_lora_rank=int(cfg.get("q_lora_rank") or 0), kv_lora_rank=int(cfg["kv_lora_rank"]),
                           qk_nope=int(cfg["qk_nope_head_dim"]), qk_rope=int(cfg["qk_rope_head_dim"]),
                           v_head=int(cfg["v_head_dim"]))


def _is_causal_lm(spec: ModelSpec) -> bool:
    return spec.architecture.endswith(("ForCausalLM", "LMHeadModel", "ForConditionalGeneration"))


def block_linears(spec: ModelSpec, index: int) -> BlockLinears:
    """The Linears of block `index`, sorted into attention inputs/output and MLP inputs/output.

    In an MoE block the shared experts' Linears go to `shared`, so that `mlp_in` and `mlp_out` stay
    those of a dense MLP (empty when the fused experts replace it).
    """
    by_index: dict[int, BlockLinears] = spec.memo("block_linears", dict)
    if index not in by_index:
        by_index[index] = _read_block_linears(spec, index)
    return by_index[index]


def _read_block_linears(spec: ModelSpec, index: int) -> BlockLinears:
    block = spec.layer_linears(index)
    moe_layer = next((layer for layer in spec.moe.layers if layer.index == index), None) if spec.moe else None
    shared_names = set(moe_layer.shared) if moe_layer is not None else set()
    shared = tuple(lin for lin in block if lin.name in shared_names)
    block = [lin for lin in block if lin.name not in shared_names]
    attn = [lin for lin in block if lin.role == "attn"]
    mlp = [lin for lin in block if lin.role == "mlp"]
    attn_out = next((lin for lin in attn if lin.leaf in _ATTN_OUT_LEAVES and lin.out_features == spec.hidden_size), None)
    mlp_out = next((lin for lin in reversed(mlp) if lin.out_features == spec.hidden_size), None)
    return BlockLinears(
        attn_in=tuple(lin for lin in attn if lin is not attn_out),
        attn_out=attn_out,
        mlp_in=tuple(lin for lin in mlp if lin is not mlp_out and lin.in_features == spec.hidden_size),
        mlp_out=mlp_out,
        other=tuple(lin for lin in block if lin.role == "other"
                    or (lin.role == "mlp" and lin is not mlp_out and lin.in_features != spec.hidden_size)),
        shared=shared,
        experts=tuple(p.name for p in moe_layer.experts) if moe_layer is not None else (),
        router=f"{moe_layer.router.name}.weight" if moe_layer is not None and moe_layer.router is not None
        and not moe_layer.router.linear else None,
    )
