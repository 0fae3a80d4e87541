"""Per-GPU bytes of sharded training (FSDP, ZeRO-2, ZeRO-3), hand-derived from the code that allocates them.

NCCL cannot run here, so the trace engine never runs a sharded step: these byte counts come from reading
torch's FSDP (`_runtime_utils.py`), DeepSpeed's ZeRO (`engine.py`, `stage_1_and_2.py`, `stage3.py`) and bitsandbytes (docs/planner.md,
"Several GPUs"). Llama-3.2-1B: 16 blocks of 60,821,504 parameters (q 2048x2048, k and v 512x2048,
o 2048x2048, gate/up 8192x2048, down 2048x8192, two 2048 norms); the root holds the 128256x2048
embedding (tied to the output layer) and the final 2048 norm: 262,670,336.
"""

from __future__ import annotations

import pytest

import peftplan
from peftplan.errors import BadInputError
from peftplan.methods import get_method
from peftplan.models import get_spec
from peftplan.planner.context import TrainContext
from peftplan.planner.memory import ZERO_REDUCE_BUCKET, step_model
from peftplan.planner.weights import unit_bytes

LLAMA = "meta-llama/Llama-3.2-1B"
BLOCK = 60_821_504
ROOT = 262_670_336
TOTAL = 16 * BLOCK + ROOT  # 1,235,814,400
LORA_QV = 16 * 8 * ((2048 + 2048) + (2048 + 512))  # r8 on q and v: 851,968 adapter elements
QV = {"rank": 8, "alpha": 16, "targets": ["q_proj", "v_proj"]}


def _model(ctx: TrainContext, method: str = "lora", **cfg: object):  # type: ignore[no-untyped-def]
    spec = get_spec(LLAMA)
    m = get_method(method)
    return step_model(spec, m, m.make_config(**({**QV, **cfg} if method != "full" else cfg)), ctx)


def _memory(**kwargs: object) -> peftplan.planner.context.MemoryBreakdown:  # type: ignore[name-defined]
    kwargs.setdefault("fit_search", False)
    kwargs.setdefault("method_config", QV)
    return peftplan.plan(LLAMA, methods="lora", seq_len=512, **kwargs).methods[0].memory  # type: ignore[arg-type]


def test_units_are_the_blocks_and_the_root_as_stored() -> None:
    m = _model(TrainContext(gpus=2, shard="fsdp"))
    assert m.units is not None
    assert (m.units.block, m.units.root) == (2 * BLOCK, 2 * ROOT)  # bf16
    assert m.units.trained == 16 * 2 * BLOCK  # LoRA sits in every block, none in the root
    assert m.trainable_numel == LORA_QV
    # Unit sizes are only needed (and only computed) with several GPUs and sharding.
    assert _model(TrainContext()).units is None


def test_fsdp_weights_are_the_shard_two_gathered_blocks_and_the_whole_root() -> None:
    whole = _memory(gpus=2, shard="fsdp")
    # FSDP1's root is not resharded after forward (`_post_forward_reshard`): the whole bf16 root beside its shard.
    assert whole.weights == 2 * TOTAL // 2 + 2 * 2 * BLOCK + 2 * ROOT
    assert whole.adapter == 4 * LORA_QV // 2  # peft's fp32 adapters, sharded
    resharded = _memory(gpus=2, shard="fsdp", fsdp_root_whole=False)
    assert whole.weights - resharded.weights == 2 * ROOT


def test_no_sync_keeps_unsharded_gradients_and_flat_grads_span_the_blocks() -> None:
    # Under no_sync() the accumulated gradient is never reduce-scattered: whole on each GPU at every moment.
    plain = _memory(gpus=2, shard="fsdp", fsdp_no_sync=True)
    assert plain.gradients == 4 * LORA_QV
    # use_orig_params=True: one FlatParameter per block, frozen weights included, so a block-sized gradient.
    flat = _memory(gpus=2, shard="fsdp", fsdp_no_sync=True, fsdp_flat_grads=True)
    assert flat.gradients == 16 * 2 * BLOCK
    assert flat.peak_allocated - plain.peak_allocated == 16 * 2 * BLOCK - 4 * LORA_QV


