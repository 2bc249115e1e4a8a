"""The set of models one prediction run needs, as loaded (CPU, fp32)."""

from __future__ import annotations

from dataclasses import dataclass, field

from virnucpro.errors import ModelError
from virnucpro.models.classifier import MLPClassifier
from virnucpro.models.dna_tokenizer import DnaTokenizer
from virnucpro.models.dnabert_s import DNABertS
from virnucpro.models.esm2 import ESM2


@dataclass
class ModelBundle:
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
