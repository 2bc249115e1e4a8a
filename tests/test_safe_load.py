"""safe_load: safe_torch_load on arbitrary bytes (whatever the content, a ModelError naming the
file: random bytes once made the unpickler raise IndexError / KeyError, ~8% of files, which
surfaced as a worker crash instead of a clear message), the safetensors reader, and the state
check every loader runs."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from virnucpro.errors import ModelError
from virnucpro.models.safe_load import check_state, read_safetensors, safe_torch_load


def test_random_bytes_are_always_a_model_error(tmp_path):
    rng = random.Random(1234)
    path = tmp_path / "garbage.pt"
    for _ in range(300):
        path.write_bytes(rng.randbytes(rng.choice([16, 512, 4096])))
        with pytest.raises(ModelError, match="garbage.pt"):
            safe_torch_load(path, what="test checkpoint")


# --- check_state: one check for all three loaders ----------------------------------------------


def _expected() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))


def test_a_matching_state_passes():
    module = _expected()
    check_state(module, module.state_dict(), Path("m.pt"), "test checkpoint", "the module")
    shapes = {name: tuple(t.shape) for name, t in module.state_dict().items()}
    check_state(shapes, module.state_dict(), Path("m.pt"), "test checkpoint", "the module")


def test_every_kind_of_mismatch_in_one_message():
    state = dict(_expected().state_dict())
    del state["0.bias"]
    state["2.weight"] = torch.zeros(3)
    state["1.weight"] = torch.zeros(5)
    with pytest.raises(ModelError) as error:
        check_state(_expected(), state, Path("/models/m.pt"), "test checkpoint", "a 4-3 MLP")
    assert str(error.value) == (
        "test checkpoint /models/m.pt does not match a 4-3 MLP: 1 missing tensor(s) (0.bias); "
        "1 unexpected tensor(s) (2.weight); 1 wrongly shaped tensor(s) (1.weight is (5,), expected (3,))"
    )


def test_long_lists_are_cut_and_non_tensors_named():
    expected = {f"w{i}": (2,) for i in range(8)}
    with pytest.raises(ModelError, match=r"8 missing tensor\(s\) \(w0, w1, w2, w3, w4, \.\.\.\)"):
        check_state(expected, {}, Path("m.pt"), "test checkpoint", "eight vectors")
    state = {f"w{i}": torch.zeros(2) for i in range(8)} | {"w3": [1.0, 2.0]}
    with pytest.raises(ModelError, match=r"w3 is a list, expected \(2,\)"):
        check_state(expected, state, Path("m.pt"), "test checkpoint", "eight vectors")


def test_unreadable_safetensors_names_the_file(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"<html>404 Not Found</html>")
    with pytest.raises(ModelError, match=r"test weights .*model\.safetensors is not a readable safetensors"):
        read_safetensors(path, "test weights")
    with pytest.raises(ModelError, match="nowhere.safetensors"):
        read_safetensors(tmp_path / "nowhere.safetensors", "test weights")
