"""safe_torch_load on arbitrary bytes: whatever the content, a ModelError naming the file
(random bytes once made the unpickler raise IndexError / KeyError, ~8% of files, which
surfaced as a worker crash instead of a clear message)."""

from __future__ import annotations

import random

import pytest

from virnucpro.errors import ModelError
from virnucpro.models.safe_load import safe_torch_load


def test_random_bytes_are_always_a_model_error(tmp_path):
    rng = random.Random(1234)
    path = tmp_path / "garbage.pt"
    for _ in range(300):
        path.write_bytes(rng.randbytes(rng.choice([16, 512, 4096])))
        with pytest.raises(ModelError, match="garbage.pt"):
            safe_torch_load(path, what="test checkpoint")
