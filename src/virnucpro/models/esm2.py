"""ESM-2 protein language model, inference only (SPEC.md section 4).

A re-implementation of the numerics of fair-esm's `esm.model.esm2.ESM2` without the LM and
contact heads: pre-LayerNorm transformer layers with rotary self-attention, then
`emb_layer_norm_after`. Differences in form, not in result:
  - q, k and v come from one fused Linear (3*D outputs): one GEMM instead of three.
  - Attention runs through PyTorch's fused kernels (on GPU the varlen memory-efficient or flash
    kernel, packed_attention.py; softmax accumulates in fp32 there and in the fp32 math path on
    CPU).
  - Rotary angles are always computed and applied in fp32 from the checkpoint's own inv_freq,
    which is stored as int32 bits so that casting the module to bf16/fp16 cannot round it.
  - One inv_freq for the whole model, not one per layer: every released checkpoint stores the
    same values in each layer (the loader refuses one that does not), so the angle table is
    computed once per forward pass and handed to every layer (as gpt-fast does).
The module does no I/O: `esm2_loader.load_esm2` builds it from a checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from virnucpro.models.protein_alphabet import ALPHABET_SIZE, CLS, EOS, FIRST_RESIDUE, MASK, PAD

# Token dropout was trained with 15% of positions selected and 80% of those replaced by <mask>;
# at inference fair-esm rescales embeddings by (1 - 0.12) / (1 - observed mask ratio).
_TRAIN_MASK_RATIO = 0.15 * 0.8
# The original pools at most this many residues (positions 1..1024) of longer proteins.
MAX_POOLED_RESIDUES = 1024
_LAYER_NORM_EPS = 1e-5


def standard_inv_freq(head_dim: int) -> torch.Tensor:
    """inv_freq as training computed it in fp32 and as the fp16 checkpoint stores it.

    The default of a freshly built module (random-weight benchmarks, demo models), and what a
    file without stored values gets; a loaded model otherwise takes the checkpoint's values.
    """
    exact = 1.0 / (10000 ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    return exact.half().float()


class RotaryEmbedding(nn.Module):
    """Non-interleaved ("rotate half") rotary position embedding, positions 0..T-1, fp32."""

    def __init__(self, head_dim: int) -> None:
        super().__init__()
        # Stored as the raw bits of fp32 values in an int32 buffer: Module.to(dtype) / .half()
        # only cast floating-point tensors, so the angles stay exact after the model is cast.
        bits = standard_inv_freq(head_dim).view(torch.int32)
        self.register_buffer("inv_freq_bits", bits)

    @property
    def inv_freq(self) -> torch.Tensor:
        """fp32 inverse frequencies, [head_dim // 2]."""
        return self.inv_freq_bits.view(torch.float32)

    def packed_cos_sin(self, batch: "PackedBatch") -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin at each packed token's own position, each [N, head_dim], fp32."""
        cos, sin = self.cos_sin(batch.max_len, batch.positions.device)  # each [T, hd]
        return cos[batch.positions], sin[batch.positions]

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


@dataclass(frozen=True)
class PackedBatch:
    """Several proteins concatenated without padding (the fast path's layout).

    tokens:     [N] token ids of all proteins back to back, each [<cls>, residues, <eos>]
    cu_seqlens: [B+1] int32 start offsets (cumulative lengths), as flash attention wants them
    positions:  [N] position of each token within its own protein (0 = <cls>): rotary angles
    seq_index:  [N] which protein each token belongs to
    pool_index: [B, P] token indices of the residues to average (positions 1..min(L, 1024)),
                padded with N, which points at an appended zero row
    pool_count: [B] number of real entries in each pool_index row
    max_len:    longest protein in tokens (a host int: kernels need it without a device sync)
    cu_seqlens_host: the same offsets on the host, for the CPU fallback
    """

    tokens: torch.Tensor
    cu_seqlens: torch.Tensor
    positions: torch.Tensor
    seq_index: torch.Tensor
    pool_index: torch.Tensor
    pool_count: torch.Tensor
    max_len: int
    cu_seqlens_host: tuple[int, ...]

    def to(self, device: torch.device, non_blocking: bool = False) -> "PackedBatch":
        move = lambda t: t.to(device, non_blocking=non_blocking)  # noqa: E731
        return PackedBatch(move(self.tokens), move(self.cu_seqlens), move(self.positions),
                           move(self.seq_index), move(self.pool_index), move(self.pool_count),
                           self.max_len, self.cu_seqlens_host)

    def pin_memory(self) -> "PackedBatch":
        return PackedBatch(self.tokens.pin_memory(), self.cu_seqlens.pin_memory(),
                           self.positions.pin_memory(), self.seq_index.pin_memory(),
                           self.pool_index.pin_memory(), self.pool_count.pin_memory(),
                           self.max_len, self.cu_seqlens_host)


def _varlen_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
    """Attention within each packed protein; q, k, v [N, H, hd], q already scaled.

    On CUDA in bf16/fp16 this is one of PyTorch's varlen kernels (no padding, no mask), chosen
    by the proteins' length (packed_attention.py). Elsewhere (CPU, fp32) each protein goes
    through SDPA on its own: the same function, for tests and small runs.
    """
    if q.is_cuda and q.dtype in (torch.float16, torch.bfloat16):
        from virnucpro.models.packed_attention import packed_attention

        return packed_attention(q, k, v, batch.cu_seqlens, batch.max_len)
    return attention_one_by_one(q, k, v, batch.cu_seqlens_host)


def attention_one_by_one(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bounds) -> torch.Tensor:
    """Each packed protein through SDPA on its own; q, k, v [N, H, hd]; bounds its offsets."""
    out = torch.empty_like(q)
    for start, end in zip(bounds[:-1], bounds[1:]):
        seg = [t[start:end].transpose(0, 1) for t in (q, k, v)]  # each [H, L, hd]
        out[start:end] = F.scaled_dot_product_attention(*seg, scale=1.0).transpose(0, 1)
    return out


# cos and sin of the rotary angles, each [T, head_dim] (padded) or [N, head_dim] (packed), fp32.
CosSin = tuple[torch.Tensor, torch.Tensor]


class SelfAttention(nn.Module):
    # Rotation and attention of the packed path as one fused GPU kernel
    # (models/rotary_attention.py); set per module by the code that places it on a GPU.
    fused_rotary_attention = False

    def __init__(self, embed_dim: int, num_heads: int) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.scaling = self.head_dim**-0.5
        self.qkv_proj = nn.Linear(embed_dim, 3 * embed_dim)  # rows: q, then k, then v
        self.out_proj = nn.Linear(embed_dim, embed_dim)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor, cos_sin: CosSin) -> torch.Tensor:
        """x [B, T, D]; key_mask [B, 1, 1, T], True where a key may be attended to."""
        batch, seq_len, embed_dim = x.shape
        qkv = self.qkv_proj(x)  # [B, T, 3D]
        qkv = qkv.view(batch, seq_len, 3, self.num_heads, self.head_dim)  # [B, T, 3, H, hd]
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, H, T, hd]
        # fair-esm scales q before the rotation; same order, same rounding.
        q = q * self.scaling
        cos, sin = cos_sin  # each [T, hd]
        q = _apply_rotary(q, cos, sin)
        k = _apply_rotary(k, cos, sin)
        # softmax(q k^T) v over unmasked keys; q is already scaled.
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask, scale=1.0)  # [B, H, T, hd]
        out = out.transpose(1, 2).reshape(batch, seq_len, embed_dim)  # [B, T, D]
        return self.out_proj(out)

    def forward_packed(self, x: torch.Tensor, batch: PackedBatch, cos_sin: CosSin) -> torch.Tensor:
        """x [N, D] packed tokens; cos_sin: each [N, hd], at each token's own position."""
        return self.out_proj(self.attend_packed(x, batch, cos_sin))

    def attend_packed(self, x: torch.Tensor, batch: PackedBatch, cos_sin: CosSin) -> torch.Tensor:
        """forward_packed before out_proj: the heads' outputs side by side, [N, D]."""
        tokens, embed_dim = x.shape
        cos, sin = cos_sin
        qkv = self.qkv_proj(x).view(tokens, 3, self.num_heads, self.head_dim)  # [N, 3, H, hd]
        if self.fused_rotary_attention:
            from virnucpro.models.rotary_attention import rotary_attention

            out = rotary_attention(qkv, cos, sin, batch.cu_seqlens, self.scaling)
            return out.reshape(tokens, embed_dim)
        q, k, v = qkv.unbind(1)  # each [N, H, hd]
        q = q * self.scaling
        q = _apply_rotary(q, cos[:, None, :], sin[:, None, :])
        k = _apply_rotary(k, cos[:, None, :], sin[:, None, :])
        out = _varlen_attention(q, k, v, batch)  # [N, H, hd]
        return out.reshape(tokens, embed_dim)  # [N, D]


