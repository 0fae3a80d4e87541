"""Count live tensor storage bytes, and their peak, while torch runs: real CPU tensors or fake ones.

`LiveBytes` is a `TorchDispatchMode`. Every aten op's output storages are recorded once, keyed by the
storage object, and forgotten when a weakref on `untyped_storage()` reports the storage freed. Views
share their base's storage, so they cost nothing; in-place resizes are re-measured. Under
`FakeTensorMode` no memory exists, yet the same bookkeeping gives the exact allocated bytes the real
step would hold, which is what the traced memory engine relies on (see docs/trace.md).

API:
    lb = LiveBytes(granularity=1, snapshot_peak=False)
    lb.track(tensors) / lb.track_module(module)  # count storages that existed before (weights, grads, states)
    lb.ignore(tensors)                           # never count these storages
    with lb.uncounted(): ...                     # storages first seen inside are never counted (host copies)
    lb.categorize(tensors, "gradients")          # label live storages (the label outlives the storage)
    with lb:                                     # enter the mode (inside FakeTensorMode for a fake trace)
        with lb.phase("forward"): ...            # optional phase marks; `lb.mark("loss")` without a block
        with lb.scope("model.layers.0.mlp"): ... # optional tag recorded with each new storage
    lb.current, lb.peak                          # live bytes now; the highest value seen since reset_peak()
    lb.peak_phase, lb.phase_peaks                # phase at the peak; highest live bytes per phase
    lb.peak_records, lb.phase_records            # with snapshot_peak: the Records live at the (phase) peaks
    lb.reset_peak()                              # peak := current (e.g. after a warm-up step)

`granularity` rounds every storage up to a multiple of it: 512 mimics the CUDA caching allocator's
block rounding that `torch.cuda.memory_allocated()` reports; 1 counts exact bytes. Storages the mode
never saw (created before it was entered and not passed to `track`) are not counted.
"""

from __future__ import annotations

import itertools
import weakref
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torch.utils._python_dispatch import TorchDispatchMode

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["LiveBytes", "Record", "storage_of", "tensor_bytes"]

_serial = itertools.count()


@dataclass(eq=False)
class Record:
    """One live storage: its (rounded) bytes, the phase and scope tag current when it appeared."""

    nbytes: int
    phase: str
    tag: str
    ref: weakref.ref[Any]
    serial: int
    category: str = ""  # set by `LiveBytes.categorize`: what the storage was, even once it is freed

    def storage(self) -> Any:
        """The storage object, or None once it has been freed."""
        return self.ref()


def storage_of(tensor: Any) -> Any:
    """`tensor.untyped_storage()`, or None for tensors without one (sparse, nested, non-tensors)."""
    import torch

    if not isinstance(tensor, torch.Tensor):
        return None
    try:
        return tensor.untyped_storage()
    except (RuntimeError, NotImplementedError, TypeError):
        return None


