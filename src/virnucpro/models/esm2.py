"""ESM-2 protein language model, inference only (SPEC.md section 4).

A re-implementation of the numerics of fair-esm's `esm.model.esm2.ESM2` without the LM and
contact heads: pre-LayerNorm transformer layers with rotary self-attention, then
`emb_layer_norm_after`. Differences in form, not in result:
  - q, k and v come from one fused Linear (3*D outputs): one GEMM instead of three.
  - Attention runs through `F.scaled_dot_product_attention` (flash / memory-efficient kernels
    on GPU; softmax accumulates in fp32 there and in the fp32 math path on CPU).
  - Rotary angles are always computed and applied in fp32 from the checkpoint's own inv_freq,
    which is stored as int32 bits so that casting the module to bf16/fp16 cannot round it.
The module does no I/O: `esm2_loader.load_esm2` builds it from a checkpoint.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from virnucpro.models.protein_alphabet import ALPHABET_SIZE, MASK, PAD

# Token dropout was trained with 15% of positions selected and 80% of those replaced by <mask>;
# at inference fair-esm rescales embeddings by (1 - 0.12) / (1 - observed mask ratio).
_TRAIN_MASK_RATIO = 0.15 * 0.8
# The original pools at most this many residues (positions 1..1024) of longer proteins.
MAX_POOLED_RESIDUES = 1024
_LAYER_NORM_EPS = 1e-5


def _standard_inv_freq(head_dim: int) -> torch.Tensor:
    """inv_freq as training computed it in fp32 and as the fp16 checkpoint stores it.

    Only the default of a freshly built module (random-weight benchmarks); a loaded model takes
    the checkpoint's values instead.
    """
    exact = 1.0 / (10000 ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    return exact.half().float()


class RotaryEmbedding(nn.Module):
    """Non-interleaved ("rotate half") rotary position embedding, positions 0..T-1, fp32."""

    def __init__(self, head_dim: int) -> None:
        super().__init__()
        # Stored as the raw bits of fp32 values in an int32 buffer: Module.to(dtype) / .half()
        # only cast floating-point tensors, so the angles stay exact after the model is cast.
        bits = _standard_inv_freq(head_dim).view(torch.int32)
        self.register_buffer("inv_freq_bits", bits)

    @property
    def inv_freq(self) -> torch.Tensor:
        """fp32 inverse frequencies, [head_dim // 2]."""
        return self.inv_freq_bits.view(torch.float32)

    @torch.no_grad()
    def set_inv_freq(self, values: torch.Tensor) -> None:
        self.inv_freq_bits.copy_(values.to(torch.float32).view(torch.int32))

    def cos_sin(self, seq_len: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin tables, each [T, head_dim], fp32."""
        inv_freq = self.inv_freq.to(device)
        positions = torch.arange(seq_len, device=device, dtype=torch.float32)  # [T]
        angles = torch.outer(positions, inv_freq)  # [T, head_dim / 2]
        angles = torch.cat((angles, angles), dim=-1)  # [T, head_dim]: halves share angles
        return angles.cos(), angles.sin()


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def _apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [B, H, T, hd] by position; computed in fp32, returned in x's dtype."""
    x32 = x.float()  # a no-op for an fp32 module
    return (x32 * cos + _rotate_half(x32) * sin).to(x.dtype)


class SelfAttention(nn.Module):
    def __init__(self, embed_dim: int, num_heads: int) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.scaling = self.head_dim**-0.5
        self.qkv_proj = nn.Linear(embed_dim, 3 * embed_dim)  # rows: q, then k, then v
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        self.rotary = RotaryEmbedding(self.head_dim)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        batch, seq_len, embed_dim = x.shape
        qkv = self.qkv_proj(x)  # [B, T, 3D]
        qkv = qkv.view(batch, seq_len, 3, self.num_heads, self.head_dim)  # [B, T, 3, H, hd]
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, H, T, hd]
        # fair-esm scales q before the rotation; same order, same rounding.
        q = q * self.scaling
        cos, sin = self.rotary.cos_sin(seq_len, x.device)  # each [T, hd]
        q = _apply_rotary(q, cos, sin)
        k = _apply_rotary(k, cos, sin)
        out = self._attend(q, k, v, key_mask)  # [B, H, T, hd]
        out = out.transpose(1, 2).reshape(batch, seq_len, embed_dim)  # [B, T, D]
        return self.out_proj(out)

    def _attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None
    ) -> torch.Tensor:
        """softmax(q k^T) v over unmasked keys; q is already scaled. Kept apart so a packed
        (varlen) kernel can replace it."""
        return F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask, scale=1.0)


