"""Shared fixtures: tiny random models saved in the REAL file formats, and a GPU marker."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from dnabert_factory import make_dnabert_folder, real_tokenizer_path
from esm_factory import make_fair_esm_model

from virnucpro.models.formats import save_fair_esm_checkpoint, save_released_classifier

# The commands these tests start keep no bytecode in the user's cache (engine/bytecode.py has
# its own tests, which lift this).
os.environ.setdefault("VIRNUCPRO_KEEP_BYTECODE", "0")

TINY_DIM = 64  # both encoders: the classifier then takes 2 * 64 features


@dataclass(frozen=True)
class TinyModels:
    esm: Path  # fair-esm style .pt
    dnabert: Path  # HF folder: config.json + pytorch_model.bin + tokenizer.json
    classifier: Path  # whole pickled __main__.MLPClassifier
    classifier_state: dict  # its state dict, as the training script recorded it


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> TinyModels:
    root = tmp_path_factory.mktemp("tiny_models")
    esm_path = save_fair_esm_checkpoint(make_fair_esm_model(2, TINY_DIM, 4, seed=1), root / "esm.pt")
    tokenizer = "real" if real_tokenizer_path() is not None else "demo"
    dnabert = make_dnabert_folder(root / "dnabert", hidden=TINY_DIM, layers=2, heads=4,
                                  intermediate=128, seed=2, tokenizer=tokenizer)
    classifier, recorded = save_released_classifier(root / "clf", input_dim=2 * TINY_DIM,
                                                    hidden_dim=16, seed=3)
    return TinyModels(esm_path, dnabert, classifier, recorded["state_dict"])


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def virnucpro_log(caplog):
    """caplog for the 'virnucpro' logger, which stops propagating once the CLI configured it."""
    import logging

    logger = logging.getLogger("virnucpro")
    level, propagate = logger.level, logger.propagate
    logger.addHandler(caplog.handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # else caplog sees each record twice before the CLI ran
    yield caplog
    logger.removeHandler(caplog.handler)
    logger.setLevel(level)
    logger.propagate = propagate


@pytest.fixture(autouse=True)
def nothing_left_running():
    """Fail a test that leaves a worker process or a new non-daemon thread behind (tests/leaks.py)."""
    from leaks import left_running, live_threads

    before = live_threads()
    yield
    processes, threads = left_running(before)
    if not (processes or threads):
        return
    message = f"the test left running: {', '.join(map(repr, processes + threads))}"
    for process in processes:  # stopped here, so that the next test is not blamed for it
        process.kill()
        process.join()
    pytest.fail(message, pytrace=False)
