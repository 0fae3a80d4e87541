"""Score `peftplan.plan` against published, measured GPU memory of real fine-tuning runs.

The rows are `../shared/measured/dev.csv` beside the project (read at run time, never copied): PEFT's
MetaMathQA suite and docs, the LLaMA-Factory wiki, Unsloth's benchmarks, torchtune's README and
tutorials, litgpt's config hub and resource tables. Each row gets a recipe below (`RECIPES`, keyed by
the row number): the model, method, stack and knobs the source's own code and config used, the sequence
length the peak is taken at, and which counter the figure is. Rows that cannot be planned are in
`UNPLANNABLE` with the reason; a row with neither is reported as such, never dropped.

Recipes state the row's settings as the source's config and code at the time of the measurement set
them (cited in each note); stack-wide behaviour is left to `--stack`, so the stack's defaults are what
gets scored. Knobs that this `peftplan.plan` does not accept yet are listed, not passed.

Comparisons:
- a measured peak: predicted `memory.peak_allocated` (torch max_memory_allocated, torchtune's peak
  active), `memory.reserved` (max_memory_reserved) or `memory.total` (VRAM, nvidia-smi, screenshots),
  in the source's unit (GiB or 1e9-byte GB); error = (predicted - measured) / measured;
- OOM: agrees when the plan's `total` does not fit the GPU profile the run used;
- FIT (the longest sequence that fits N GB): our longest fitting sequence at N GiB, searched with the
  analytic engine (to 0.1%); agrees within +-10% of the published length.

Usage: .venv/bin/python benchmarks/published_memory.py [--csv PATH] [--stack-aware | --hf-only] [--json OUT]
`--hf-only` plans every row on the `hf` stack with its default knobs (the state before stacks).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import math
import platform
import statistics
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CSV = ROOT.parent / "shared" / "measured" / "dev.csv"
UNIT_BYTES = {"GiB": 2**30, "GB": 10**9}
FIT_TOLERANCE = 0.10  # a FIT row agrees when our longest fitting sequence is within 10% of theirs
SEQ_SEARCH_MAX = 1 << 23  # beyond any model's position table: Unsloth trains past Llama 3.1's 131k


@dataclass(frozen=True)
class Recipe:
    """How one published row is planned.

    Attributes:
        compare: which plan figure the row measured (peak_allocated, reserved, total), or the outcome
            kind (oom: the run did not fit `gpu`; fit: `seq_len` is the longest that fits `vram` GiB).
        unit: GiB or GB (1e9 bytes), as the source divides.
        config: the method's settings (rank, alpha, targets, dropout, quant, virtual_tokens).
        knobs: stack knobs the row sets (the stack's own defaults are not repeated here).
        trainable: the trainable-parameter count the row's notes give, checked against the plan.
    """

    source: str
    model: str
    method: str
    stack: str
    seq_len: int
    batch_size: int
    compare: str
    unit: str
    seq_note: str
    note: str = ""
    gpus: int = 1
    shard: str = "none"
    gpu: str | None = None
    vram: float | None = None
    grad_checkpointing: bool = False
    optimizer: str = "adamw"
    dtype: str = "bf16"
    attention: str = "sdpa"
    config: dict[str, Any] = field(default_factory=dict)
    knobs: dict[str, Any] = field(default_factory=dict)
    trainable: int | None = None


QV = ["q_proj", "v_proj"]
QVO_MLP = ["q_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
QKVO_MLP = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
ALL_AND_HEAD = ["all-linear", "lm_head"]  # litgpt's query+key+value+projection+mlp+head


def litgpt_chunks(seq_len: int) -> int:
    """litgpt runs the LM head and cross-entropy on chunks of 128 positions (lm_head_chunk_size=128)."""
    return math.ceil(seq_len / 128)


# --- PEFT's MetaMathQA suite (method_comparison @5d602fdb, L40S): max_memory_reserved minus the
# pre-load baseline (init_accelerator, < 500 MiB before the model loads), GiB. Its own loop: bf16 base
# without autocast, fp32 adapters, `torch.optim.AdamW` (foreach) built by utils.py, not the Trainer's.
_SUITE = Recipe(
    source="PEFT MetaMathQA suite", model="meta-llama/Llama-3.2-3B", method="lora", stack="hf", seq_len=768,
    batch_size=4, compare="reserved", unit="GiB", grad_checkpointing=False,
    knobs={"precision": "pure", "adapter_dtype": "fp32", "optimizer_fused": False},
    seq_note="MetaMathQA truncated at max_seq_length 768; the longest batch reaches it",
    note="use_amp=False: bf16 base without autocast, peft's fp32 adapters (each casts its input to fp32); max over "
         "the run includes eval and generation; run.py empties the cache every 10 steps",
)
# --- PEFT's docs (accelerate/deepspeed.md, fsdp.md; examples/sft): per-GPU readings, GB.
_PEFT_DOCS = Recipe(
    source="PEFT docs", model="meta-llama/Llama-2-70b-hf", method="lora", stack="trl", seq_len=2048,
    batch_size=8, compare="total", unit="GB", grad_checkpointing=True, attention="flash",
    config={"rank": 8, "alpha": 16, "dropout": 0.1, "targets": ["all-linear"]},
    knobs={"packing": True, "loss": "full", "legacy_loss": True, "optimizer_fused": False},
    seq_note="SFTTrainer packing to max length 2048",
    note="2024 runs: TRL's loss was the model's, transformers < 4.45 (fp32 logits in the forward, a shifted copy)",
)
# --- LLaMA-Factory wiki "Performance comparison" (edited 2024-04-15): VRAM, GB (unstated; 1e9 taken).
# transformers 4.39 then: the loss in the model (`legacy_loss`) and the Trainer's `adamw_torch` (foreach).
_LF = Recipe(
    source="LLaMA-Factory wiki", model="meta-llama/Llama-2-7b-hf", method="lora", stack="llama-factory",
    seq_len=1024, batch_size=4, compare="total", unit="GB", grad_checkpointing=True,
    config={"rank": 8, "alpha": 16, "targets": ["all-linear"]}, knobs={"legacy_loss": True, "optimizer_fused": False},
    seq_note="cutoff_len 1024, taken as reached",
)
_LF_LONG = replace(_LF, method="qlora", batch_size=1, attention="flash",
                   seq_note="long-context table: sequences of this length")
_UNSLOTH_2024 = ("via LLaMA-Factory use_unsloth (Unsloth 2024-04: offloaded 'unsloth' checkpointing; its "
                 "Triton cross-entropy then held full bf16 logits, today's stack prices cut cross-entropy)")
# --- Unsloth docs, context-length benchmarks: the longest padded sequence that fits N GB.
_UNSLOTH = Recipe(
    source="Unsloth docs", model="meta-llama/Llama-3.1-8B", method="qlora", stack="unsloth", seq_len=1,
    batch_size=1, compare="fit", unit="GiB", grad_checkpointing=True, optimizer="adamw8bit", attention="flash",
    config={"rank": 32, "alpha": 32, "targets": ["all-linear"]},
    seq_note="sequences padded to this length (the published longest that fits)",
    note="Llama 3.1 8B Instruct (base shapes); optimizer not stated: Unsloth notebooks' adamw_8bit; "
         "'N GB' taken as N GiB of device memory",
)
# --- torchtune README "Memory and training speed" (30b8519e, 2024-09-24): bs 2, packed 2048, compile
# on; GiB (torchtune logs GiB since #1348, 2024-08-15).
_TT_README = Recipe(
    source="torchtune README", model="meta-llama/Llama-3.1-8B", method="lora", stack="torchtune", seq_len=2048,
    batch_size=2, compare="peak_allocated", unit="GiB", grad_checkpointing=True,
    knobs={"packing": True, "compile_loss": True},
    seq_note="packed to 2048",
)
_COUNTER = ("counter unnamed: the same README's flags table reports peak active; compile on (the loss's "
            "priced, the blocks' not)")
# --- torchtune README "Optimization flags" (1814feb1, 2024-11-18): Llama 3.2 3B, bs 2, max seq 4096,
# A100, peak memory active (GiB); techniques cumulative: the optimizer steps in backward only from the row
# "Fuse optimizer step into backward" on (row 208), so the rows above it set `optimizer_in_bwd` off against
# torchtune's full fine-tuning default.
_TT_FLAGS = replace(_TT_README, model="meta-llama/Llama-3.2-3B", method="full", seq_len=4096,
                    seq_note="packed to 4096")
# --- torchtune tutorials (2024-04): llama2/7B_lora_single_device; memory stats divided by 1e9 then.
_TT_TUTORIAL = Recipe(
    source="torchtune tutorials", model="meta-llama/Llama-2-7b-hf", method="lora", stack="torchtune",
    seq_len=1304, batch_size=2, compare="reserved", unit="GB", grad_checkpointing=True,
    config={"rank": 8, "alpha": 16, "dropout": 0.05, "targets": QV},
    knobs={"loss": "full", "loss_fp32": False, "optimizer_fused": False},  # `fused: True` came in cca50f02e, 2024-09
    seq_note="alpaca_cleaned unpacked, max_seq_len null: the longest sample; proxy 1304 (litgpt's "
             "longest Alpaca sample, Llama 2 tokenizer)",
)
# --- litgpt config hub README (HEAD 26857050): 1xA10G, bf16-true, Alpaca2k, max seq 512,
# torch.cuda.max_memory_allocated / 1e9.
_HUB = Recipe(
    source="litgpt config hub", model="meta-llama/Llama-2-7b-hf", method="lora", stack="litgpt", seq_len=512,
    batch_size=1, compare="peak_allocated", unit="GB", grad_checkpointing=False,
    config={"rank": 32, "alpha": 16, "dropout": 0.05, "targets": QV}, knobs={"loss_chunks": litgpt_chunks(512)},
    seq_note="Alpaca2k truncated at max_seq_length 512; the longest sample taken as reaching it",
)
_HUB_ALL = {"rank": 8, "alpha": 16, "dropout": 0.05, "targets": ALL_AND_HEAD}
_GEMMA = "config devices: 1 (the 4xA10G machine trains on one A10G); lora_dropout 0.1"
_UNTIED = "litgpt keeps a separate lm_head copy of the tied embedding"
# --- litgpt resource tables (lit-gpt 8641822, 2023-10, A100 40GB, bf16-true, Alpaca):
# max_memory_allocated / 1e9. The first iteration draws the longest sample (longest_seq_ix).
_TABLES = Recipe(
    source="litgpt resource tables", model="meta-llama/Llama-2-7b-hf", method="lora", stack="litgpt",
    seq_len=1304, batch_size=1, compare="peak_allocated", unit="GB", grad_checkpointing=False,
    config={"rank": 8, "alpha": 16, "dropout": 0.05, "targets": QV},
    knobs={"loss_chunks": litgpt_chunks(1304)}, trainable=4_194_304,
    seq_note="longest Alpaca sample: 1304 tokens (Llama 2), drawn at iteration 0",
    note="finetune/lora.py @8641822: lm_head_chunk_size=128 + chunked_cross_entropy",
)
# litgpt's QLoRA runs used bitsandbytes before 0.43.2 (8641822: `bitsandbytes` unpinned in requirements-all.txt,
# 0.41.1 in 2023-10; pyproject.toml `bitsandbytes==0.42.0` from 2024-03 to 2024-12-28), whose MatMul4Bit keeps
# each 4-bit Linear's input for as long as the graph (`bnb_keeps_input`); with `--quantize` the scripts use
# `bnb.optim.PagedAdamW` (finetune/lora.py, utils.py `instantiate_bnb_optimizer`).
_BNB_042 = {"bnb_keeps_input": True}
_STEADY = ("steady step: the previous full batch's kept inputs and logits beside this forward (litgpt's loop holds "
           "`logits`)")
_FIRST_STEP = ("published peak is iteration 0 (longest sample first, later ones shorter): no previous step's kept "
               "inputs there, the plan prices a steady step at this length")
_FSDP = ("devices > 1: FSDPStrategy(auto_wrap_policy={Block}, activation_checkpointing_policy={Block}), "
         "planned as FSDP + recompute")
_ABOVE_SHARD = ("; above the 1-GPU run (row 283): Lightning 2.1's FSDPStrategy sets use_orig_params=True (LoRA "
                 "and frozen weights in one FlatParameter per Block: block-sized gradients) and the 64 accumulation "
                 "micro-batches run under no_backward_sync (FSDP no_sync: unsharded gradients all step)")

RECIPES: dict[int, Recipe] = {
    16: replace(_SUITE, method="full", knobs={"precision": "pure", "optimizer_fused": False}, trainable=3_212_749_824,
                note="pure bf16 weights, grads and AdamW states (use_amp=False); run.py empties the cache "
                     "every 10 steps"),
    22: replace(_SUITE, method="ia3", config={"targets": ["k_proj", "v_proj", "down_proj"]}, trainable=286_720),
    27: replace(_SUITE, method="loha", config={"rank": 32, "alpha": 64, "targets": QV}, trainable=18_350_080),
    29: replace(_SUITE, config={"rank": 10, "alpha": 20, "targets": ["gate_proj", "up_proj", "down_proj"]},
                trainable=9_461_760),
    34: replace(_SUITE, config={"rank": 32, "alpha": 64, "targets": QV}, trainable=9_175_040),
    36: replace(_SUITE, config={"rank": 64, "alpha": 128, "targets": QV}, trainable=18_350_080),
    45: replace(_SUITE, method="prefix", config={"virtual_tokens": 200}, trainable=11_468_800),
    47: replace(_SUITE, method="prompt", config={"virtual_tokens": 200}, trainable=614_400),
    49: replace(_SUITE, method="prompt", config={"virtual_tokens": 200}, trainable=614_400),
    77: replace(_PEFT_DOCS, gpus=8, shard="zero3",
                note="run_peft_deepspeed.sh: ZeRO-3 without offload, DeepSpeed bf16 engine, GA 4; per-GPU "
                     "reading of an nvidia-smi screenshot"),
    81: replace(_PEFT_DOCS, method="qlora", batch_size=2, gpus=2, shard="fsdp",
                config={**_PEFT_DOCS.config, "quant": "nf4"},
                knobs={**_PEFT_DOCS.knobs, "kbit_prep": "none", "fsdp_no_sync": True},
                note="run_peft_qlora_fsdp.sh, fsdp_offload_params false; nested quant, bf16 quant storage; "
                     "TRL skips prepare_model_for_kbit_training for sharded QLoRA; GA 2 under accelerate's accumulate "
                     "(FSDP no_sync: the LoRA units' gradients unsharded)"),
    129: replace(_LF, note="HF backend (sdpa); LLaMA-Factory defaults: checkpointing, AdamW; GA 2; GPU not stated"),
    131: replace(_LF, stack="unsloth", attention="flash", note=_UNSLOTH_2024),
    133: replace(_LF, method="qlora", stack="unsloth", attention="flash", note=_UNSLOTH_2024),
    135: replace(_LF_LONG, seq_len=2048, note="HF backend + FlashAttention-2, GA 4"),
    137: replace(_LF_LONG, seq_len=8192, note="HF backend + FlashAttention-2, GA 4"),
    139: replace(_LF_LONG, seq_len=32768, note="HF backend + FlashAttention-2, GA 4"),
    141: replace(_LF_LONG, seq_len=100000, compare="oom", gpu="a100-40gb",
                 note="HF backend + FlashAttention-2 out of memory on an A100 40GB"),
    143: replace(_LF_LONG, stack="unsloth", seq_len=2048, note=_UNSLOTH_2024),
    145: replace(_LF_LONG, stack="unsloth", seq_len=8192, note=_UNSLOTH_2024),
    147: replace(_LF_LONG, stack="unsloth", seq_len=32768, note=_UNSLOTH_2024),
    149: replace(_LF_LONG, stack="unsloth", seq_len=100000, note=_UNSLOTH_2024),
    176: replace(_UNSLOTH, seq_len=2972, vram=8),
    178: replace(_UNSLOTH, seq_len=21848, vram=12),
    180: replace(_UNSLOTH, seq_len=40724, vram=16),
    182: replace(_UNSLOTH, seq_len=78475, vram=24),
    184: replace(_UNSLOTH, seq_len=153977, vram=40),
    186: replace(_UNSLOTH, seq_len=191728, vram=48),
    188: replace(_UNSLOTH, seq_len=342733, vram=80),
    190: replace(_UNSLOTH, model="meta-llama/Llama-3.1-70B", seq_len=12106, vram=48,
                 note="Llama 3.3 70B (Llama 3.1 70B shapes) on an A100 80GB capped at 48 GB; optimizer not "
                      "stated: adamw_8bit"),
    192: replace(_UNSLOTH, model="meta-llama/Llama-3.1-70B", seq_len=89389, vram=80,
                 note="Llama 3.3 70B (Llama 3.1 70B shapes) on an A100 80GB; optimizer not stated: adamw_8bit"),
    194: replace(_TT_README, method="full", optimizer="paged-adamw8bit",
                 knobs={"packing": True, "optimizer_in_bwd": True, "compile_loss": True},
                 note="8B_full_single_device: PagedAdamW8bit stepped in backward, AC, chunked CE; " + _COUNTER),
    196: replace(_TT_README, config={"rank": 8, "alpha": 16, "targets": QV},
                 note="8B_lora_single_device at the README's commit: q,v only (q,v,output_proj+MLP is the "
                      "config from e137afeb, 2024-11-07); " + _COUNTER),
    198: replace(_TT_README, method="qlora", config={"rank": 8, "alpha": 16, "targets": QKVO_MLP},
                 note="8B_qlora_single_device at the README's commit: q,k,v,output_proj + MLP; " + _COUNTER),
    201: replace(_TT_README, model="meta-llama/Llama-3.1-405B", method="qlora", gpus=8, shard="fsdp",
                 config={"rank": 16, "alpha": 32, "targets": QKVO_MLP},
                 knobs={"packing": True, "loss": "full", "loss_fp32": False, "compile_loss": True,
                        "optimizer_in_bwd": False},
                 note="405B_qlora: FSDP on 8 A100 80GB, nn.CrossEntropyLoss, q,k,v,output_proj + MLP; README "
                      "bs 2 (config 1); table says GB, torchtune logs GiB; " + _COUNTER),
    202: replace(_TT_FLAGS, seq_len=1304, grad_checkpointing=False,
                 knobs={"loss": "full", "loss_fp32": False, "optimizer_in_bwd": False},
                 seq_note="alpaca unpacked (max seq 4096 is a cap): the longest sample; proxy 1304 (litgpt's "
                          "longest Alpaca sample, Llama 2 tokenizer; Llama 3's gives fewer)",
                 note="Baseline: full_finetune_single_device, AdamW, nn.CrossEntropyLoss, no AC, no compile"),
    204: replace(_TT_FLAGS, grad_checkpointing=False,
                 knobs={"packing": True, "loss": "full", "loss_fp32": False, "compile_loss": True,
                        "optimizer_in_bwd": False},
                 note="+ packed + compile (the loss's priced, the blocks' not); AdamW, nn.CrossEntropyLoss on bf16 "
                      "logits, no AC"),
    206: replace(_TT_FLAGS, knobs={"packing": True, "loss": "chunked", "compile_loss": True, "optimizer_in_bwd": False},
                 note="+ chunked CE + activation checkpointing; AdamW; compile on"),
    208: replace(_TT_FLAGS, knobs={"packing": True, "loss": "chunked", "optimizer_in_bwd": True,
                                   "offload_activations": True, "compile_loss": True},
                 note="+ optimizer step in backward + activation offloading; AdamW; compile on"),
    210: replace(_TT_FLAGS, method="lora", config={"rank": 64, "alpha": 128, "targets": QVO_MLP},
                 knobs={"packing": True, "loss": "chunked", "offload_activations": True, "compile_loss": True},
                 note="3B_lora_single_device r64 q,v,output_proj + MLP; packed, compile, chunked CE, AC, "
                      "activation offloading, AdamW (no step in backward)"),
    212: replace(_TT_TUTORIAL,
                 note="lora_finetune.rst: q,v r8, nn.CrossEntropyLoss; 'Peak Memory' equals qlora_finetune.rst's "
                      "peak reserved for this config (15.57), so reserved"),
    214: replace(_TT_TUTORIAL, config={**_TT_TUTORIAL.config, "rank": 64, "alpha": 128},
                 note="lora_finetune.rst: q,v r64; counter read as reserved (see row 212)"),
    216: replace(_TT_TUTORIAL,
                 note="qlora_finetune.rst: peak reserved; the config at its commit (0914d5cf) is LoRA on q,v "
                      "only, not the row's q,v,output_proj + MLP"),
    218: replace(_TT_TUTORIAL, model="meta-llama/Llama-3.1-8B",
                 note="llama3.rst: llama3/8B_lora_single_device @20747cd8 (q,v r8, nn.CrossEntropyLoss); Llama 3 "
                      "8B shapes; counter unnamed, read as reserved like that week's tutorials"),
    220: replace(_HUB, model="tiiuae/falcon-7b", config={**_HUB.config, "targets": ["query_key_value"]},
                 note="q+v LoRA on Falcon's fused query_key_value, planned on the whole fused layer"),
    222: replace(_HUB, model="tiiuae/falcon-7b", method="qlora", config={**_HUB.config, "targets": ["query_key_value"]},
                 optimizer="paged-adamw", knobs={**_HUB.knobs, **_BNB_042},
                 note="bnb.nf4 (single quant; planned double-quant); q+v on the fused query_key_value; " + _STEADY),
    228: replace(_HUB, model="google/gemma-7b", compare="oom", gpu="a10g",
                 config={**_HUB_ALL, "rank": 16, "dropout": 0.1}, note=_GEMMA + "; " + _UNTIED),
    230: replace(_HUB, model="google/gemma-2-2b", batch_size=2, config={**_HUB_ALL, "dropout": 0.1},
                 note="gemma2-2b/lora.yaml (checkpoint google/gemma-2-2b); lora_dropout 0.1; " + _UNTIED),
    232: replace(_HUB, model="google/gemma-2-9b", compare="oom", gpu="a10g",
                 config={**_HUB_ALL, "rank": 16, "dropout": 0.1}, note=_GEMMA + "; " + _UNTIED),
    234: replace(_HUB, model="google/gemma-2-9b", method="qlora", config={**_HUB_ALL, "rank": 16, "dropout": 0.1},
                 optimizer="paged-adamw", knobs={**_HUB.knobs, **_BNB_042},
                 note="bnb.nf4 (single quant; planned double-quant); lora_dropout 0.1; " + _UNTIED + "; " + _STEADY),
    236: replace(_HUB, batch_size=2, note="llama-2-7b/lora.yaml"),
    238: replace(_HUB, method="qlora", batch_size=2, optimizer="paged-adamw", knobs={**_HUB.knobs, **_BNB_042},
                 note="bnb.nf4 (single quant; planned double-quant); " + _STEADY),
    240: replace(_HUB, model="meta-llama/Llama-3.1-8B", note="llama-3-8b/lora.yaml (Llama 3 8B = 3.1 shapes)"),
    242: replace(_HUB, model="meta-llama/Llama-3.1-8B", method="qlora", batch_size=2, optimizer="paged-adamw",
                 knobs={**_HUB.knobs, **_BNB_042},
                 note="llama-3-8b/qlora.yaml; bnb.nf4 (single quant; planned double-quant); " + _STEADY),
    244: replace(_HUB, model="meta-llama/Llama-3.1-8B", note="llama-3.1-8b/lora.yaml"),
    246: replace(_HUB, model="meta-llama/Llama-3.2-1B", method="full", batch_size=4, config={},
                 note="llama-3.2-1B/full.yaml: one device, AdamW; " + _UNTIED + "; unexplained: the figure is "
                      "below bf16 weights + grads + AdamW states (8 B/param, 9.9 GB)"),
    248: replace(_HUB, model="meta-llama/Llama-3.2-1B", method="qlora", batch_size=2, optimizer="paged-adamw",
                 knobs={**_HUB.knobs, **_BNB_042},
                 note="bnb.nf4 (single quant; planned double-quant); " + _UNTIED + "; " + _STEADY),
    250: replace(_HUB, model="meta-llama/Llama-3.2-3B", note="llama-3.2-3B/lora.yaml; " + _UNTIED),
    252: replace(_HUB, model="mistralai/Mistral-7B-v0.1", batch_size=2,
                 note="Mistral-7B-v0.2 has v0.1's parameter shapes (rope theta and window differ)"),
    254: replace(_HUB, model="mistralai/Mistral-7B-v0.1", method="qlora", batch_size=2, optimizer="paged-adamw",
                 knobs={**_HUB.knobs, **_BNB_042},
                 note="v0.2 = v0.1 shapes; bnb.nf4 (single quant; planned double-quant); " + _STEADY),
    256: replace(_HUB, model="mistralai/Mistral-7B-v0.1", batch_size=2,
                 note="config devices: 1 (the 4xA10G machine trains on one A10G)"),
    258: replace(_HUB, model="microsoft/phi-2", method="full", batch_size=4, config={}, gpus=2, shard="fsdp",
                 grad_checkpointing=True, knobs={**_HUB.knobs, "fsdp_no_sync": False},
                 note="phi-2/full.yaml devices: 2; global batch 8 = 2 devices x micro-batch 4: no gradient "
                      "accumulation, so no no_sync(); " + _FSDP),
    260: replace(_HUB, model="microsoft/phi-2", batch_size=4, config=_HUB_ALL,
                 note="config devices: 1 (the 4xA10G machine trains on one A10G)"),
    262: replace(_HUB, model="microsoft/Phi-3-mini-4k-instruct", method="full", batch_size=4, config={},
                 note="phi-3/full.yaml: one device, AdamW; unexplained: the figure is below bf16 weights + "
                      "grads + AdamW states (8 B/param, 30.6 GB, more than an A10G holds)"),
    264: replace(_HUB, model="microsoft/Phi-3-mini-4k-instruct", method="qlora", batch_size=4, config=_HUB_ALL,
                 optimizer="paged-adamw", knobs={**_HUB.knobs, **_BNB_042},
                 note="bnb.nf4 (single quant; planned double-quant); fused qkv_proj and gate_up_proj adapted whole; "
                      + _STEADY),
    270: replace(_HUB, model="TinyLlama/TinyLlama-1.1B-Chat-v1.0", method="full", batch_size=4, config={},
                 note="tiny-llama/full.yaml devices: 1 (TinyLlama-1.1B 3T base, same shapes)"),
    272: replace(_HUB, model="TinyLlama/TinyLlama-1.1B-Chat-v1.0", method="qlora", batch_size=8,
                 config={**_HUB_ALL, "rank": 32}, optimizer="paged-adamw", knobs={**_HUB.knobs, **_BNB_042},
                 note="bnb.nf4 (single quant; planned double-quant); " + _STEADY),
    283: replace(_TABLES),
    285: replace(_TABLES, method="qlora", optimizer="paged-adamw", knobs={**_TABLES.knobs, **_BNB_042},
                 note="bnb.nf4-dq; " + _TABLES.note + "; " + _FIRST_STEP + " (+1.94 GB)"),
    287: replace(_TABLES, batch_size=4, compare="oom", gpu="a100-40gb", note="micro-batch 4 out of memory"),
    289: replace(_TABLES, model="meta-llama/Llama-2-13b-hf", method="qlora", trainable=6_553_600,
                 optimizer="paged-adamw", knobs={**_TABLES.knobs, **_BNB_042},
                 note="bnb.nf4 (single quant; planned double-quant); " + _TABLES.note + "; " + _FIRST_STEP
                      + " (+3.05 GB)"),
    291: replace(_TABLES, model="meta-llama/Llama-2-13b-hf", batch_size=2, compare="oom", gpu="a100-40gb",
                 trainable=6_553_600, note="micro-batch 2 out of memory"),
    316: replace(_TABLES, gpus=2, shard="fsdp", grad_checkpointing=True, note=_FSDP + _ABOVE_SHARD),
    318: replace(_TABLES, batch_size=4, gpus=2, shard="fsdp", grad_checkpointing=True, note=_FSDP + _ABOVE_SHARD),
    322: replace(_TABLES, model="meta-llama/Llama-2-13b-hf", gpus=4, shard="fsdp", grad_checkpointing=True,
                 trainable=6_553_600,
                 note=_FSDP + "; above the 13B's whole bf16 weights (26 GB): Lightning 2.1's use_orig_params=True "
                      "(block-sized gradients) and 32 accumulation micro-batches under no_backward_sync (FSDP "
                      "no_sync: unsharded gradients all step)"),
}

UNPLANNABLE: dict[int, str] = {
    65: "VeLoRA doc's LoRA baseline: rank, targets, batch and GPU not stated, and the suite's own LoRA r32 "
        "q,v result (row 34) is 20.76 GiB, so this run's settings differ and cannot be reconstructed",
    325: "bf16-mixed keeps fp32 weights under bf16 autocast; peftplan's dtypes are 16-bit weights under "
         "autocast or fp32 without it (the same run in bf16-true is row 283)",
}


# ---------------------------------------------------------------------------------------------------
# Scoring


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def plan_kwargs(recipe: Recipe, *, stack_aware: bool, accepted: set[str]) -> tuple[dict[str, Any], list[str]]:
    """The keyword arguments of `peftplan.plan` for a recipe, and the knobs this plan() does not accept."""
    kwargs: dict[str, Any] = {
        "methods": recipe.method, "seq_len": recipe.seq_len, "batch_size": recipe.batch_size,
        "gpus": recipe.gpus, "shard": recipe.shard, "grad_checkpointing": recipe.grad_checkpointing,
        "optimizer": recipe.optimizer, "dtype": recipe.dtype, "attention": recipe.attention, "fit_search": False,
        "stack": recipe.stack if stack_aware else "hf",
    }
    if recipe.config:
        kwargs["method_config"] = dict(recipe.config)
    if recipe.gpu is not None:
        kwargs["gpu"] = recipe.gpu
    if recipe.vram is not None:
        kwargs["vram"] = recipe.vram
    missing: list[str] = []
    if stack_aware:
        for name, value in recipe.knobs.items():
            if name in accepted:
                kwargs[name] = value
            else:
                missing.append(name)
    return kwargs, missing


def longest_fitting(fits: Callable[[int], bool], guess: int, *, high: int = SEQ_SEARCH_MAX) -> int:
    """The longest n in [1, high] with `fits(n)` (monotone), to within 0.1%; 0 if none fits.

    The search starts at the published length and brackets it by doubling or halving, so a row costs
    a dozen plans rather than a search from 1.
    """
    good, bad = 0, high + 1  # fits(good) holds (0: nothing fits), fits(bad) does not
    probe = min(max(guess, 1), high)
    if fits(probe):
        good = probe
        while good < high:
            probe = min(2 * good, high)
            if not fits(probe):
                bad = probe
                break
            good = probe
    else:
        bad = probe
        while bad > 1:
            probe = bad // 2
            if fits(probe):
                good = probe
                break
            bad = probe
    from peftplan.planner.fit import bisect

    return bisect(fits, good, bad, relative=0.001)


def score_row(row: dict[str, str], recipe: Recipe, *, stack_aware: bool, accepted: set[str]) -> dict[str, Any]:
    """Plan one row and compare it with the published figure or outcome."""
    from peftplan.errors import PeftplanError

    kwargs, missing = plan_kwargs(recipe, stack_aware=stack_aware, accepted=accepted)
    result: dict[str, Any] = {
        "row": int(row["row"]), "source": recipe.source, "model": recipe.model, "method": recipe.method,
        "stack": recipe.stack, "planned_stack": kwargs["stack"], "compare": recipe.compare, "unit": recipe.unit,
        "setting": describe(recipe, kwargs), "seq_note": recipe.seq_note, "note": recipe.note,
        "knobs_not_accepted": missing,
    }
    try:
        return {**result, **compare(row, recipe, kwargs)}
    except PeftplanError as exc:
        return {**result, "status": "refused", "reason": f"plan refused: {exc}"}
    except Exception as exc:  # a planner bug must not hide the other rows; it is listed as failed
        return {**result, "status": "failed", "reason": f"plan failed: {type(exc).__name__}: {exc}"}


def compare(row: dict[str, str], recipe: Recipe, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The plan's figure or outcome next to the row's."""
    import peftplan

    plan = peftplan.plan(recipe.model, **kwargs)
    entry = plan.methods[0]
    memory = entry.memory
    unit = UNIT_BYTES[recipe.unit]
    result: dict[str, Any] = {"memory": memory.to_dict(), "trainable_params": entry.trainable_params}
    if recipe.trainable is not None:
        result["trainable_expected"] = recipe.trainable
    if recipe.compare == "oom":
        budget = plan.budget.vram_bytes
        return {**result, "status": "outcome", "kind": "oom", "gpu": recipe.gpu,
                "predicted": memory.total / unit, "budget": budget / unit, "agree": not entry.fits}
    if recipe.compare == "fit":
        def fits(seq: int) -> bool:
            return bool(peftplan.plan(recipe.model, **{**kwargs, "seq_len": seq}).methods[0].fits)

        ours = longest_fitting(fits, recipe.seq_len)
        ratio = ours / recipe.seq_len
        return {**result, "status": "outcome", "kind": "fit", "vram_gib": recipe.vram,
                "predicted_max_seq": ours, "published_max_seq": recipe.seq_len,
                "error_pct": 100 * (ratio - 1), "agree": abs(ratio - 1) <= FIT_TOLERANCE}
    measured = float(row["measured_gb"])
    predicted = getattr(memory, recipe.compare) / unit
    return {**result, "status": "scored", "predicted": predicted, "measured": measured,
            "error_pct": 100 * (predicted - measured) / measured}


def describe(recipe: Recipe, kwargs: dict[str, Any]) -> str:
    """One short line of what was planned: method settings, shape, GPUs, checkpointing, optimizer, knobs."""
    cfg = recipe.config
    parts = [recipe.method]
    if "rank" in cfg:
        parts.append(f"r{cfg['rank']}")
    if "targets" in cfg:
        parts.append("+".join(cfg["targets"]))
    if "virtual_tokens" in cfg:
        parts.append(f"{cfg['virtual_tokens']} tokens")
    text = " ".join(parts) + f"; {recipe.batch_size}x{recipe.seq_len}"
    if recipe.gpus > 1:
        text += f"; {recipe.gpus} GPUs {recipe.shard}"
    text += "; ckpt" if recipe.grad_checkpointing else "; no ckpt"
    text += f"; {recipe.optimizer}"
    if recipe.attention != "sdpa":
        text += f"; {recipe.attention}"
    knobs = [f"{k}={v}" for k, v in kwargs.items() if k in recipe.knobs]
    if knobs:
        text += "; " + ", ".join(knobs)
    return text


def score(csv_path: Path, *, stack_aware: bool = True) -> dict[str, Any]:
    """Every row of `csv_path` planned and compared; see `summarize` for the aggregate."""
    import peftplan

    accepted = set(peftplan.plan_options())
    rows = read_rows(csv_path)
    results: list[dict[str, Any]] = []
    for row in rows:
        number = int(row["row"])
        recipe = RECIPES.get(number)
        if number in UNPLANNABLE:
            results.append({"row": number, "source": row["source"], "model": row["model"],
                            "status": "unplannable", "reason": UNPLANNABLE[number]})
        elif recipe is None:
            results.append({"row": number, "source": row["source"], "model": row["model"],
                            "status": "unplannable", "reason": "no recipe for this row in benchmarks/published_memory.py"})
        else:
            results.append(score_row(row, recipe, stack_aware=stack_aware, accepted=accepted))
    return {"csv": str(csv_path), "mode": "stack-aware" if stack_aware else "hf-only", "rows": results,
            "summary": summarize(results)}


def _errors(rows: list[dict[str, Any]]) -> dict[str, Any]:
    errors = [r["error_pct"] for r in rows if r["status"] == "scored"]
    outcomes = [r for r in rows if r["status"] == "outcome"]
    return {
        "rows": len(rows),
        "scored": len(errors),
        "median_abs_pct": statistics.median(abs(e) for e in errors) if errors else None,
        "median_signed_pct": statistics.median(errors) if errors else None,
        "outcomes": len(outcomes),
        "outcomes_agree": sum(1 for r in outcomes if r["agree"]),
    }


def summarize(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts by status, errors overall and per source / stack / method, fit/no-fit agreement."""
    counts = {status: sum(1 for r in results if r["status"] == status)
              for status in ("scored", "outcome", "unplannable", "refused", "failed")}
    planned = [r for r in results if r["status"] in ("scored", "outcome")]
    groups: dict[str, dict[str, Any]] = {}
    for key in ("source", "stack", "method"):
        names = sorted({r[key] for r in planned})
        groups[key] = {name: _errors([r for r in planned if r[key] == name]) for name in names}
    outcomes = [r for r in results if r["status"] == "outcome"]
    mismatched = [
        {"row": r["row"], "expected": r["trainable_expected"], "planned": r["trainable_params"]}
        for r in planned if "trainable_expected" in r and r["trainable_expected"] != r["trainable_params"]
    ]
    return {
        "rows": len(results),
        "counts": counts,
        "overall": _errors(planned),
        "by": groups,
        "fit_agreement": {
            "agree": sum(1 for r in outcomes if r["agree"]),
            "total": len(outcomes),
            "oom": [sum(1 for r in outcomes if r["kind"] == "oom" and r["agree"]),
                    sum(1 for r in outcomes if r["kind"] == "oom")],
            "fit": [sum(1 for r in outcomes if r["kind"] == "fit" and r["agree"]),
                    sum(1 for r in outcomes if r["kind"] == "fit")],
        },
        "trainable_checked": sum(1 for r in planned if "trainable_expected" in r),
        "trainable_mismatches": mismatched,
        "knobs_not_accepted": sorted({k for r in planned for k in r.get("knobs_not_accepted", [])}),
    }


# ---------------------------------------------------------------------------------------------------
# Output


def versions() -> str:
    from importlib.metadata import version

    text = f"peftplan {version('peftplan')}"
    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "peftplan"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "", ""
    if commit:
        text += f" (git {commit}{', uncommitted changes in peftplan/' if dirty else ''})"
    return text + f", Python {platform.python_version()}; analytic engine (no torch import)"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:+.1f}"


def _abs(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def row_line(r: dict[str, Any]) -> str:
    head = f"| {r['row']} | {r['source']} | {r['model']} | {r['stack']} | {r['setting']} |"
    unit = r["unit"]
    if r["status"] in ("refused", "failed"):
        return f"{head} {r['compare']} | - | - | **{r['status']}** | {r['reason']} |"
    if r["status"] == "scored":
        return (f"{head} {r['compare']} | {r['predicted']:.2f} {unit} | {r['measured']:.2f} {unit} | "
                f"{r['error_pct']:+.1f}% | {r['note']} |")
    verdict = "agree" if r["agree"] else "**disagree**"
    if r["kind"] == "oom":
        return (f"{head} total vs {r['gpu']} | {r['predicted']:.2f} {unit} (GPU {r['budget']:.2f}) | OOM | "
                f"{verdict} | {r['note']} |")
    return (f"{head} longest seq at {r['vram_gib']:g} GiB | {r['predicted_max_seq']:,} | "
            f"{r['published_max_seq']:,} | {r['error_pct']:+.1f}% {verdict} | {r['note']} |")


def render(result: dict[str, Any]) -> str:
    summary = result["summary"]
    lines = [
        f"# Published GPU memory against `peftplan plan` ({result.get('date', datetime.date.today())}, "
        f"{result['mode']})",
        "",
        f"{result.get('versions') or versions()}; rows from {result['csv']}.",
        "Error = (predicted - measured) / measured in the source's unit (GiB = 2^30 bytes, GB = 1e9 bytes). "
        "OOM rows agree when the plan's total exceeds the GPU; FIT rows when our longest fitting sequence "
        f"is within +-{FIT_TOLERANCE:.0%} of the published one.",
    ]
    if result["mode"] == "hf-only":
        lines.append("hf-only: every row planned on the hf stack with its default knobs (the state before "
                     "stacks); the stack column is the row's own stack.")
    lines += [
        "",
        "| row | source | model | stack | planned | compares | predicted | measured | error / outcome | note |",
        "|---:|---|---|---|---|---|---:|---:|---:|---|",
    ]
    planned = [r for r in result["rows"] if r["status"] != "unplannable"]
    lines += [row_line(r) for r in planned]
    lines += ["", "## Rows not planned", "", "| row | source | model | reason |", "|---:|---|---|---|"]
    lines += [f"| {r['row']} | {r['source']} | {r['model']} | {r['reason']} |"
              for r in result["rows"] if r["status"] == "unplannable"]
    lines += ["", "## Sequence lengths taken", "", "| rows | seq | why |", "|---|---:|---|"]
    by_note: dict[str, list[dict[str, Any]]] = {}
    for r in planned:
        by_note.setdefault(r["seq_note"], []).append(r)
    for note, group in by_note.items():
        seqs = sorted({RECIPES[r["row"]].seq_len for r in group})
        seq = ", ".join(f"{n:,}" for n in seqs) if len(seqs) <= 2 else "the row's"
        lines.append(f"| {', '.join(str(r['row']) for r in group)} | {seq} | {note} |")
    for key, title in (("source", "source"), ("stack", "stack (the row's)"), ("method", "method")):
        lines += ["", f"## By {title}", "",
                  f"| {key} | rows | scored | median abs error % | median signed error % | outcomes agree |",
                  "|---|---:|---:|---:|---:|---:|"]
        for name, g in summary["by"][key].items():
            lines.append(f"| {name} | {g['rows']} | {g['scored']} | {_abs(g['median_abs_pct'])} | "
                         f"{_pct(g['median_signed_pct'])} | {g['outcomes_agree']}/{g['outcomes']} |")
    overall, fit, counts = summary["overall"], summary["fit_agreement"], summary["counts"]
    lines += [
        "",
        "## Summary",
        "",
        f"- rows: {summary['rows']} = {counts['scored']} measured peaks scored + {counts['outcome']} outcomes "
        f"(OOM/FIT) + {counts['unplannable']} not planned + {counts['refused']} refused by plan + "
        f"{counts['failed']} failed in plan",
        f"- overall median absolute error: {_abs(overall['median_abs_pct'])}% "
        f"(median signed {_pct(overall['median_signed_pct'])}%) over {overall['scored']} measured peaks",
        f"- fit/no-fit agreement: {fit['agree']}/{fit['total']} (OOM {fit['oom'][0]}/{fit['oom'][1]}, "
        f"FIT boundaries {fit['fit'][0]}/{fit['fit'][1]})",
    ]
    mismatches = summary["trainable_mismatches"]
    lines.append(f"- trainable-parameter counts checked against the notes: {summary['trainable_checked']}, "
                 + ("all match" if not mismatches else "mismatches: " + ", ".join(
                     f"row {m['row']} planned {m['planned']:,} vs {m['expected']:,}" for m in mismatches)))
    if summary["knobs_not_accepted"]:
        lines.append("- knobs the recipes set that this peftplan.plan does not accept (not passed): "
                     + ", ".join(summary["knobs_not_accepted"]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csv", type=Path, default=DEFAULT_CSV, help=f"the published rows (default {DEFAULT_CSV})")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--stack-aware", dest="stack_aware", action="store_true", default=True,
                      help="plan each row on its stack with its knobs (default)")
    mode.add_argument("--hf-only", dest="stack_aware", action="store_false",
                      help="plan every row on the hf stack with default knobs (the state before stacks)")
    parser.add_argument("--json", type=Path, help="also write the rows and summary as JSON to this file")
    args = parser.parse_args(argv)
    if not args.csv.is_file():
        print(f"error: {args.csv} does not exist (pass --csv PATH)", file=sys.stderr)
        return 2
    sys.path.insert(0, str(ROOT))
    result = score(args.csv, stack_aware=args.stack_aware)
    result = {"date": str(datetime.date.today()), "versions": versions(), **result}
    print(render(result))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
