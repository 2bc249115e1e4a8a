"""Pickle payloads that would run code if a model file were unpickled without restrictions:
each loader test saves one inside a model file and checks it is refused and nothing ran."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import torch


class CreatesFile:
    """Unpickling this calls open(target, "w")."""

    def __init__(self, target: Path) -> None:
        self.target = str(target)

    def __reduce__(self):
        return (open, (self.target, "w"))


class RunsShell:
    """Unpickling this runs a shell command that creates target."""

    def __init__(self, target: Path) -> None:
        self.target = str(target)

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


PAYLOADS = [CreatesFile, RunsShell]
WRITERS = ["torch.save", "pickle.dump"]


def write_pickle(path: Path, content: object, writer: str) -> None:
    """Save content as torch.save does (zip) or as a plain pickle stream."""
    with open(path, "wb") as handle:
        if writer == "torch.save":
            torch.save(content, handle)
        else:
            pickle.dump(content, handle)
