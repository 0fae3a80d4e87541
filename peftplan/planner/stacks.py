"""Training stacks: each is a named set of memory knobs that say what its training code really allocates.

A knob set by the user overrides the stack's value. The planner prices knobs, never stack names: a stack
is only the defaults its own code uses (cited, file and commit, in docs/planner.md "Training stacks").

Knobs:
- `loss`: `full` (fp32 logits of every token, transformers' `ForCausalLMLoss`), `chunked` (the output
  layer and cross-entropy run per chunk of positions, torchtune's `CEWithChunkedOutputLoss` and litgpt's
  `chunked_cross_entropy`), `fused` (Liger's fused linear cross-entropy, Apple's cut cross-entropy,
  Unsloth's: the full logits never exist).
- `loss_chunks`: how many chunks `chunked` splits the tokens into (torchtune: 8).
- `loss_chunk_tokens`: instead, chunks of this many tokens (litgpt: 128); for `fused`, TRL's tiles of
  this many tokens (4096) by 32768 vocabulary entries; 0 uses the count.
- `loss_recompute`: each chunk of the loss is checkpointed (TRL's `chunked_nll` before 1.16): nothing
  of the vocabulary size is saved, the chunk's logits are rebuilt in backward.
- `loss_fp32`: the loss upcasts logits to fp32 before log-softmax (transformers, torchtune); litgpt's
  runs log-softmax in the logits' dtype.
- `legacy_loss`: transformers before 4.45 (LlamaForCausalLM and its peers): the model upcasts every
  logit to fp32 in its forward (`logits = logits.float()`) and the loss takes a contiguous shifted
  copy; the slice's backward builds a full fp32 gradient. Runs published in 2023-2024 ran this.
- `compile_loss`: the loss runs under `torch.compile` (torchtune's `compile: True`, axolotl's chunked
  cross-entropy): inductor saves the (chunk's) low-precision logits and two fp32 values per token (max
  and log-sum-exp) instead of the fp32 log-softmax output (checked on a real compiled step).
  torchtune's recipes hand bf16 logits to `nn.CrossEntropyLoss` when the loss is not chunked: plan
  that with `--loss full --no-loss-fp32`.
- `keep_logits`: the training loop holds the logits until backward is done (litgpt's `logits` variable);
  transformers' Trainer and torchtune (`del logits`) free them before backward.
- `precision`: `mixed` (weights in --dtype, adapters in fp32, autocast: transformers + peft) or `pure`
  (everything, adapters included, in --dtype without autocast: torchtune's `dtype: bf16`, litgpt's
  `bf16-true`). `pure` with `adapter_dtype=fp32` is PEFT's method_comparison suite (`use_amp: false`):
  the adapters stay fp32 and each casts its input to fp32, saving that copy for backward.
- `kbit_prep`: on a 4/8-bit base, `peft` (peft's `prepare_model_for_kbit_training` upcasts every
  unquantized parameter to fp32), `none` (they stay in the training dtype), `torchtune` (torchao NF4:
  every decoder Linear, LoRA-wrapped or `FrozenNF4Linear`; embeddings and output layer in the training
  dtype; the same storage as `none`), `all-linear` (litgpt's bitsandbytes plugin: every Linear, the
  output layer included; nothing upcast).
- `adapter_dtype`: `fp32` (peft's `autocast_adapter_dtype`) or `dtype` (the training dtype: torchtune,
  litgpt, TRL on a quantized base).
- `checkpointing`: `none`, `recompute` (torch checkpointing of every block), `offload` (Unsloth's: the
  checkpointed block inputs live on the host).
- `offload_activations`: torch's `save_on_cpu` / torchtune's `OffloadActivations`: saved tensors live
  on the host until backward needs them.
- `optimizer_in_bwd`: torchtune's optimizer step inside backward: each gradient is stepped and freed as
  soon as it is made, so a full set of gradients never exists.
- `optimizer_fused`: torch AdamW's fused kernel (`fused=True`) updates every tensor in place, so the step
  allocates nothing; without it, foreach AdamW takes `sqrt(exp_avg_sq)` of a whole dtype group at once (a
  copy of the second moments). transformers' Trainer defaults to `adamw_torch_fused` with torch >= 2.8
  (`training_args.py` `default_optim`), which TRL, axolotl (its own default) and LLaMA-Factory inherit;
  torchtune's configs set `fused: True`; litgpt's `torch.optim.AdamW` does not.
- `kernels`: `torch` (the model's own modules, replayed op by op) or `unsloth` (Unsloth's Triton
  kernels for Llama-style blocks: fast RMSNorm, `LoRA_QKV`, `LoRA_W`, `LoRA_MLP`; each saves only its
  input and the MLP its gate and up outputs; priced from their source, since Triton cannot run here).
- `packing`: sequences are packed to `--seq-len` (every batch is full); unpacked, `--seq-len` is a cap.
- `bnb_keeps_input`: bitsandbytes before 0.43.2 (`MatMul4Bit.forward`: `ctx.tensors = (A, B)`): every 4-bit
  Linear whose input needs a gradient keeps that input as a plain attribute of its autograd node, which
  backward never releases: it lives as long as the graph, through the whole backward, and with a loop that
  keeps the step's outputs (`keep_logits`, litgpt's `logits`) into the next step's forward. litgpt pinned
  bitsandbytes 0.42.0 until 2024-12; 0.43.2 (2024-07, bitsandbytes#1270) keeps `(None, B)`.
- `model_code`: whose model code runs the blocks: `transformers` (the model's transformers modules) or
  `litgpt` (litgpt's own `GPT`: one fused qkv Linear whose query, key and value are views of its output,
  keys and values expanded to every query head for grouped attention, its RoPE with a `torch.cat`, and
  `LoRAQKVLinear`, one LoRA branch for the enabled parts of the fused projection; `planner/blocks.py`).
- `output_fp32`: the training wrapper casts the model's output to fp32 (Lightning Fabric's
  `_FabricModule.forward` ends with `precision.convert_output`, which litgpt's loop goes through): the
  logits the loop holds and the loss reads are fp32 copies of the output layer's.
- `bnb_fp16_state`: the 4-bit weights were quantized from fp16 (Lightning's `BitsandbytesPrecision`), so
  bitsandbytes dequantizes each to fp16 and then casts it to the compute dtype: two weight-sized
  temporaries per 4-bit matmul instead of one on a bf16 model.
- `fsdp_flat_grads` (with `--shard fsdp`): FSDP1 with `use_orig_params=True` (Lightning's default on torch
  >= 2.0) flattens a unit's frozen and trainable parameters into one FlatParameter, and the unit's gradient
  spans all of it: a LoRA block's gradient is the whole block's size. peft's `fsdp_auto_wrap_policy` with
  `use_orig_params=False` (accelerate, PEFT's examples) wraps the trainable modules apart; FSDP2
  (torchtune) shards per parameter: only trainable gradients.
- `fsdp_no_sync` (with `--shard fsdp`): gradient accumulation runs its non-final micro-batches under FSDP's
  `no_sync()` (Lightning's `no_backward_sync`, litgpt's loop; accelerate's `accumulate`), where every unit
  keeps its gradient unsharded across micro-batches: a full-size gradient per GPU, alive the whole step.
- `fsdp_root_whole` (with `--shard fsdp`): the root unit (what no block holds: embeddings, final norm,
  output layer) stays gathered from forward to backward, as FSDP1 never reshards the root after forward
  (accelerate, Lightning), nor does torchtune's FSDP2 root (`training.shard_model`: `fully_shard(model,
  reshard_after_forward=False)` @bd2a0fc `torchtune/training/_distributed.py`; FSDP2 treats its root so
  too). Its configs leave `custom_sharded_layers` (embeddings and output as units of their own) commented out.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal

from peftplan.errors import BadInputError, UnknownNameError

Loss = Literal["full", "chunked", "fused"]
KbitPrep = Literal["peft", "none", "torchtune", "all-linear"]
AdapterDtype = Literal["fp32", "dtype"]
Checkpointing = Literal["none", "recompute", "offload"]
Precision = Literal["mixed", "pure"]
ModelCode = Literal["transformers", "litgpt"]

LOSSES: tuple[str, ...] = ("full", "chunked", "fused")
KBIT_PREPS: tuple[str, ...] = ("peft", "none", "torchtune", "all-linear")
ADAPTER_DTYPES: tuple[str, ...] = ("fp32", "dtype")
KERNELS: tuple[str, ...] = ("torch", "unsloth")
CHECKPOINTING: tuple[str, ...] = ("none", "recompute", "offload")
PRECISIONS: tuple[str, ...] = ("mixed", "pure")
MODEL_CODES: tuple[str, ...] = ("transformers", "litgpt")


@dataclass(frozen=True)
class Knobs:
    """The memory techniques of a training stack (see the module docstring)."""

    loss: Loss = "full"
    loss_chunks: int = 8
    loss_chunk_tokens: int = 0
    loss_recompute: bool = False
    loss_fp32: bool = True
    legacy_loss: bool = False
    compile_loss: bool = False
    keep_logits: bool = False
    precision: Precision = "mixed"
    adapter_dtype: AdapterDtype = "fp32"
    kbit_prep: KbitPrep = "peft"
    checkpointing: Checkpointing = "recompute"
    offload_activations: bool = False
    optimizer_in_bwd: bool = False
    optimizer_fused: bool = True
    kernels: Literal["torch", "unsloth"] = "torch"
    packing: bool = False
    bnb_keeps_input: bool = False
    bnb_fp16_state: bool = False
    model_code: ModelCode = "transformers"
    output_fp32: bool = False
    fsdp_flat_grads: bool = False
    fsdp_no_sync: bool = False
    fsdp_root_whole: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


KNOB_NAMES: tuple[str, ...] = tuple(f.name for f in fields(Knobs))
_CHOICES: dict[str, tuple[str, ...]] = {"loss": LOSSES, "kbit_prep": KBIT_PREPS, "checkpointing": CHECKPOINTING,
                                        "precision": PRECISIONS, "adapter_dtype": ADAPTER_DTYPES, "kernels": KERNELS,
                                        "model_code": MODEL_CODES}
_COUNTS = ("loss_chunks", "loss_chunk_tokens")


@dataclass(frozen=True)
class Stack:
    """A training stack: its default knobs and optimizer, and what it can train.

    Attributes:
        methods: the peftplan methods the stack can train (None: every method).
        losses: the losses it offers (a `loss` override outside these is refused).
        optimizer: the optimizer its recipes use by default.
        when_quantized / when_full: what its code changes on a quantized base, or when the whole base
            trains (knobs or `optimizer`); applied unless the user set them.
        source: the code read for these defaults (repository @ commit; docs/planner.md cites files).
    """

    name: str
    knobs: Knobs
    summary: str
    source: str
    methods: frozenset[str] | None = None
    losses: tuple[str, ...] = LOSSES
    optimizer: str = "adamw"
    when_quantized: dict[str, Any] = field(default_factory=dict)
    when_full: dict[str, Any] = field(default_factory=dict)


STACKS: dict[str, Stack] = {
    stack.name: stack
    for stack in (
        Stack("hf", Knobs(), "transformers Trainer + peft defaults (fp32 logits, peft k-bit prep)",
              "huggingface/transformers + huggingface/peft", losses=("full", "fused")),
        Stack("trl", Knobs(loss="fused", loss_chunk_tokens=4096, kbit_prep="none"),
              "TRL 1.16 SFTTrainer: fused LM head (4096-token tiles), no k-bit prep",
              "huggingface/trl 1.16.0", losses=("full", "chunked", "fused"),  # full: before 1.16, or label smoothing
              when_quantized={"adapter_dtype": "dtype"}),
        Stack("unsloth", Knobs(loss="fused", kbit_prep="none", checkpointing="offload", kernels="unsloth"),
              "Unsloth: fused cross-entropy, no fp32 upcast, offloaded checkpoints",
              "unslothai/unsloth@015bdef + unslothai/unsloth-zoo@ce232d6",
              methods=frozenset({"full", "lora", "qlora", "rslora"}), losses=("fused",), optimizer="adamw8bit"),
        Stack("axolotl", Knobs(kbit_prep="none", checkpointing="none"),
              "Axolotl: no checkpointing unless set, norms/embeddings/head back in bf16",
              "axolotl-ai-cloud/axolotl@067b021", losses=("full", "chunked", "fused")),
        Stack("llama-factory", Knobs(kbit_prep="none"), "LLaMA-Factory: no fp32 upcast of embeddings and head",
              "hiyouga/LLaMA-Factory@ff6d4d1", losses=("full", "fused"),
              when_full={"optimizer": "adamw-fp32"}),
        Stack("torchtune", Knobs(loss="chunked", loss_chunks=8, precision="pure", adapter_dtype="dtype",
                                 kbit_prep="torchtune"),
              "torchtune recipes: pure bf16, chunked cross-entropy, torchao NF4",
              "pytorch/torchtune@bd2a0fc",
              methods=frozenset({"full", "lora", "qlora", "dora", "qdora"}), losses=("full", "chunked"),
              when_full={"optimizer": "paged-adamw8bit", "optimizer_in_bwd": True}),
        Stack("litgpt", Knobs(loss="chunked", loss_chunk_tokens=128, loss_fp32=False, keep_logits=True,
                              precision="pure", adapter_dtype="dtype", kbit_prep="all-linear", checkpointing="none",
                              bnb_fp16_state=True, model_code="litgpt", output_fp32=True, fsdp_flat_grads=True,
                              fsdp_no_sync=True, optimizer_fused=False),
              "litgpt finetune (config hub, bf16-true): litgpt's own model under Fabric (fp32 logits), "
              "128-token loss chunks, every Linear quantized from fp16",
              "Lightning-AI/litgpt@2685705 + Lightning-AI/pytorch-lightning@7f0c343",
              methods=frozenset({"full", "lora", "qlora"}), losses=("full", "chunked"),
              when_quantized={"optimizer": "paged-adamw"}),
    )
}
STACK_NAMES: tuple[str, ...] = tuple(STACKS)


def get_stack(name: str) -> Stack:
    """The stack called `name`.

    Raises:
        UnknownNameError: no such stack (with a did-you-mean).
    """
    try:
        return STACKS[name]
    except KeyError:
        raise UnknownNameError("stack", name, STACK_NAMES, hint=f"Stacks: {', '.join(STACK_NAMES)}.") from None


def resolve_knobs(stack: str = "hf", **overrides: Any) -> Knobs:
    """The stack's knobs with every override that is not None applied, each value checked.

    Raises:
        BadInputError: an unknown stack, knob or knob value; a loss the stack does not offer.
    """
    base = get_stack(stack)
    changes: dict[str, Any] = {}
    for name, value in overrides.items():
        if value is None:
            continue
        if name not in KNOB_NAMES:
            raise UnknownNameError("stack knob", name, KNOB_NAMES)
        changes[name] = check_knob(name, value)
    knobs = replace(base.knobs, **changes)
    if knobs.loss not in base.losses:
        raise BadInputError(f"stack {stack!r} has no {knobs.loss!r} loss (it offers: {', '.join(base.losses)})")
    return knobs


def check_knob(name: str, value: Any) -> Any:
    """`value` checked for knob `name`."""
    if name in _CHOICES:
        if value not in _CHOICES[name]:
            raise UnknownNameError(name.replace("_", "-"), str(value), _CHOICES[name])
        return value
    if name in _COUNTS:
        low = 1 if name == "loss_chunks" else 0
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise BadInputError(f"--{name.replace('_', '-')} must be an integer >= {low}, got {value!r}")
        return value
    if not isinstance(value, bool):
        raise BadInputError(f"{name.replace('_', '-')} must be true or false, got {value!r}")
    return value


def check_method(stack: str, method: str) -> None:
    """Refuse a method the stack cannot train.

    Raises:
        BadInputError: the stack has no such method.
    """
    allowed = get_stack(stack).methods
    if allowed is not None and method not in allowed:
        raise BadInputError(f"stack {stack!r} cannot train {method!r} (it trains: {', '.join(sorted(allowed))})")
