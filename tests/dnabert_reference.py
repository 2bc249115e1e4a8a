"""Independent DNABERT-S oracle, written straight from SPEC.md section 3.

Shares no code with virnucpro. One sequence at a time, no padding and no mask (as the
original runs it), every step spelled out: explicit matmuls, a per-head loop, a hand-written
softmax, LayerNorm and erf-GELU. Runs in fp32 by default (the original's precision) or in
fp64 to measure how far either fp32 implementation is from exact arithmetic.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def reference_slopes(n_heads: int) -> list[float]:
    """ALiBi slopes, MosaicBERT style, from the closed form.

    m = largest power of two <= n: head k (1-based, k <= m) gets 2^(-8k/m); the remaining
    n - m heads get 2^(-8(2j-1)/(2m)) for j = 1, 2, ... (the odd terms of the 2m series).
    """
    m = 2 ** int(math.floor(math.log2(n_heads)))
    first = [2.0 ** (-8.0 * k / m) for k in range(1, m + 1)]
    extra = [2.0 ** (-8.0 * (2 * j - 1) / (2 * m)) for j in range(1, n_heads - m + 1)]
    return first + extra


def _layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                eps: float) -> torch.Tensor:
    mean = x.mean(dim=-1, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)  # biased variance, as LayerNorm
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


def _softmax_rows(scores: torch.Tensor) -> torch.Tensor:
    shifted = scores - scores.max(dim=-1, keepdim=True).values
    e = torch.exp(shifted)
    return e / e.sum(dim=-1, keepdim=True)


def _gelu_erf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def reference_hidden(state: dict[str, torch.Tensor], config: dict, ids: Sequence[int],
                     dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Last hidden state [T, hidden] of one unpadded sequence of token ids."""
    w = {key.removeprefix("bert."): t.to(dtype) for key, t in state.items()}
    hidden = config["hidden_size"]
    heads = config["num_attention_heads"]
    inter = config["intermediate_size"]
    eps = config.get("layer_norm_eps", 1e-12)
    d = hidden // heads
    T = len(ids)

    x = w["embeddings.word_embeddings.weight"][torch.tensor(list(ids))]
    x = x + w["embeddings.token_type_embeddings.weight"][0]
    x = _layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], eps)

    pos = torch.arange(T, dtype=dtype)
    distance = (pos.view(T, 1) - pos.view(1, T)).abs()
    slopes = reference_slopes(heads)

    for n in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{n}."
        qkv = x @ w[p + "attention.self.Wqkv.weight"].T + w[p + "attention.self.Wqkv.bias"]
        contexts = []
        for h in range(heads):
            q = qkv[:, h * d:(h + 1) * d]
            k = qkv[:, hidden + h * d:hidden + (h + 1) * d]
            v = qkv[:, 2 * hidden + h * d:2 * hidden + (h + 1) * d]
            scores = (q @ k.T) / math.sqrt(d) - slopes[h] * distance
            contexts.append(_softmax_rows(scores) @ v)
        attn = torch.cat(contexts, dim=1)
        attn = attn @ w[p + "attention.output.dense.weight"].T + w[p + "attention.output.dense.bias"]
        x = _layer_norm(x + attn, w[p + "attention.output.LayerNorm.weight"],
                        w[p + "attention.output.LayerNorm.bias"], eps)

        up = x @ w[p + "mlp.gated_layers.weight"].T
        mlp = (_gelu_erf(up[:, :inter]) * up[:, inter:]) @ w[p + "mlp.wo.weight"].T
        mlp = mlp + w[p + "mlp.wo.bias"]
        x = _layer_norm(x + mlp, w[p + "mlp.layernorm.weight"], w[p + "mlp.layernorm.bias"], eps)
    return x


def reference_embedding(state: dict[str, torch.Tensor], config: dict, ids: Sequence[int],
                        dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The original's frame embedding: mean over ALL tokens, [CLS] and [SEP] included."""
    return reference_hidden(state, config, ids, dtype).mean(dim=0)