def test_flat_grads_without_no_sync_are_sharded() -> None:
    # At the end of backward (full fine-tuning's peak is there or at the step) every unit's gradient is
    # reduce-scattered: for full fine-tuning flat and per-parameter gradients are the same bytes.
    full_flat = peftplan.plan(LLAMA, methods="full", seq_len=512, gpus=4, shard="fsdp", fsdp_flat_grads=True,
                              fit_search=False).methods[0].memory
    full = peftplan.plan(LLAMA, methods="full", seq_len=512, gpus=4, shard="fsdp",
                         fit_search=False).methods[0].memory
    assert full_flat.gradients == full.gradients


def test_zero3_prices_the_reduce_bucket_gradient_partitions_and_fp32_master() -> None:
    mem = _memory(gpus=8, shard="zero3")
    # __ipg_bucket_flat_buffer: 5e8 bf16 elements; grad_partitions_flat_buffer: this GPU's share in bf16.
    assert ZERO_REDUCE_BUCKET == 500_000_000
    assert mem.gradients == ZERO_REDUCE_BUCKET * 2 + LORA_QV * 2 // 8
    # AdamW's two fp32 moments and the fp32 partition of the trainable parameters, this GPU's share.
    assert mem.optimizer == LORA_QV * 8 // 8 + LORA_QV * 4 // 8
    offload = _memory(gpus=8, shard="zero3", cpu_offload=True)
    assert offload.gradients == ZERO_REDUCE_BUCKET * 2  # the partitions live pinned on the host
    assert offload.host >= LORA_QV * 2 // 8 + LORA_QV * 4 // 8


def test_deepspeed_runs_the_model_in_bf16_without_autocast() -> None:
    # engine.py `_configure_distributed_model`: `self.module.bfloat16()` casts peft's fp32 adapters too, and
    # accelerate leaves torch autocast off under DeepSpeed; the fp32 copies are the optimizer's partitions.
    plan = peftplan.plan(LLAMA, methods="lora", seq_len=512, gpus=8, shard="zero3", method_config=QV,
                         fit_search=False)
    assert (plan.ctx.precision, plan.ctx.adapter_dtype) == ("pure", "dtype")
    assert plan.methods[0].memory.adapter == 2 * LORA_QV // 8


def test_autocast_under_deepspeed_is_refused_with_the_reason() -> None:
    with pytest.raises(BadInputError, match="DeepSpeed's engine .* without autocast"):
        peftplan.plan(LLAMA, methods="lora", gpus=8, shard="zero2", precision="mixed", fit_search=False)


def test_zero2_prices_fp32_partitions_the_backward_bucket_and_the_step_cast() -> None:
    full = peftplan.plan(LLAMA, methods="full", seq_len=512, gpus=2, shard="zero2", fit_search=False)
    mem = full.methods[0].memory
    assert mem.weights == 2 * TOTAL  # ZeRO-2 keeps whole bf16 weights
    # AdamW's two fp32 moments and the fp32 master partition, this GPU's share (the step peaks at the cast,
    # before AdamW's temporaries exist).
    assert mem.optimizer == TOTAL * 8 // 2 + TOTAL * 4 // 2
    # `flatten(averaged_gradients).to(fp32)`: the bf16 partition, its flat copy and the fp32 gradient at once.
    assert mem.gradients == TOTAL * (2 * 2 + 4) // 2
    # The reduce bucket (5e8 bf16 elements) exists from backward's start to its end: LoRA peaks there, with
    # no gradient of its own yet (the loss's backward), and the fp32 master and moments beside it.
    lora = peftplan.plan(LLAMA, methods="lora", seq_len=512, gpus=8, shard="zero2", method_config=QV,
                         fit_search=False).methods[0]
    assert lora.peak_moment == "loss-bwd"
    assert lora.memory.gradients == ZERO_REDUCE_BUCKET * 2
    assert lora.memory.optimizer == LORA_QV * 8 // 8 + LORA_QV * 4 // 8


def test_zero3_step_casts_a_sub_group_of_gradients_to_fp32() -> None:
    # `_prepare_fp32_grad_for_sub_group`: a flat bf16 copy of the partition's gradients and its fp32 cast, beside
    # the bucket and the bf16 partition buffer; full fine-tuning on 8 GPUs peaks there.
    full = peftplan.plan(LLAMA, methods="full", seq_len=512, gpus=8, shard="zero3", fit_search=False).methods[0]
    assert full.peak_moment == "optimizer"
    partition = TOTAL // 8
    assert full.memory.gradients == ZERO_REDUCE_BUCKET * 2 + TOTAL * 2 // 8 + partition * (2 + 4)
    assert full.memory.optimizer == TOTAL * 8 // 8 + TOTAL * 4 // 8


