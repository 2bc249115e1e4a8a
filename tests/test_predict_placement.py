"""ESM-2 put on its compute device tensor by tensor, with compilation beside reading and copying."""

from __future__ import annotations

import sys
import threading
import time

import pytest
import torch

from virnucpro.engine.background import QUICK_SWITCH_INTERVAL_S, quick_thread_switching
from virnucpro.models import demo
from virnucpro.models.esm2 import standard_inv_freq
from virnucpro.predict.placement import EsmOnDevice, esm_on_device

CPU = torch.device("cpu")


@pytest.fixture
def stored_fp16():
    """A demo ESM-2 as the released file keeps it: fp16 weights, fp32 rotary bits."""
    return demo.demo_esm().half()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_placed_weights_equal_a_plain_cast(stored_fp16, dtype):
    placed, seconds = esm_on_device(stored_fp16, CPU, dtype)
    expected = stored_fp16.to(dtype).state_dict()
    got = placed.state_dict()
    assert got.keys() == expected.keys() and seconds >= 0
    for name, tensor in got.items():
        assert tensor.dtype == expected[name].dtype and torch.equal(tensor, expected[name]), name
    assert not placed.training and not any(p.requires_grad for p in placed.parameters())
    assert placed is not stored_fp16


def test_while_copying_starts_before_the_weights_with_the_standard_rotary_tables(stored_fp16):
    """The thread beside gets the device module at once, before `fill` has any weights to
    copy (compiling starts while the checkpoint is still being read), with the standard
    rotary frequencies in place so a warm-up forward pass is well defined."""
    seen = {}
    started = threading.Event()
    release = threading.Event()

    def look(target):
        seen["module"] = target
        seen["bits"] = target.rotary.inv_freq_bits.clone()
        started.set()
        release.wait(10)

    placed = EsmOnDevice(stored_fp16.architecture, CPU, torch.float32, beside=look)
    assert started.wait(10), "the thread beside did not start before the weights were given"
    release.set()
    seconds = placed.fill(stored_fp16)
    assert seen["module"] is placed.module and seconds >= 0
    head_dim = stored_fp16.embed_dim // stored_fp16.attention_heads
    assert torch.equal(seen["bits"], standard_inv_freq(head_dim).view(torch.int32))
    for name, tensor in stored_fp16.float().state_dict().items():
        assert torch.equal(placed.module.state_dict()[name], tensor), name


def test_weights_of_another_shape_are_refused(stored_fp16):
    other = demo.demo_esm()
    placed = EsmOnDevice({**other.architecture, "num_layers": other.num_layers + 1}, CPU, torch.float32)
    with pytest.raises(ValueError, match="ESM-2 weights of"):
        placed.fill(stored_fp16)


def test_an_error_while_copying_reaches_the_caller(stored_fp16):
    def broken(target):
        raise RuntimeError("compiler exploded")

    with pytest.raises(RuntimeError, match="compiler exploded"):
        esm_on_device(stored_fp16, CPU, torch.float32, while_copying=broken)


def test_a_failed_copy_is_reported_not_the_threads_error(stored_fp16, monkeypatch):
    """When the copy itself fails (e.g. out of memory), that is the error the caller sees,
    even if the thread beside it failed too (it would, on half-copied weights)."""
    from virnucpro.predict import placement

    def failing_copy(source, target, device, quantised):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    def broken(target):
        raise RuntimeError("compiler exploded")

    monkeypatch.setattr(placement, "_copy_parameters", failing_copy)
    with pytest.raises(torch.OutOfMemoryError, match="simulated"):
        esm_on_device(stored_fp16, CPU, torch.float32, while_copying=broken)