class TransformerLayer(nn.Module):
    """Pre-LayerNorm block: x + attn(LN(x)), then x + fc2(gelu(fc1(LN(x))))."""

    # The GELU as virnucpro::gelu (models/gelu.py: the same function through erfc, in one GPU
    # kernel of half the instructions); set per module by the code that places it on a GPU.
    fused_gelu = False
    # fc1 and the GELU as one cuBLASLt GEMM with the GELU in its epilogue (models/linear_gelu.py);
    # set per module, as fused_gelu, where the model is placed on a GPU.
    gelu_in_gemm = False

    def __init__(self, embed_dim: int, num_heads: int) -> None:
        super().__init__()
        self.self_attn_layer_norm = nn.LayerNorm(embed_dim, eps=_LAYER_NORM_EPS)
        self.self_attn = SelfAttention(embed_dim, num_heads)
        self.final_layer_norm = nn.LayerNorm(embed_dim, eps=_LAYER_NORM_EPS)
        self.fc1 = nn.Linear(embed_dim, 4 * embed_dim)
        self.fc2 = nn.Linear(4 * embed_dim, embed_dim)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor, cos_sin: CosSin) -> torch.Tensor:
        x = x + self.self_attn(self.self_attn_layer_norm(x), key_mask, cos_sin)
        return x + self._feed_forward(x)

    def forward_packed(self, x: torch.Tensor, batch: PackedBatch, cos_sin: CosSin) -> torch.Tensor:
        x = x + self.self_attn.forward_packed(self.self_attn_layer_norm(x), batch, cos_sin)
        return x + self._feed_forward(x)

    def accumulate_packed(self, x: torch.Tensor, bias: torch.Tensor, batch: PackedBatch,
                          cos_sin: CosSin) -> tuple[torch.Tensor, torch.Tensor]:
        """forward_packed with the residual stream held as x + bias (x [N, D] in the model's
        dtype, bias fp32 [D]: the out_proj and fc2 biases of the layers so far). out_proj and
        fc2 add their products into x in place, in the GEMM (models/residual_gemm.py), and
        their biases into bias; each LayerNorm reads x + bias in fp32. Returns (x, bias)."""
        from virnucpro.models.residual_gemm import accumulate_matmul

        attended = self.self_attn.attend_packed(_layer_norm_plus(self.self_attn_layer_norm, x, bias), batch, cos_sin)
        accumulate_matmul(x, attended, self.self_attn.out_proj.weight)
        bias = bias + self.self_attn.out_proj.bias.float()
        accumulate_matmul(x, self._hidden(_layer_norm_plus(self.final_layer_norm, x, bias)), self.fc2.weight)
        return x, bias + self.fc2.bias.float()

    def _feed_forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self._hidden(self.final_layer_norm(x)))

    def _hidden(self, normed: torch.Tensor) -> torch.Tensor:
        """gelu(fc1(normed)): fc2's input."""
        if self.gelu_in_gemm:
            from virnucpro.models.linear_gelu import linear_gelu

            return linear_gelu(normed, self.fc1.weight, self.fc1.bias)
        hidden = self.fc1(normed)
        if self.fused_gelu:
            from virnucpro.models.gelu import gelu

            return gelu(hidden)
        # approximate="none": the exact erf GELU the model was trained with.
        return F.gelu(hidden, approximate="none")


