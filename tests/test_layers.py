"""The package's rooms and which way their imports may point (ARCHITECTURE.md, "Imports point
one way"). Read from the source with `ast`, so a lazy import inside a function counts too."""

from __future__ import annotations

import ast
import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "virnucpro"

# room -> rooms it must never import
NEVER = {
    "stages": {"engine", "predict", "pipeline", "monitoring", "cli"},
    "engine": {"stages", "models", "predict", "pipeline", "monitoring", "config", "store", "layout", "cli"},
    "monitoring": {"stages", "engine", "predict", "pipeline", "models", "cli"},
    "models": {"stages", "engine", "predict", "pipeline", "monitoring", "store", "cli"},
    "predict": {"pipeline", "monitoring", "cli"},
    "store": {"stages", "engine", "predict", "pipeline", "monitoring", "models", "cli"},
    "layout": {"stages", "engine", "predict", "pipeline", "monitoring", "models", "store", "cli"},
    "config": {"stages", "engine", "predict", "pipeline", "monitoring", "models", "store", "cli"},
    "errors": {"stages", "engine", "predict", "pipeline", "monitoring", "models", "store", "config", "cli"},
    # the Snakefile's helpers: the sample sheet and file names, nothing of a run
    "workflow": {"stages", "engine", "predict", "pipeline", "monitoring", "models", "store", "cli"},
}
# The pure model files: torch (and each other, and the protein alphabet's constants), nothing
# with I/O or host-side data handling.
PURE_MODELS = {"esm2.py", "packed_attention.py", "rotary_attention.py", "rotary_attention_kernel.py", "gelu.py", "gelu_kernel.py",
               "residual_gemm.py", "linear_gelu.py", "layer_norm.py", "layer_norm_kernel.py",
               "dnabert_s.py", "classifier.py"}
MODEL_HELPERS = {"protein_alphabet.py"}
TOP_LEVEL = {"__init__.py", "__main__.py", "cli.py", "config.py", "errors.py", "layout.py",
             "store.py"}  # (pipeline/ is a package: the run and its pieces)
# Words that would mean the engine knows what it is running.
BIOLOGY = re.compile(r"\b(ESM|DNABERT|protein|nucleotide|frames?|sequences?|classifier)\b", re.I)


def _imports(path: Path) -> list[str]:
    """Every virnucpro module `path` imports ('virnucpro.x.y'), relative imports resolved."""
    found = []
    package = ".".join(path.relative_to(SRC.parent).with_suffix("").parts[:-1])
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, module] if module else base)
            names = [module] + [f"{module}.{alias.name}" for alias in node.names]
            found.extend(n for n in names if n.startswith("virnucpro"))
        elif isinstance(node, ast.Import):
            found.extend(a.name for a in node.names if a.name.startswith("virnucpro"))
    return found


def _room(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def test_imports_point_one_way():
    bad = []
    for path in sorted(SRC.rglob("*.py")):
        room = path.relative_to(SRC).parts[0].removesuffix(".py")
        for module in _imports(path):
            if _room(module) in NEVER.get(room, ()):
                bad.append(f"{path.relative_to(SRC)} -> {module}")
    assert not bad, "imports pointing the wrong way:\n" + "\n".join(sorted(set(bad)))


def test_pure_model_files_import_only_torch_and_their_helpers():
    bad = []
    for name in sorted(PURE_MODELS):
        path = SRC / "models" / name
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                modules = [node.module or ""]
            else:
                continue
            for module in modules:
                # triton: the GPU kernels PyTorch itself compiles with (models/rotary_attention_kernel.py)
                ok = (module.split(".")[0] in {"torch", "triton", "__future__", "math", "dataclasses", "typing",
                                                "collections"}
                      or module.removeprefix("virnucpro.models.") + ".py" in PURE_MODELS | MODEL_HELPERS)
                if not ok:
                    bad.append(f"models/{name} imports {module}")
    assert not bad, bad


def test_the_top_level_holds_only_the_entry_points_and_the_shared_ground():
    files = {p.name for p in SRC.glob("*.py")}
    assert files <= TOP_LEVEL, f"move these into their room: {sorted(files - TOP_LEVEL)}"


def test_the_engine_knows_no_biology():
    bad = []
    for path in sorted((SRC / "engine").glob("*.py")):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if match := BIOLOGY.search(line):
                bad.append(f"engine/{path.name}:{number}: {match.group(0)!r} in {line.strip()!r}")
    assert not bad, "\n".join(bad)
