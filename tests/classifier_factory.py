"""Classifier files in the released format: a whole module pickled by a script run as
`python script.py`, so its class really is `__main__.MLPClassifier` -- exactly the kind of
file VirNucPro's 300_model.pth / 500_model.pth are. Written as an independent training
script would be (its own class, the original's attribute names)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import torch

TRAINING_SCRIPT = textwrap.dedent("""
    import sys
    import torch
    import torch.nn as nn

    class MLPClassifier(nn.Module):
        def __init__(self, input_dim, hidden_dim, num_class):
            super().__init__()
            self.hidden_layer = nn.Linear(input_dim, hidden_dim)
            self.bn1 = nn.BatchNorm1d(hidden_dim)
            self.relu = nn.ReLU()
            self.dropout = nn.Dropout(0.5)
            self.output_layer = nn.Linear(hidden_dim, num_class)

        def forward(self, x):
            x = self.hidden_layer(x)
            x = self.bn1(x)
            x = self.relu(x)
            x = self.dropout(x)
            return self.output_layer(x)

    input_dim, hidden_dim, seed = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    torch.manual_seed(seed)
    model = MLPClassifier(input_dim, hidden_dim, 2)
    # Non-trivial running statistics, as training leaves them.
    model.bn1.running_mean.normal_(0, 0.3)
    model.bn1.running_var.uniform_(0.5, 2.0)
    model.bn1.weight.data.normal_(1, 0.2)
    model.bn1.bias.data.normal_(0, 0.2)
    model.bn1.num_batches_tracked += 1234
    features = torch.randn(64, input_dim)
    model.eval()
    with torch.no_grad():
        probabilities = torch.softmax(model(features), dim=1)
    torch.save(model, sys.argv[1])
    torch.save({"features": features, "probabilities": probabilities,
                "state_dict": model.state_dict()}, sys.argv[2])
""")


def save_released_classifier(folder: Path, input_dim: int = 3328, hidden_dim: int = 512,
                             seed: int = 0, name: str = "500_model.pth") -> tuple[Path, dict]:
    """Write a whole-module pickle like the released file; return (path, recorded I/O)."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "train.py"
    script.write_text(TRAINING_SCRIPT)
    model_file, expected_file = folder / name, folder / f"{name}.expected.pt"
    subprocess.run([sys.executable, str(script), str(model_file), str(expected_file),
                    str(input_dim), str(hidden_dim), str(seed)],
                   check=True, cwd=folder, timeout=120)
    return model_file, torch.load(expected_file, weights_only=True)