def _layer_norm_plus(norm: nn.LayerNorm, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """norm(x + bias), the sum and the normalisation in fp32 (bias fp32 [D]), rounded once to
    x's dtype: as norm(x) computes in a half-precision model, with the bias added first. One
    op (models/layer_norm.py): on the GPU a kernel of its own, at 0.9 of a copy's bandwidth
    where the one Inductor writes ran at half."""
    from virnucpro.models.layer_norm import layer_norm_plus

    return layer_norm_plus(x, bias, norm.weight, norm.bias, norm.eps)


class ESM2(nn.Module):
    # The packed path adds out_proj's and fc2's products into the residual stream inside their
    # GEMMs (TransformerLayer.accumulate_packed): no add kernel over the stream after each,
    # and LayerNorm as a kernel of its own; a batch of reads of ESM-2 3B 613 -> 591 ms on an
    # H200 (benchmarks/RESULTS.md, issue 15, eighth session). Set by the code that places the
    # model on a GPU, where deferred_bias_ratio allows it.
    residual_in_gemm = False

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
        # Built from scratch (random-weight benchmarks, demo models) it holds the standard
        # values; the loader replaces them with the checkpoint's.
        self.rotary = RotaryEmbedding(embed_dim // attention_heads)

    @property
    def architecture(self) -> dict:
        """The constructor's arguments: what an empty copy of this model is built from."""
        return {"num_layers": self.num_layers, "embed_dim": self.embed_dim,
                "attention_heads": self.attention_heads, "alphabet_size": self.embed_tokens.num_embeddings,
                "token_dropout": self.token_dropout}

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Last-layer representation after emb_layer_norm_after, [B, T, D].

        tokens: [B, T] right-padded with <pad>.
        """
        is_pad = tokens.eq(PAD)  # [B, T]
        x = self.embed_tokens(tokens)  # [B, T, D]
        if self.token_dropout:
            x = self._rescale_for_token_dropout(x, tokens, is_pad)
        x = x.masked_fill(is_pad.unsqueeze(-1), 0.0)
        # SDPA boolean masks say where to attend: [B, 1, 1, T] broadcasts over heads and queries.
        key_mask = (~is_pad)[:, None, None, :]
        cos_sin = self.rotary.cos_sin(tokens.shape[1], tokens.device)  # once for all layers
        for layer in self.layers:
            x = layer(x, key_mask, cos_sin)
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

    def pooled(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Mean representation of residues 1..min(L, 1024), fp32 [B, D].

        lengths: [B] tokens per protein including <cls> and <eos>, so L = lengths - 2.
        <cls> (position 0), <eos> and padding are excluded, as in the original. An empty
        protein (L = 0) gives NaN, as the original's mean over an empty slice does.
        """
        hidden = self.forward(tokens).float()  # [B, T, D]
        residues = (lengths.to(hidden.device) - 2).clamp(max=MAX_POOLED_RESIDUES)  # [B]
        positions = torch.arange(tokens.shape[1], device=hidden.device)  # [T]
        keep = (positions >= 1) & (positions <= residues[:, None])  # [B, T]
        # An elementwise sum, not a matmul: a matmul could silently run in TF32 on GPU.
        summed = (hidden * keep.unsqueeze(-1)).sum(dim=1)  # [B, D]
        return summed / residues.to(torch.float32).unsqueeze(-1)

    @torch.no_grad()
    def deferred_bias_ratio(self) -> float:
        """How much the residual-in-GEMM path can add to the stream's rounding error, from the
        weights alone: the largest norm of the biases it holds apart (the out_proj and fc2
        biases summed up to any point), over the smallest norm of a token's embedding as it
        enters the stream (x 0.88 with token dropout).

        Why: the path stores x - B in half precision where the plain path stores x, so a
        row's rounding error is bounded by 2^-9 (|x| + |B|) instead of 2^-9 |x|, which grows
        by at most |B| / |x|. The embeddings are the stream's scale at its start (it grows
        through the layers). Biases that cancel what the GEMMs add would leave x small and B
        large: the ratio says so before any frame is computed."""
        biases = torch.stack([linear.bias.double() for layer in self.layers
                              for linear in (layer.self_attn.out_proj, layer.fc2)])  # in stream order
        largest = float(biases.cumsum(0).norm(dim=1).max())  # what is held apart at each point
        tokens = [CLS, EOS, *range(FIRST_RESIDUE, FIRST_RESIDUE + 21)]  # 20 amino acids and X
        scale = (1 - _TRAIN_MASK_RATIO) if self.token_dropout else 1.0
        smallest = float(self.embed_tokens.weight[tokens].double().norm(dim=1).min()) * scale
        return largest / smallest if smallest > 0 else float("inf")

    def forward_packed(self, batch: PackedBatch) -> torch.Tensor:
        """Last-layer representation of packed proteins, [N, D] (no padding anywhere)."""
        tokens = batch.tokens  # [N]
        x = self.embed_tokens(tokens)  # [N, D]
        if self.token_dropout:
            is_mask = tokens.eq(MASK)  # [N]
            x = x.masked_fill(is_mask.unsqueeze(-1), 0.0)
            lengths = (batch.cu_seqlens[1:] - batch.cu_seqlens[:-1]).to(torch.float32)  # [B]
            masks = torch.zeros_like(lengths).index_add_(0, batch.seq_index, is_mask.float())
            observed = (masks / lengths)[batch.seq_index]  # [N]
            x = x * (1 - _TRAIN_MASK_RATIO) / (1 - observed).to(x.dtype)[:, None]
        # One table of angles for all 36 layers, not rebuilt in each (measured ~4% of a batch).
        cos_sin = self.rotary.packed_cos_sin(batch)
        if self.residual_in_gemm:
            bias = x.new_zeros(self.embed_dim, dtype=torch.float32)
            for layer in self.layers:  # x is a new tensor here: updating it in place is safe
                x, bias = layer.accumulate_packed(x, bias, batch, cos_sin)
            # The biases into the stream at last, in place and rounded once (summed in fp32):
            # no fp32 copy of the whole stream (GBs at a batch of 64k tokens).
            x = x.add_(bias)
        else:
            for layer in self.layers:
                x = layer.forward_packed(x, batch, cos_sin)
        return self.emb_layer_norm_after(x)

    def pooled_packed(self, batch: PackedBatch) -> torch.Tensor:
        """Mean of residues 1..min(L, 1024) per protein, fp32 [B, D]; same as `pooled`."""
        hidden = self.forward_packed(batch).float()  # [N, D]
        padded = torch.cat([hidden, hidden.new_zeros(1, hidden.shape[1])])  # [N+1, D]: row N = 0
        # A gather and an ordered sum: deterministic, unlike atomics-based scatter-adds.
        summed = padded[batch.pool_index].sum(dim=1)  # [B, P, D] -> [B, D]
        return summed / batch.pool_count.to(torch.float32).unsqueeze(-1)