def test_zero_on_one_gpu_is_deepspeed_too() -> None:
    # ZeRO-Offload on one GPU runs the same engine: bf16 module, fp32 master, reduce bucket.
    plan = peftplan.plan(LLAMA, methods="lora", seq_len=512, gpus=1, shard="zero3", method_config=QV,
                         fit_search=False)
    assert plan.ctx.precision == "pure"
    assert plan.methods[0].memory.optimizer == LORA_QV * 8 + LORA_QV * 4


def test_deepspeed_undoes_peft_s_fp32_upcast_of_a_quantized_base() -> None:
    # `module.bfloat16()` casts every floating-point tensor: the norms, embeddings and head peft's k-bit
    # preparation upcast are bf16 again (the 4-bit weights are integers and stay as they are).
    hf = peftplan.plan(LLAMA, methods="qlora", seq_len=512, gpus=2, shard="zero2", fit_search=False)
    kept = peftplan.plan(LLAMA, methods="qlora", seq_len=512, gpus=2, shard="zero2", kbit_prep="none",
                         fit_search=False)
    assert hf.ctx.kbit_prep == "none"
    assert hf.methods[0].memory.weights == kept.methods[0].memory.weights
    with pytest.raises(BadInputError, match="--kbit-prep peft does not apply under --shard zero2"):
        peftplan.plan(LLAMA, methods="qlora", gpus=2, shard="zero2", kbit_prep="peft", fit_search=False)


def test_the_search_keeps_a_pinned_precision_off_deepspeed() -> None:
    # Sharding is searched (several GPUs, --shard not given), but DeepSpeed's engine would override a pinned
    # --precision mixed: its ZeRO variants are left out, and only then.
    from peftplan.planner.decide import Inputs, Search

    ctx = TrainContext(seq_len=512, gpus=8)

    def shards(pinned: frozenset[str]) -> set[str]:
        inputs = Inputs(spec=get_spec(LLAMA), chosen=[], ctx=ctx, budget=None, needs=None,  # type: ignore[arg-type]
                        pinned=pinned)  # `_variants` reads only `pinned`
        return {variant.shard for variant in Search()._variants(inputs, ctx, get_method("lora"))}

    assert "zero2" in shards(frozenset())
    assert shards(frozenset({"precision"})) == {"none", "fsdp"}
    assert "zero2" in shards(frozenset({"optimizer"}))


def test_bitsandbytes_constants_are_whole_on_every_gpu_torchao_nf4_sharded() -> None:
    single = peftplan.plan(LLAMA, methods="qlora", seq_len=512, fit_search=False).methods[0].memory
    fsdp = peftplan.plan(LLAMA, methods="qlora", seq_len=512, gpus=4, shard="fsdp",
                         fit_search=False).methods[0].memory
    assert fsdp.quant_constants == single.quant_constants  # quant_state is an attribute, not a Parameter
    torchtune = peftplan.plan(LLAMA, methods="qlora", seq_len=512, gpus=4, shard="fsdp", stack="torchtune",
                              fit_search=False).methods[0].memory
    tt_single = peftplan.plan(LLAMA, methods="qlora", seq_len=512, stack="torchtune",
                              fit_search=False).methods[0].memory
    assert torchtune.quant_constants == tt_single.quant_constants // 4


def test_unit_bytes_count_packed_4bit_blocks() -> None:
    spec = get_spec(LLAMA)
    method = get_method("qlora")
    ctx = TrainContext(gpus=2, shard="fsdp", kbit_prep="none")
    terms = method.memory_terms(spec, method.make_config(**QV))
    units = unit_bytes(spec, terms, ctx, 0, [])
    linears = BLOCK - 2 * 2048
    assert units.block == linears // 2 + 2 * 2048 * 2  # two 4-bit weights a byte; the norms in bf16
    assert units.root == 2 * ROOT  # embedding (tied head) and final norm stay bf16
    assert units.trained == 0
