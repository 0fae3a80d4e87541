"""LiveBytes counts live storage bytes exactly, for real CPU tensors and for fake tensors alike."""

from __future__ import annotations

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from peftplan.planner.livebytes import LiveBytes, tensor_bytes


def test_alloc_view_free_real() -> None:
    with LiveBytes() as lb:
        x = torch.empty(1000)  # 4000 bytes
        assert lb.current == 4000
        v = x.view(10, 100)[2:]  # a view shares the storage: no new bytes
        assert lb.current == 4000
        y = x * 2
        assert lb.current == 8000
        del x
        assert lb.current == 8000  # the view keeps the storage alive
        del v
        assert lb.current == 4000
        del y
    assert lb.current == 0
    assert lb.peak == 8000


def test_fake_tensors_count_the_same_bytes() -> None:
    with FakeTensorMode(), LiveBytes() as lb:
        a = torch.empty(256, 128, dtype=torch.bfloat16)
        b = a @ a.t()  # 256 x 256 bf16
        assert lb.current == 256 * 128 * 2 + 256 * 256 * 2
        del a, b
    assert lb.current == 0
    assert lb.peak == 256 * 128 * 2 + 256 * 256 * 2


def test_track_counts_pre_existing_storages_once() -> None:
    w = torch.empty(100)
    lb = LiveBytes()
    lb.track([w, w.view(10, 10), w[5:]])
    assert lb.current == 400
    with lb:
        z = w + 1
        assert lb.current == 800
    del z
    assert lb.current == 400


def test_phases_and_peak_phase() -> None:
    with LiveBytes() as lb:
        with lb.phase("forward"):
            a = torch.empty(10)
        with lb.phase("backward"):
            b = torch.empty(100)
            del b
        lb.mark("optimizer")
        c = torch.empty(20)
    assert lb.peak == 440 and lb.peak_phase == "backward"
    assert lb.phase_peaks["forward"] == 40
    assert lb.phase_peaks["optimizer"] == 120
    del a, c


def test_granularity_rounds_each_storage() -> None:
    with LiveBytes(granularity=512) as lb:
        x = torch.empty(3)  # 12 bytes -> one 512-byte block
        y = torch.empty(200)  # 800 bytes -> 1024
        assert lb.current == 512 + 1024
    del x, y
    with pytest.raises(ValueError):
        LiveBytes(granularity=0)


def test_resize_in_place_is_remeasured() -> None:
    with LiveBytes() as lb:
        out = torch.empty(0)
        torch.add(torch.ones(50), 1, out=out)  # resizes `out` to 50 floats
        assert lb.current == 200
    del out


def test_peak_snapshot_holds_the_records_live_at_the_peak() -> None:
    with LiveBytes(snapshot_peak=True) as lb:
        with lb.scope("keep"):
            keep = torch.empty(10)
        with lb.scope("temp"):
            tmp = torch.empty(100)
        del tmp
        later = torch.empty(5)
    tags = sorted(r.tag for r in lb.peak_records)
    assert tags == ["keep", "temp"]
    assert sum(r.nbytes for r in lb.peak_records) == lb.peak == 440
    assert tensor_bytes([keep, keep[1:], later]) == 60


def _mlp_step() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.GELU(), torch.nn.Linear(64, 8))
    opt = torch.optim.AdamW(model.parameters())
    x = torch.randn(16, 32)
    for _ in range(2):
        model(x).square().mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    del x


def test_training_step_real_equals_fake() -> None:
    """The same small step run for real and under FakeTensorMode gives the same live-bytes peak."""

    def run(fake: bool) -> tuple[int, int]:
        lb = LiveBytes()
        if fake:
            with FakeTensorMode(), lb:
                _mlp_step()
        else:
            with lb:
                _mlp_step()
        return lb.peak, lb.current

    assert run(fake=False) == run(fake=True)


def test_phase_snapshots_hold_each_phase_peak() -> None:
    with LiveBytes(snapshot_peak=True) as lb:
        lb.mark("forward")
        saved = torch.empty(100)
        lb.mark("backward")  # only frees: its peak is where it started
        del saved
        grad = torch.empty(10)
    records = lb.phase_records
    assert [r.nbytes for r in records["forward"]] == [400]
    assert [r.nbytes for r in records["backward"]] == [400]
    assert lb.phase_peaks == {"forward": 400, "backward": 400}
    assert lb.peak_phase == "forward"
    del grad


def test_ignored_storages_are_never_counted() -> None:
    host = torch.zeros(())
    lb = LiveBytes()
    lb.ignore([host])
    with lb:
        host.add_(1)  # an in-place op returns the ignored storage
        x = torch.empty(4)
    assert lb.current == 16
    del x
