"""DNABERT-S (MosaicBERT / DNABERT-2 architecture), inference only.

SPEC.md section 3. Post-LN BERT without position embeddings: attention carries a symmetric
ALiBi bias instead, the MLP is a gated linear unit. Submodule and parameter names follow the
Hugging Face checkpoint, so its state dict (with any `bert.` prefix removed by the loader)
loads with `load_state_dict` unchanged, the fused Wqkv included.

Batches are right-padded. Padded keys get a -inf bias, so every real token sees exactly the
keys it would see if its sequence ran alone (the original runs one sequence per call, with no
mask): a padded batch reproduces the per-sequence numbers. Padded query rows compute finite
garbage that `pooled` leaves out.

Precision: the module may be cast to bf16/fp16. The ALiBi slopes are kept as Python floats
(a buffer would be rounded by `.to(bf16)`; 2^-0.5 is not exact in bf16), the bias is built
in fp32, attention (bias + softmax) runs in fp32, and pooling accumulates in fp32; the
linear layers, GELU and LayerNorms run in the model's dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def alibi_slopes(n_heads: int) -> list[float]:
    """Per-head ALiBi slopes, as MosaicBERT / DNABERT-2 assign them.

    For a power of two n the slopes are the geometric series 2^(-8/n), 2^(-16/n), ...,
    2^-8. Otherwise the series for the largest power of two p < n is used, and the remaining
    n - p heads take every other slope (the 1st, 3rd, 5th, ...) of the series for 2p, which
    fall between the slopes already used. 12 heads: 2^-1 .. 2^-8, then 2^-0.5 .. 2^-3.5.
    """
    if n_heads < 1:
        raise ValueError(f"need at least one attention head, got {n_heads}")
    if n_heads & (n_heads - 1) == 0:
        return [2.0 ** (-8.0 * k / n_heads) for k in range(1, n_heads + 1)]
    p = 1 << (n_heads.bit_length() - 1)  # largest power of two below n_heads
    in_between = alibi_slopes(2 * p)[0::2]  # 1st, 3rd, 5th ... of the 2p series
    return alibi_slopes(p) + in_between[: n_heads - p]


def key_padding_bias(lengths: Tensor, seq_len: int) -> Tensor:
    """[B, 1, 1, T] fp32: 0 for real keys, -inf for padding (position >= length)."""
    positions = torch.arange(seq_len, device=lengths.device)
    is_pad = positions[None, :] >= lengths[:, None]  # [B, T]
    bias = torch.zeros(is_pad.shape, dtype=torch.float32, device=lengths.device)
    return bias.masked_fill(is_pad, float("-inf"))[:, None, None, :]


def alibi_bias(slopes: Tensor, seq_len: int) -> Tensor:
    """[H, T, T] fp32: -slope_h * |i - j|."""
    positions = torch.arange(seq_len, device=slopes.device, dtype=torch.float32)
    distance = (positions[:, None] - positions[None, :]).abs()  # [T, T]
    return -slopes[:, None, None] * distance[None, :, :]


def attend(q: Tensor, k: Tensor, v: Tensor, bias: Tensor) -> Tensor:
    """Softmax(q k^T / sqrt(d) + bias) v; q, k, v [B, H, T, d], bias [B, H, T, T] fp32.

    The single place attention happens, so a packed / FlexAttention path can replace it.
    SDPA wants the bias in the query dtype; rounding ALiBi to bf16 would shift distant
    logits by up to ~0.1, so q, k, v are lifted to fp32 instead and the bias and softmax
    stay exact fp32. Attention is ~2% of DNABERT-S's FLOPs (the linears are the rest), so
    this costs little; the result goes back to the model's dtype.
    """
    # Under autocast (fp16 GEMMs on the fast path) SDPA would be cast down too: keep it fp32.
    with torch.autocast(q.device.type, enabled=False):
        out = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=bias)
    return out.to(q.dtype)


class _Embeddings(nn.Module):
    """LayerNorm(word embedding + token-type-0 embedding); no position embeddings (ALiBi)."""

    def __init__(self, vocab_size: int, hidden: int, type_vocab: int, ln_eps: float) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab_size, hidden)
        self.token_type_embeddings = nn.Embedding(type_vocab, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=ln_eps)

    def forward(self, input_ids: Tensor) -> Tensor:
        # Every token has type 0 (single-segment input), so add row 0 to all positions.
        x = self.word_embeddings(input_ids) + self.token_type_embeddings.weight[0]
        return self.LayerNorm(x)


class _FusedQKV(nn.Module):
    """Holds the checkpoint's fused projection under its name `Wqkv` (columns q | k | v)."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.Wqkv = nn.Linear(hidden, 3 * hidden)


class _AttentionOutput(nn.Module):
    def __init__(self, hidden: int, ln_eps: float) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=ln_eps)


