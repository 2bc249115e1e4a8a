"""The VirNucPro classifier: a one-hidden-layer MLP over concat(DNABERT-S, ESM-2) features.

SPEC.md section 5. Attribute names are those of the original training script's class, so
the state dict of the released whole-module pickles loads into this class unchanged.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

FEATURE_DIM = 768 + 2560  # DNABERT-S mean + ESM-2 mean


class MLPClassifier(nn.Module):
    """Linear -> BatchNorm1d -> ReLU -> Dropout(0.5) -> Linear; logits [N, num_class]."""

    def __init__(self, input_dim: int = FEATURE_DIM, hidden_dim: int = 512,
                 num_class: int = 2) -> None:
        super().__init__()
        self.hidden_layer = nn.Linear(input_dim, hidden_dim)
        self.bn1 = nn.BatchNorm1d(hidden_dim)  # eps 1e-5; running statistics in eval mode
        self.relu = nn.ReLU()
        self.dropout = nn.Dropout(0.5)  # inactive in eval mode
        self.output_layer = nn.Linear(hidden_dim, num_class)

    def forward(self, x: Tensor) -> Tensor:
        return self.output_layer(self.dropout(self.relu(self.bn1(self.hidden_layer(x)))))


def class_probabilities(model: MLPClassifier, features: Tensor) -> Tensor:
    """[N, D] features -> [N, 2] fp32 softmax: column 0 = P(others), column 1 = P(virus).

    Puts the model in eval mode (BatchNorm running statistics, no dropout), as the original
    prediction script does. The model is expected in fp32, as the loader returns it.
    """
    model.eval()
    with torch.inference_mode():
        logits = model(features.to(torch.float32))
        return torch.softmax(logits.float(), dim=1)
