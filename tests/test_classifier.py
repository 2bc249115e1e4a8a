"""MLPClassifier, class_probabilities and the classifier loader.

The oracle for the released format is the original object itself: a training-style script
run as `python script.py` (so its class really is `__main__.MLPClassifier`) pickles the whole
module, as VirNucPro's released 300_model.pth / 500_model.pth are, and records what that
module outputs in eval mode. The loader must give the same probabilities without running
any code from the pickle.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from malicious_pickles import PAYLOADS, WRITERS, write_pickle

from virnucpro.errors import ModelError
from virnucpro.models.classifier import MLPClassifier, class_probabilities
from virnucpro.models.classifier_loader import default_classifier_path, load_classifier
from virnucpro.models.formats import save_released_classifier


@pytest.fixture(scope="module")
def released(tmp_path_factory) -> tuple[Path, dict]:
    """(whole-module .pth written by a __main__ script, its recorded inputs/outputs)."""
    return save_released_classifier(tmp_path_factory.mktemp("released"))


def test_released_whole_module_pickle(released) -> None:
    model_file, expected = released
    names = torch.serialization.get_unsafe_globals_in_checkpoint(str(model_file))
    assert "__main__.MLPClassifier" in names  # the same kind of file as the released one
    model = load_classifier(model_file)
    assert type(model) is MLPClassifier and not model.training
    assert model.hidden_layer.in_features == 3328 and model.hidden_layer.out_features == 512
    # Same weights, same fp32 operations in the same order as the original object: the
    # results are bitwise equal in practice; 1e-7 allows one float32 ulp near 1.0.
    got = class_probabilities(model, expected["features"])
    torch.testing.assert_close(got, expected["probabilities"], rtol=0, atol=1e-7)
    assert got.dtype == torch.float32 and got.shape == (64, 2)


def test_plain_state_dict_and_wrappers(released, tmp_path: Path) -> None:
    _, expected = released
    original = load_classifier(released[0])
    state = original.state_dict()
    for name, content in [("plain.pth", state), ("wrapped.pth", {"state_dict": state}),
                          ("model.pth", {"model": state, "epoch": 7}),
                          ("dp.pth", {f"module.{k}": v for k, v in state.items()})]:
        torch.save(content, tmp_path / name)
        got = class_probabilities(load_classifier(tmp_path / name), expected["features"])
        torch.testing.assert_close(got, expected["probabilities"], rtol=0, atol=1e-7)


def test_dims_are_inferred(tmp_path: Path) -> None:
    small = MLPClassifier(40, 16, 2)
    torch.save(small.state_dict(), tmp_path / "small.pth")
    model = load_classifier(tmp_path / "small.pth")
    assert (model.hidden_layer.in_features, model.hidden_layer.out_features) == (40, 16)


def test_class_probabilities_basic() -> None:
    """Softmax rows sum to 1; BatchNorm uses running stats (eval) even on one row; N=0 ok."""
    model = MLPClassifier(8, 4, 2).train()
    one = class_probabilities(model, torch.randn(1, 8, dtype=torch.float64))
    assert not model.training and one.dtype == torch.float32
    torch.testing.assert_close(one.sum(dim=1), torch.ones(1), rtol=0, atol=1e-6)
    assert class_probabilities(model, torch.zeros(0, 8)).shape == (0, 2)


def test_default_path(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VIRNUCPRO_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_classifier_path(500) == tmp_path / "home" / "500_model.pth"
    monkeypatch.delenv("VIRNUCPRO_HOME")
    assert default_classifier_path(300) == tmp_path / "xdg" / "virnucpro" / "300_model.pth"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    assert default_classifier_path(500) == tmp_path / "user" / ".cache" / "virnucpro" / "500_model.pth"
    with pytest.raises(ValueError):
        default_classifier_path(400)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelError) as err:
        load_classifier(tmp_path / "500_model.pth")
    assert str(tmp_path / "500_model.pth") in str(err.value)
    assert "virnucpro models download" in str(err.value)


def test_corrupt_and_wrong_files(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"PK\x03\x04 definitely not a checkpoint")
    with pytest.raises(ModelError, match="garbage.pth"):
        load_classifier(garbage)

    cases = {
        "wrong_keys.pth": {"weight": torch.zeros(2, 2)},
        "three_class.pth": MLPClassifier(8, 4, 3).state_dict(),
        "list.pth": [1, 2, 3],
    }
    bad_shape = MLPClassifier(8, 4, 2).state_dict()
    bad_shape["bn1.running_mean"] = torch.zeros(5)
    cases["bad_shape.pth"] = bad_shape
    for name, content in cases.items():
        torch.save(content, tmp_path / name)
        with pytest.raises(ModelError, match=name.replace(".", r"\.")):
            load_classifier(tmp_path / name)


@pytest.mark.parametrize("payload", PAYLOADS)
@pytest.mark.parametrize("writer", WRITERS)
def test_malicious_pickle_is_refused(tmp_path: Path, payload: type, writer: str) -> None:
    target = tmp_path / "pwned"
    content = {**MLPClassifier(8, 4, 2).state_dict(), "extra": payload(target)}
    path = tmp_path / "500_model.pth"
    write_pickle(path, content, writer)
    with pytest.raises(ModelError, match=r"500_model\.pth"):
        load_classifier(path)
    assert not target.exists()


def test_malicious_class_in_a_module_pickle(tmp_path: Path) -> None:
    """A whole-module pickle whose submodule is some other class is refused too."""
    script = tmp_path / "evil.py"
    target = tmp_path / "pwned"
    script.write_text(textwrap.dedent(f"""
        import os, sys, torch, torch.nn as nn
        class Hook(nn.Module):
            def __reduce__(self):
                return (os.system, ("touch {target}",))
        class MLPClassifier(nn.Module):
            def __init__(self):
                super().__init__()
                self.hidden_layer = nn.Linear(8, 4)
                self.bn1 = nn.BatchNorm1d(4)
                self.dropout = Hook()
                self.output_layer = nn.Linear(4, 2)
        torch.save(MLPClassifier(), sys.argv[1])
    """))
    path = tmp_path / "300_model.pth"
    subprocess.run([sys.executable, str(script), str(path)], check=True, timeout=120)
    with pytest.raises(ModelError, match=r"300_model\.pth.*system"):
        load_classifier(path)
    assert not target.exists()
