"""Replayed torch ops: what each one allocates and what autograd saves, under autocast or not.

The rules follow PyTorch: a matmul saves its input when the weight trains and the weight when the
input needs a gradient; an elementwise product saves each operand the other's gradient needs;
`x.to(dtype)` is free when the dtype does not change. Under autocast (bf16/fp16 training), matmuls
run on low-precision copies of their operands, and a trainable leaf weight's copy is cached for the
whole forward. On CUDA, autocast also runs a few ops (LayerNorm, pow, softmax) in fp32.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from peftplan.models.arch import Arch
from peftplan.replay.symbolic import Graph, Poly, Sym, const, positions, tokens
from peftplan.replay.terms import LinearAdapter, MemoryTerms

Device = Literal["cuda", "cpu"]
# Ops CUDA's autocast runs in fp32 (CPU's autocast keeps them in the input dtype).
_CUDA_FP32_OPS = frozenset({"layer_norm", "pow", "softmax", "log_softmax", "rsqrt"})


@dataclass(frozen=True)
class Weight:
    """A parameter (or buffer) a matmul or elementwise op reads."""

    numel: int
    itemsize: int
    trainable: bool
    key: str = ""  # identifies the tensor for autocast's cast cache


@dataclass(frozen=True)
class Replay:
    """Everything a block replay depends on besides the graph being filled.

    Attributes:
        low: autocast's itemsize (2 for bf16/fp16), or None when training in fp32 without autocast.
        base_itemsize: frozen, unquantized base parameters (fp32 on a bnb-quantized base, because
            peft's k-bit preparation upcasts them).
        train_itemsize: the base parameters that train (fp32 when the optimizer keeps fp32 masters).
        compute_itemsize: bitsandbytes' compute dtype for quantized Linears.
        extra: virtual tokens prepended to each sequence (prompt tuning).
        prefix: extra key/value positions per layer (prefix tuning).
    """

    arch: Arch
    terms: MemoryTerms
    low: int | None
    base_itemsize: int
    train_itemsize: int
    compute_itemsize: int
    device: Device
    attention: str
    extra: int = 0
    prefix: int = 0
    adapter_itemsize: int = 4  # peft keeps adapters in fp32; pure-precision stacks in the training dtype
    kbit_prep: str = "peft"
    bnb_keeps_input: bool = False  # a 4-bit Linear keeps its input until the graph is freed (`stacks.py`)
    dequant_extra: int = 0  # bytes per weight of the fp16 dequantized copy made before the cast (`bnb_fp16_state`)
    model_code: str = "transformers"  # whose block code to replay: transformers' or litgpt's (`planner/blocks.py`)

    def quantizes(self, name: str, role: str) -> bool:
        """Whether bitsandbytes stores this Linear quantized (see `planner/weights.quantized_linears`)."""
        if not self.quantized:
            return False
        return role != "output" or self.kbit_prep == "all-linear"

    def dequantized_bytes(self, numel: int) -> int:
        """Bytes of a 4-bit weight's dequantized temporaries (the compute-dtype copy, plus the fp16 one)."""
        return numel * (self.compute_itemsize + self.dequant_extra)

    def tok(self, width: int) -> Poly:
        return tokens(width, self.extra)

    def pos(self, width: int) -> Poly:
        return positions(width, self.extra)

    @property
    def eager(self) -> bool:
        """Whether attention runs transformers' `eager_attention_forward`: asked for, required by soft-capping,
        or the model's default because it does not support SDPA (gpt-oss, `Arch.sdpa`)."""
        a = self.arch
        return self.attention == "eager" or a.attn_softcap or (self.attention == "sdpa" and not a.sdpa)

    @property
    def trains_all(self) -> bool:
        return self.terms.trainable_base == "all"

    @property
    def trains_biases(self) -> bool:
        return self.terms.trainable_base in ("all", "biases")

    @property
    def quantized(self) -> bool:
        return self.terms.quant != "none"

    def adapter(self, name: str) -> LinearAdapter | None:
        return self.terms.linear_adapters.get(name)

    def param_itemsize(self, trainable: bool) -> int:
        return self.train_itemsize if trainable else self.base_itemsize


def promote(a: int, b: int) -> int:
    """Result itemsize of an elementwise op between float tensors (bf16 with fp32 gives fp32)."""
    return max(a, b)


class Ops:
    """Replays ops into a `Graph` under one `Replay` setting."""

    def __init__(self, replay: Replay, graph: Graph) -> None:
        self.r = replay
        self.g = graph
        self._cast_cache: dict[str, Sym] = {}
        self.held: tuple[Sym, ...] = ()  # tensors the model's forward keeps alive throughout (embeddings)

    @property
    def cached_casts(self) -> Poly:
        """Bytes of autocast's cached copies of trainable leaf weights: alive until the forward ends."""
        total = Poly()
        for copy in self._cast_cache.values():
            total = total + copy.storage_bytes
        return total

    # -- tensors and casts ---------------------------------------------------------------------------
    def fresh(self, numel: Poly, itemsize: int, grad: bool) -> Sym:
        return self.g.created(Sym.fresh(numel, itemsize, grad))

    def tok(self, width: int, itemsize: int, grad: bool) -> Sym:
        return self.fresh(self.r.tok(width), itemsize, grad)

    def cast(self, x: Sym, itemsize: int) -> Sym:
        """`x.to(dtype)`: free when the dtype does not change."""
        return x if itemsize == x.itemsize else self.fresh(x.numel, itemsize, x.grad)

    def autocast_in(self, x: Sym) -> Sym:
        """The operand a low-precision autocast op actually reads."""
        return self.cast(x, self.r.low) if self.r.low is not None else x

    def fp32_op_in(self, x: Sym, op: str) -> Sym:
        """The operand of an op CUDA autocast runs in fp32."""
        if self.r.low is not None and self.r.device == "cuda" and op in _CUDA_FP32_OPS:
            return self.cast(x, 4)
        return x

    def weight_operand(self, w: Weight) -> Sym | None:
        """What a matmul reads for `w`: None if the parameter itself (no new bytes), else its autocast copy."""
        low = self.r.low
        if low is None or w.itemsize == low:
            return None
        if w.trainable and w.key:  # autocast caches casts of trainable leaf tensors for the forward
            cached = self._cast_cache.get(w.key)
            if cached is None:
                cached = self._cast_cache[w.key] = Sym.fresh(const(w.numel), low, True)
            return cached
        return Sym.fresh(const(w.numel), low, w.trainable)

    # -- compute ops ---------------------------------------------------------------------------------
    def matmul(self, x: Sym, w: Weight, out_width: int, *, bias_trainable: bool = False) -> Sym:
        """`F.linear(x, w)` over tokens: saves x if w trains, w's copy if x needs a gradient."""
        xa = self.autocast_in(x)
        wa = self.weight_operand(w)
        if w.trainable:
            self.g.save(xa)
        if xa.grad and wa is not None:
            self.g.save(wa)
        itemsize = self.r.low if self.r.low is not None else promote(x.itemsize, w.itemsize)
        return self.tok(out_width, itemsize, x.grad or w.trainable or bias_trainable)

    def matmul_sym(self, x: Sym, w: Sym, out_width: int) -> Sym:
        """`F.linear(x, w)` where `w` is computed in the step (e.g. LoHa's delta weight)."""
        xa = self.autocast_in(x)
        wa = self.autocast_in(w)
        if w.grad:
            self.g.save(xa)
        if xa.grad:
            self.g.save(wa)
        itemsize = self.r.low if self.r.low is not None else promote(x.itemsize, w.itemsize)
        return self.tok(out_width, itemsize, x.grad or w.grad)

    def mul(self, a: Sym, b: Sym, *, track: bool = True) -> Sym:
        """Elementwise product of two activations. `track` False: its size does not set the block's backward
        temporaries (the caller prices its backward with `Graph.backward_moment`)."""
        if a.grad:
            self.g.save(b)
        if b.grad:
            self.g.save(a)
        out = Sym.fresh(a.numel, promote(a.itemsize, b.itemsize), a.grad or b.grad)
        return self.g.created(out) if track else out

    def mul_param(self, x: Sym, w: Weight) -> Sym:
        """Elementwise product with a parameter vector (norm weight, IA3 or VeRA scale)."""
        if w.trainable:
            self.g.save(x)
        return self.fresh(x.numel, promote(x.itemsize, w.itemsize), x.grad or w.trainable)

    def pointwise(self, x: Sym, itemsize: int | None = None) -> Sym:
        """A new tensor like x from an op that saves nothing (add, scale by a constant, cat...)."""
        return self.fresh(x.numel, itemsize or x.itemsize, x.grad)

    def add(self, a: Sym, b: Sym) -> Sym:
        return self.fresh(a.numel, promote(a.itemsize, b.itemsize), a.grad or b.grad)

    def act(self, x: Sym, name: str) -> Sym:
        """An activation function; composite Python GELUs save several tensors."""
        if name in ("gelu_new", "gelu_fast"):
            return self._python_gelu(x)
        out = self.fresh(x.numel, x.itemsize, x.grad)
        if x.grad:
            self.g.save(out if name in ("relu", "sigmoid") else x)  # relu's and sigmoid's backward read the output
        return out

    def _python_gelu(self, x: Sym) -> Sym:
        # 0.5 * x * (1 + tanh(c * (x + 0.044715 * x**3))): pow saves x, tanh its output, the final
        # product both of its operands (0.5 * x and 1 + tanh).
        xp = self.fp32_op_in(x, "pow")
        cube = self.fresh(x.numel, xp.itemsize, x.grad)
        inner = self.fresh(x.numel, promote(x.itemsize, cube.itemsize), x.grad)
        th = self.fresh(x.numel, inner.itemsize, x.grad)
        one_plus = self.fresh(x.numel, th.itemsize, x.grad)
        half = self.fresh(x.numel, x.itemsize, x.grad)
        if x.grad:
            self.g.save(xp, th, one_plus, half)
        del cube
        return self.fresh(x.numel, promote(half.itemsize, one_plus.itemsize), x.grad)

    def dropout(self, x: Sym, p: float) -> Sym:
        """Training-mode dropout: CUDA keeps a bool mask, CPU a float noise tensor."""
        if p <= 0.0:
            return x
        if x.grad:
            self.g.save(self.fresh(x.numel, 1 if self.r.device == "cuda" else x.itemsize, False))
        return self.fresh(x.numel, x.itemsize, x.grad)

    # -- norms ---------------------------------------------------------------------------------------
    def rms_norm(self, x: Sym, width: int, key: str, *, rows: Poly | None = None) -> Sym:
        """Llama's RMSNorm: fp32 statistics, then `weight * normed.to(input_dtype)`."""
        trainable = self.r.trains_all
        x32 = self.cast(x, 4)
        rows = rows if rows is not None else self.r.tok(1)
        if x.grad:
            self.g.save(x32, self.fresh(rows, 4, True))  # pow and mul save x; mul saves rsqrt
        normed = self.cast(self.fresh(x.numel, 4, x.grad), x.itemsize)
        return self.mul_param(normed, Weight(width, self.r.param_itemsize(trainable), trainable, key))

    def rms_norm_gemma(self, x: Sym, width: int, key: str) -> Sym:
        """Gemma's RMSNorm: `(normed * (1 + weight)).type_as(x)`, all in fp32."""
        trainable = self.r.trains_all
        x32 = self.cast(x, 4)
        if x.grad:
            self.g.save(x32, self.fresh(self.r.tok(1), 4, True))
        normed = self.fresh(x.numel, 4, x.grad)
        scaled = self.mul_param(normed, Weight(width, 4, trainable, key))
        return self.cast(scaled, x.itemsize)

    def layer_norm(self, x: Sym, key: str) -> Sym:
        """`F.layer_norm`: saves its input and the per-row mean and rstd."""
        trainable = self.r.trains_all or self.r.trains_biases
        xin = self.fp32_op_in(x, "layer_norm")
        stats = 4 if self.r.device == "cuda" else xin.itemsize  # CPU keeps mean/rstd in the input dtype
        if x.grad or trainable:
            self.g.save(xin, self.fresh(self.r.tok(2), stats, True))
        return self.fresh(x.numel, xin.itemsize, x.grad or trainable)

    def norm(self, x: Sym, width: int, key: str) -> Sym:
        kind = self.r.arch.norm
        if kind == "layer":
            return self.layer_norm(x, key)
        if kind == "rms_gemma":
            return self.rms_norm_gemma(x, width, key)
        return self.rms_norm(x, width, key)

    def bottleneck(self, hidden: Sym, width: int, size: int, activation: str, key: str) -> Sym:
        """A Houlsby bottleneck after a sublayer: `h + up(act(down(h.to(fp32)))).to(h.dtype)`."""
        h32 = self.cast(hidden, 4)
        down = self.matmul(h32, Weight(width * size, 4, True, key + ".down"), size, bias_trainable=True)
        act = self.act(down, activation)
        up = self.matmul(act, Weight(size * width, 4, True, key + ".up"), width, bias_trainable=True)
        return self.add(hidden, self.cast(up, hidden.itemsize))

    # -- the weight of one Linear --------------------------------------------------------------------
    def linear_weight(self, name: str, in_features: int, out_features: int) -> Weight:
        trainable = self.r.trains_all
        return Weight(in_features * out_features, self.r.param_itemsize(trainable), trainable, name)

    def positions(self, width: int, itemsize: int) -> Sym:
        return Sym.fresh(self.r.pos(width), itemsize, False)