class LiveBytes(TorchDispatchMode):
    """A dispatch mode that keeps `current` and `peak` live storage bytes (see the module docstring)."""

    def __init__(self, *, granularity: int = 1, snapshot_peak: bool = False) -> None:
        super().__init__()
        if granularity < 1:
            raise ValueError(f"granularity must be >= 1, got {granularity!r}")
        self.granularity = granularity
        self.snapshot_peak = snapshot_peak
        self.current = 0
        self.peak = 0
        self.peak_phase = ""
        self.phase_peaks: dict[str, int] = {}
        self.current_phase = ""
        self.tag = ""
        self._live: dict[int, Record] = {}
        self._ignored: dict[int, weakref.ref[Any]] = {}
        self._phase_records: dict[str, list[Record]] = {}
        self._unsnapped: str | None = None  # a phase whose latest peak has no snapshot yet
        self._uncounted = 0  # depth of `uncounted()` scopes

    # -- bookkeeping ---------------------------------------------------------------------------------
    def _round(self, nbytes: int) -> int:
        g = self.granularity
        return -(-nbytes // g) * g

    def _add(self, storage: Any) -> None:
        key = id(storage)
        nbytes = self._round(int(storage.nbytes()))
        if key in self._ignored:
            return
        record = self._live.get(key)
        if record is None and self._uncounted:
            self._ignore_key(key, storage)
            return
        if record is not None:
            if record.nbytes != nbytes:  # resized in place (out= ops, resize_)
                self._change(nbytes - record.nbytes)
                record.nbytes = nbytes
            return
        if nbytes == 0:
            return
        ref = weakref.ref(storage, self._finalizer(key))
        self._live[key] = Record(nbytes, self.current_phase, self.tag, ref, next(_serial))
        self._change(nbytes)

    def _finalizer(self, key: int) -> Any:
        def freed(_: Any) -> None:
            record = self._live.get(key)
            if record is None:
                return
            self._change(-record.nbytes, drop=key)

        return freed

    def _change(self, delta: int, drop: int | None = None) -> None:
        if delta < 0 and self._unsnapped is not None:
            self._snapshot()  # the state just before the first decrease after a peak is that peak
        if drop is not None:
            del self._live[drop]
        self.current += delta
        self._raise_peaks()

    def _raise_peaks(self) -> None:
        phase = self.current_phase
        if self.current > self.phase_peaks.get(phase, -1):
            self.phase_peaks[phase] = self.current
            if self.snapshot_peak:
                self._unsnapped = phase
        if self.current > self.peak:
            self.peak = self.current
            self.peak_phase = phase

    def _snapshot(self) -> None:
        if self._unsnapped is not None:
            self._phase_records[self._unsnapped] = list(self._live.values())
            self._unsnapped = None

    # -- public API ----------------------------------------------------------------------------------
    def track(self, tensors: Iterable[Any]) -> None:
        """Count storages that already exist (e.g. weights, gradients, optimizer states)."""
        for tensor in tensors:
            storage = storage_of(tensor)
            if storage is not None:
                self._add(storage)

    def ignore(self, tensors: Iterable[Any]) -> None:
        """Never count these storages (e.g. tensors a CUDA run would keep on the host)."""
        for tensor in tensors:
            storage = storage_of(tensor)
            if storage is None:
                continue
            key = id(storage)
            record = self._live.get(key)
            if record is not None:
                self._change(-record.nbytes, drop=key)
            self._ignore_key(key, storage)

    def _ignore_key(self, key: int, storage: Any) -> None:
        self._ignored[key] = weakref.ref(storage, self._unignore(key))

    @contextmanager
    def uncounted(self) -> Iterator[None]:
        """Storages first seen inside this scope are never counted.

        For copies that a GPU run keeps on the host (offloaded activations) when host and device are the
        same CPU: they are made for real, so that the device tensors they replace can be freed, but they
        are not device memory. What is copied back to the device afterwards is counted as usual.
        """
        self._uncounted += 1
        try:
            yield
        finally:
            self._uncounted -= 1

    def categorize(self, tensors: Iterable[Any], category: str) -> None:
        """Label the live records of these storages (e.g. gradients stepped and freed inside backward)."""
        for tensor in tensors:
            storage = storage_of(tensor)
            record = self._live.get(id(storage)) if storage is not None else None
            if record is not None:
                record.category = category

    def _unignore(self, key: int) -> Any:
        def freed(_: Any) -> None:
            self._ignored.pop(key, None)

        return freed

    def track_module(self, module: nn.Module) -> None:
        """Count a module's parameters, buffers and existing gradients."""
        self.track(module.parameters())
        self.track(module.buffers())
        self.track(p.grad for p in module.parameters() if p.grad is not None)

    def mark(self, phase: str) -> None:
        """Enter `phase` (e.g. forward, loss, backward, optimizer) until the next mark."""
        if phase == self.current_phase:
            return
        self._snapshot()
        self.current_phase = phase
        self._raise_peaks()

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        previous = self.current_phase
        self.mark(name)
        try:
            yield
        finally:
            self.mark(previous)

    @contextmanager
    def scope(self, tag: str) -> Iterator[None]:
        previous, self.tag = self.tag, tag
        try:
            yield
        finally:
            self.tag = previous

    def reset_peak(self) -> None:
        """Start peak tracking afresh from the current live bytes."""
        self.peak = 0
        self.phase_peaks = {}
        self._phase_records = {}
        self._unsnapped = None
        self._raise_peaks()

    @property
    def peak_records(self) -> list[Record]:
        """The records live at the peak (needs `snapshot_peak=True`)."""
        return self.phase_records.get(self.peak_phase, [])

    @property
    def phase_records(self) -> dict[str, list[Record]]:
        """For each phase, the records live at that phase's peak (needs `snapshot_peak=True`)."""
        self._snapshot()
        return self._phase_records

    def live_records(self) -> list[Record]:
        return list(self._live.values())

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        from torch.utils._pytree import tree_leaves

        out = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(out):
            storage = storage_of(leaf)
            if storage is not None:
                self._add(storage)
        return out


def tensor_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind `tensors` (exact, unrounded)."""
    seen: dict[int, int] = {}
    for tensor in tensors:
        storage = storage_of(tensor)
        if storage is not None:
            seen[id(storage)] = int(storage.nbytes())
    return sum(seen.values())