class _Attention(nn.Module):
    """Post-LN self-attention block: LayerNorm(x + dense(attention(x)))."""

    def __init__(self, hidden: int, heads: int, ln_eps: float) -> None:
        super().__init__()
        if hidden % heads:
            raise ValueError(f"hidden size {hidden} is not a multiple of {heads} heads")
        self.heads = heads
        # `self` is the checkpoint's name for this submodule (attention.self.Wqkv).
        self.add_module("self", _FusedQKV(hidden))
        self.output = _AttentionOutput(hidden, ln_eps)

    def forward(self, x: Tensor, bias: Tensor) -> Tensor:
        b, t, h = x.shape
        qkv = self._modules["self"].Wqkv(x)  # [B, T, 3H]
        qkv = qkv.view(b, t, 3, self.heads, h // self.heads)  # [B, T, 3, heads, d]
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, heads, T, d]
        context = attend(q, k, v, bias)  # [B, heads, T, d]
        context = context.transpose(1, 2).reshape(b, t, h)  # [B, T, H]
        return self.output.LayerNorm(x + self.output.dense(context))


class _GatedMLP(nn.Module):
    """LayerNorm(x + wo(gelu(gate) * value)), gate | value = gated_layers(x)."""

    def __init__(self, hidden: int, intermediate: int, ln_eps: float) -> None:
        super().__init__()
        self.intermediate = intermediate
        self.gated_layers = nn.Linear(hidden, 2 * intermediate, bias=False)
        self.wo = nn.Linear(intermediate, hidden)
        self.layernorm = nn.LayerNorm(hidden, eps=ln_eps)

    def forward(self, x: Tensor) -> Tensor:
        gate, value = self.gated_layers(x).split(self.intermediate, dim=-1)  # 2 x [B, T, I]
        return self.layernorm(x + self.wo(F.gelu(gate) * value))  # exact (erf) GELU


class _Layer(nn.Module):
    def __init__(self, hidden: int, heads: int, intermediate: int, ln_eps: float) -> None:
        super().__init__()
        self.attention = _Attention(hidden, heads, ln_eps)
        self.mlp = _GatedMLP(hidden, intermediate, ln_eps)

    def forward(self, x: Tensor, bias: Tensor) -> Tensor:
        return self.mlp(self.attention(x, bias))


class _Encoder(nn.Module):
    def __init__(self, layers: int, hidden: int, heads: int, intermediate: int,
                 ln_eps: float) -> None:
        super().__init__()
        self.layer = nn.ModuleList(
            _Layer(hidden, heads, intermediate, ln_eps) for _ in range(layers)
        )

    def forward(self, x: Tensor, bias: Tensor) -> Tensor:
        for layer in self.layer:
            x = layer(x, bias)
        return x


class DNABertS(nn.Module):
    """DNABERT-S encoder. Inputs are right-padded token ids with their true lengths."""

    def __init__(self, vocab_size: int = 4096, hidden: int = 768, layers: int = 12,
                 heads: int = 12, intermediate: int = 3072, type_vocab: int = 2,
                 ln_eps: float = 1e-12) -> None:
        super().__init__()
        self.hidden = hidden
        self.heads = heads
        self.embeddings = _Embeddings(vocab_size, hidden, type_vocab, ln_eps)
        self.encoder = _Encoder(layers, hidden, heads, intermediate, ln_eps)
        # Python floats, not a buffer: a buffer would follow `.to(bfloat16)` and lose bits.
        self.alibi_slopes = tuple(alibi_slopes(heads))
        self._slopes_on: dict[torch.device, Tensor] = {}

    def _slopes(self, device: torch.device) -> Tensor:
        """fp32 slopes on `device`, copied there once (no host copy per batch)."""
        if device not in self._slopes_on:
            self._slopes_on[device] = torch.tensor(self.alibi_slopes, dtype=torch.float32,
                                                   device=device)
        return self._slopes_on[device]

    def attention_bias(self, lengths: Tensor, seq_len: int) -> Tensor:
        """[B, heads, T, T] fp32: ALiBi plus -inf on padded keys, shared by all layers."""
        alibi = alibi_bias(self._slopes(lengths.device), seq_len)  # [heads, T, T]
        return alibi[None] + key_padding_bias(lengths, seq_len)  # [B, heads, T, T]

    def forward(self, input_ids: Tensor, lengths: Tensor) -> Tensor:
        """input_ids [B, T] (pad id 3 beyond each length), lengths [B] >= 1 -> [B, T, H].

        Rows beyond a sequence's length are not meaningful.
        """
        bias = self.attention_bias(lengths, input_ids.shape[1])
        return self.encoder(self.embeddings(input_ids), bias)

    def pooled(self, input_ids: Tensor, lengths: Tensor) -> Tensor:
        """[B, H] fp32: mean of the last hidden state over the real tokens, [CLS]/[SEP] in."""
        hidden = self.forward(input_ids, lengths)  # [B, T, H]
        with torch.autocast(hidden.device.type, enabled=False):  # the mean stays fp32
            hidden = hidden.float()
            positions = torch.arange(input_ids.shape[1], device=input_ids.device)
            real = (positions[None, :] < lengths[:, None]).to(torch.float32)  # [B, T]
            total = torch.einsum("bth,bt->bh", hidden, real)  # padded rows weigh 0
            return total / lengths[:, None].to(torch.float32)

