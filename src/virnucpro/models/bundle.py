"""The set of models one prediction run needs, and how they are found and loaded: explicit
path, else the usual cache, else (with --demo) a tiny random stand-in. Missing models are
reported together, in one message that says where virnucpro looked and how to get them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from virnucpro.config import ModelPaths, file_identity, folder_identity
from virnucpro.errors import ModelError
from virnucpro.models import demo
from virnucpro.models.classifier import MLPClassifier
from virnucpro.models.classifier_loader import default_classifier_path, load_classifier
from virnucpro.models.dna_tokenizer import DnaTokenizer
from virnucpro.models.dnabert_s import DNABertS
from virnucpro.models.dnabert_s_loader import DNABERT_S_REPO, find_dnabert_s_folder, load_dnabert_s
from virnucpro.models.esm2 import ESM2
from virnucpro.models.esm2_loader import default_esm2_path, open_esm2


@dataclass
class ModelBundle:
    """The models as loaded, on the CPU (ESM-2 in its stored dtype, the others in fp32)."""

    esm: ESM2
    dnabert: DNABertS
    tokenizer: DnaTokenizer
    classifier: MLPClassifier
    # name -> identity string (path, size, hash or "demo"); part of the run fingerprint
    identity: dict[str, str] = field(default_factory=dict)
    demo_models: tuple[str, ...] = ()  # which models are random stand-ins

    def feature_dims(self) -> tuple[int, int]:
        """(DNABERT-S width, ESM-2 width); their sum must be the classifier's input."""
        return self.dnabert.hidden, self.esm.embed_dim

    def check_compatible(self) -> None:
        dna, esm = self.feature_dims()
        expected = self.classifier.hidden_layer.in_features
        if dna + esm != expected:
            raise ModelError(
                f"the classifier expects {expected} features but DNABERT-S ({dna}) + ESM-2 ({esm}) "
                f"give {dna + esm}: the classifier was trained for other embedding models"
            )


GET_MODELS_HINT = (
    "get them with `virnucpro models download` on a machine with internet access, "
    "pass their paths (--esm-model, --dnabert-model, --classifier), "
    "or try the pipeline with tiny random models: --demo"
)


@dataclass(frozen=True)
class ModelLocation:
    """Where one model is looked for, for `virnucpro models info`."""

    name: str
    path: str
    present: bool
    how_to_get: str


def model_locations(chunk_len: int, paths: ModelPaths = ModelPaths()) -> list[ModelLocation]:
    esm = paths.esm or default_esm2_path()
    try:
        dnabert = str(find_dnabert_s_folder(paths.dnabert))
        dnabert_present = True
    except ModelError:
        dnabert = str(paths.dnabert) if paths.dnabert else f"Hugging Face cache: {DNABERT_S_REPO}"
        dnabert_present = False
    classifier = paths.classifier or default_classifier_path(chunk_len)
    return [
        ModelLocation("ESM-2 3B", str(esm), Path(esm).is_file(), "virnucpro models download --only esm"),
        ModelLocation("DNABERT-S", dnabert, dnabert_present, "virnucpro models download --only dnabert"),
        ModelLocation(
            f"classifier ({chunk_len} bp)", str(classifier), Path(classifier).is_file(),
            "virnucpro models download --only classifier",
        ),
    ]


@dataclass(frozen=True)
class ModelSources:
    """Where each model of a run comes from: a file or folder, or None for a demo stand-in."""

    esm: Path | None
    dnabert: Path | None
    classifier: Path | None

    def identity(self) -> dict[str, str]:
        """name -> identity (path and content hash or size and time, or "demo"): the models'
        part of a run's fingerprint, known without loading them."""
        def of(path: Path | None, folder: bool = False) -> str:
            return "demo" if path is None else folder_identity(path) if folder else file_identity(path)
        return {"esm": of(self.esm), "dnabert": of(self.dnabert, folder=True), "classifier": of(self.classifier)}

    @property
    def demo_models(self) -> tuple[str, ...]:
        names = (("ESM-2", self.esm), ("DNABERT-S", self.dnabert), ("classifier", self.classifier))
        return tuple(name for name, path in names if path is None)


def locate_models(paths: ModelPaths, chunk_len: int, use_demo: bool) -> ModelSources:
    """Where each model is (explicit path, else the cache; with --demo a model not named
    explicitly is a stand-in); one ModelError lists every one that is missing."""
    missing = [
        loc for loc in model_locations(chunk_len, paths)
        if not loc.present and not (use_demo and _is_default(loc, paths))
    ]
    if missing:
        lines = "; ".join(f"{m.name}: looked in {m.path}" for m in missing)
        raise ModelError(f"model(s) not found -- {lines}. To fix: {GET_MODELS_HINT}")
    return ModelSources(
        esm=None if paths.esm is None and use_demo else (paths.esm or default_esm2_path()),
        dnabert=None if paths.dnabert is None and use_demo else find_dnabert_s_folder(paths.dnabert),
        classifier=(None if paths.classifier is None and use_demo
                    else (paths.classifier or default_classifier_path(chunk_len))),
    )


def load_bundle(paths: ModelPaths, chunk_len: int, use_demo: bool, *,
                on_esm_architecture: Callable[[dict], None] | None = None) -> ModelBundle:
    """Load every model on the CPU (ESM-2 in its stored dtype, the others in fp32); raise one
    ModelError listing all that are missing.

    on_esm_architecture(arch): called with ESM-2's constructor arguments as soon as its file
    is opened and checked, before any weight is converted or another model read, so that a
    worker can start compiling ESM-2 meanwhile."""
    sources = locate_models(paths, chunk_len, use_demo)
    # ESM-2 in the file's own dtype (fp16 for the released 3B): memory-mapped, mostly uncopied,
    # and (for fp16) half the bytes of fp32 to move to the device, where the worker casts it
    # to the compute dtype. Widening is exact, so every precision sees the same values.
    if sources.esm is None:
        esm = demo.demo_esm()
        if on_esm_architecture:
            on_esm_architecture(esm.architecture)
    else:
        opened = open_esm2(sources.esm)
        if on_esm_architecture:
            on_esm_architecture(dict(opened.architecture))
        esm = opened.module(dtype=None)
    if sources.dnabert is None:
        tokenizer = demo.demo_tokenizer()
        dnabert = demo.demo_dnabert(tokenizer.vocab_size)
    else:
        dnabert, tokenizer = load_dnabert_s(sources.dnabert)
    classifier = (demo.demo_classifier(dnabert.hidden + esm.embed_dim) if sources.classifier is None
                  else load_classifier(sources.classifier))
    bundle = ModelBundle(esm, dnabert, tokenizer, classifier, sources.identity(), sources.demo_models)
    bundle.check_compatible()
    return bundle


def _is_default(location: ModelLocation, paths: ModelPaths) -> bool:
    """True when this model was not named explicitly (so --demo may stand in for it)."""
    explicit = {"ESM-2 3B": paths.esm, "DNABERT-S": paths.dnabert}.get(location.name, paths.classifier)
    return explicit is None