class TransformerLayer(nn.Module):
    """Pre-LayerNorm block: x + attn(LN(x)), then x + fc2(gelu(fc1(LN(x))))."""

    def __init__(self, embed_dim: int, num_heads: int) -> None:
        super().__init__()
        self.self_attn_layer_norm = nn.LayerNorm(embed_dim, eps=_LAYER_NORM_EPS)
        self.self_attn = SelfAttention(embed_dim, num_heads)
        self.final_layer_norm = nn.LayerNorm(embed_dim, eps=_LAYER_NORM_EPS)
        self.fc1 = nn.Linear(embed_dim, 4 * embed_dim)
        self.fc2 = nn.Linear(4 * embed_dim, embed_dim)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        x = x + self.self_attn(self.self_attn_layer_norm(x), key_mask)
        # approximate="none": the exact erf GELU the model was trained with.
        return x + self.fc2(F.gelu(self.fc1(self.final_layer_norm(x)), approximate="none"))


class ESM2(nn.Module):
    def __init__(
        self,
        num_layers: int,
        embed_dim: int,
        attention_heads: int,
        alphabet_size: int = ALPHABET_SIZE,
        token_dropout: bool = True,
    ) -> None:
        super().__init__()
        self.num_layers = num_layers
        self.embed_dim = embed_dim
        self.attention_heads = attention_heads
        self.token_dropout = token_dropout
        self.embed_tokens = nn.Embedding(alphabet_size, embed_dim, padding_idx=PAD)
        self.layers = nn.ModuleList(
            TransformerLayer(embed_dim, attention_heads) for _ in range(num_layers)
        )
        self.emb_layer_norm_after = nn.LayerNorm(embed_dim, eps=_LAYER_NORM_EPS)

    def forward(self, tokens: torch.Tensor, *, padded: bool = True) -> torch.Tensor:
        """Last-layer representation after emb_layer_norm_after, [B, T, D].

        tokens: [B, T] right-padded with <pad>. padded=False promises the batch holds no <pad>
        (exact-length buckets): attention then runs without a mask, which lets SDPA pick its
        flash kernel. Deciding it here from the tokens would cost a device sync per batch.
        """
        is_pad = tokens.eq(PAD)  # [B, T]
        x = self.embed_tokens(tokens)  # [B, T, D]
        if self.token_dropout:
            x = self._rescale_for_token_dropout(x, tokens, is_pad)
        x = x.masked_fill(is_pad.unsqueeze(-1), 0.0)
        # SDPA boolean masks say where to attend: [B, 1, 1, T] broadcasts over heads and queries.
        key_mask = (~is_pad)[:, None, None, :] if padded else None
        for layer in self.layers:
            x = layer(x, key_mask)
        return self.emb_layer_norm_after(x)

    def _rescale_for_token_dropout(
        self, x: torch.Tensor, tokens: torch.Tensor, is_pad: torch.Tensor
    ) -> torch.Tensor:
        """Zero <mask> embeddings and rescale as fair-esm does (0.88 when there is no <mask>)."""
        is_mask = tokens.eq(MASK)  # [B, T]
        x = x.masked_fill(is_mask.unsqueeze(-1), 0.0)
        real_tokens = (~is_pad).sum(-1)  # [B]
        observed = is_mask.sum(-1).to(torch.float32) / real_tokens  # [B]
        # Same two roundings, in the same order, as fair-esm: x * 0.88, then / (1 - observed).
        return x * (1 - _TRAIN_MASK_RATIO) / (1 - observed).to(x.dtype)[:, None, None]

    def pooled(
        self, tokens: torch.Tensor, lengths: torch.Tensor, *, padded: bool = True
    ) -> torch.Tensor:
        """Mean representation of residues 1..min(L, 1024), fp32 [B, D].

        lengths: [B] tokens per protein including <cls> and <eos>, so L = lengths - 2.
        <cls> (position 0), <eos> and padding are excluded, as in the original. An empty
        protein (L = 0) gives NaN, as the original's mean over an empty slice does.
        """
        hidden = self.forward(tokens, padded=padded).float()  # [B, T, D]
        residues = (lengths.to(hidden.device) - 2).clamp(max=MAX_POOLED_RESIDUES)  # [B]
        positions = torch.arange(tokens.shape[1], device=hidden.device)  # [T]
        keep = (positions >= 1) & (positions <= residues[:, None])  # [B, T]
        # An elementwise sum, not a matmul: a matmul could silently run in TF32 on GPU.
        summed = (hidden * keep.unsqueeze(-1)).sum(dim=1)  # [B, D]
        return summed / residues.to(torch.float32).unsqueeze(-1)