def test_the_worker_starts_esm2_before_it_reads_the_other_models(tmp_path, monkeypatch):
    """Compiling ESM-2 (seconds) overlaps reading the models: make_frame_task starts the
    device module from the checkpoint's architecture before DNABERT-S is read, and the
    predictor it ends with computes with the loaded weights."""
    from virnucpro.config import RunConfig
    from virnucpro.models import bundle as bundle_module
    from virnucpro.predict import task

    order = []
    plain_start, plain_dnabert = task.start_esm, bundle_module.demo.demo_dnabert
    monkeypatch.setattr(task, "start_esm", lambda *a, **k: order.append("ESM-2 started") or plain_start(*a, **k))
    monkeypatch.setattr(bundle_module.demo, "demo_dnabert",
                        lambda *a: order.append("DNABERT-S read") or plain_dnabert(*a))
    made = task.make_frame_task(RunConfig(input=tmp_path / "unused.fa", demo=True), CPU)
    assert order == ["ESM-2 started", "DNABERT-S read"]
    loaded = demo.demo_esm().float().state_dict()
    for name, tensor in made.predictor.esm.state_dict().items():
        assert torch.equal(tensor, loaded[name]), name


def test_abandoning_waits_for_the_thread_and_keeps_the_callers_error(stored_fp16):
    """Reading the weights failed after compiling began: the thread is let finish (nothing
    keeps using the device behind the error) and its own failure does not replace it."""
    finished = threading.Event()

    def slow_then_broken(target):
        time.sleep(0.2)
        finished.set()
        raise RuntimeError("compiler exploded")

    placed = EsmOnDevice(stored_fp16.architecture, CPU, torch.float32, beside=slow_then_broken)
    placed.abandon()
    assert finished.is_set()
    placed.abandon()  # once is enough: a second call returns at once


def test_a_second_fill_does_not_wait_forever(stored_fp16):
    placed = EsmOnDevice(stored_fp16.architecture, CPU, torch.float32, beside=lambda target: None)
    placed.fill(stored_fp16)
    placed.fill(stored_fp16)
    assert placed.compile_seconds is not None


def test_a_module_started_for_other_settings_is_refused():
    from virnucpro.config import ModelPaths
    from virnucpro.models.bundle import load_bundle
    from virnucpro.predict.placement import place_predictor, start_esm
    from virnucpro.predict.precision import Precision

    bundle = load_bundle(ModelPaths(), 300, True)  # the demo models
    started = start_esm(bundle.esm.architecture, CPU, Precision.resolve("fp32", CPU))
    with pytest.raises(ValueError, match="started for"):
        place_predictor(bundle, CPU, Precision.resolve("bf16", CPU), esm=started)


def test_a_model_that_fails_to_load_after_esm2_started_is_the_error_reported(tmp_path, monkeypatch):
    from virnucpro.config import RunConfig
    from virnucpro.errors import ModelError
    from virnucpro.models import bundle as bundle_module
    from virnucpro.predict import task

    abandoned = []
    plain_start = task.start_esm

    def start(*args, **kwargs):
        started = plain_start(*args, **kwargs)
        plain_abandon = started.abandon
        started.abandon = lambda: abandoned.append(1) or plain_abandon()
        return started

    def broken(*args):
        raise ModelError("DNABERT-S file is corrupt (simulated)")

    monkeypatch.setattr(task, "start_esm", start)
    monkeypatch.setattr(bundle_module.demo, "demo_dnabert", broken)
    with pytest.raises(ModelError, match="simulated"):
        task.make_frame_task(RunConfig(input=tmp_path / "unused.fa", demo=True), CPU)
    assert abandoned == [1]


def test_threads_switch_quickly_while_esm2_compiles_beside_the_reading(stored_fp16):
    """Compiling is Python from end to end; at the default 5 ms switch interval the reading
    beside it waited that long at every torch call (benchmarks/gil_convoy.py). The thread
    lowers the interval while it runs, and the old value is back once it is done."""
    default = sys.getswitchinterval()
    seen = []
    placed = EsmOnDevice(stored_fp16.architecture, CPU, torch.float32,
                         beside=lambda target: seen.append(sys.getswitchinterval()))
    placed.fill(stored_fp16)
    assert seen and seen[0] < default and seen[0] <= QUICK_SWITCH_INTERVAL_S
    assert sys.getswitchinterval() == default


def test_overlapping_quick_switching_restores_the_interval_once_the_last_leaves():
    default = sys.getswitchinterval()
    with quick_thread_switching():
        with quick_thread_switching():
            assert sys.getswitchinterval() < default
        assert sys.getswitchinterval() < default
    assert sys.getswitchinterval() == default
