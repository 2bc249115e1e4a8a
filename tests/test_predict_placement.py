"""ESM-2 put on its compute device tensor by tensor, with compilation beside the copy."""

from __future__ import annotations

import pytest
import torch

from virnucpro.models import demo
from virnucpro.predict.placement import esm_on_device

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


def test_while_copying_gets_the_device_module_with_its_rotary_tables_in_place(stored_fp16):
    seen = {}

    def look(target):
        seen["module"] = target
        seen["bits"] = target.rotary.inv_freq_bits.clone()

    placed, _ = esm_on_device(stored_fp16, CPU, torch.float32, while_copying=look)
    assert seen["module"] is placed
    assert torch.equal(seen["bits"], stored_fp16.rotary.inv_freq_bits)  # before any forward pass


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
