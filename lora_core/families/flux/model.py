"""The Flux.1 DiT (rectified-flow transformer) in Black Forest Labs' module layout.

Module paths equal the keys of BFL's single files (``double_blocks.N.img_attn.qkv``,
``single_blocks.N.linear1``, ``final_layer.adaLN_modulation.1`` ...), so a BFL state dict
loads with ``load_state_dict`` as it is, and LoRA names built from module paths are
sd-scripts' ``networks.lora_flux`` names. The block classes are named ``DoubleStreamBlock``
and ``SingleStreamBlock`` because that is how sd-scripts (and our naming) finds targets.

Maths (Esser et al. 2024, https://arxiv.org/abs/2403.03206; BFL's flux repository):

* ``vec = time_in(emb(t)) [+ guidance_in(emb(g))] + vector_in(pooled CLIP)`` modulates every
  block through shift/scale/gate triples (adaLN-Zero style, ``x*(1+scale)+shift``).
* Double blocks keep separate weights for text and image tokens and attend jointly
  (text first); single blocks run on the concatenated sequence with fused ``linear1``
  (qkv + MLP-in) and ``linear2`` (attention-out + MLP-out), after Dehghani et al. 2023.
* Queries and keys are RMS-normalised per head and rotated by 3-axis RoPE over the position
  ids (text ids are zero; image ids are (0, row, column) of the 2x2-packed latent).

This module builds and runs the network; it does not read files (``files.py``) and knows
nothing about training.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F  # noqa: N812
from torch.utils.checkpoint import checkpoint

from lora_core.families.flux.config import TIME_EMBED_DIM, FluxConfig


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10_000.0,
                       time_factor: float = 1000.0) -> Tensor:
    """Sinusoidal embedding of ``t`` in [0, 1] (scaled by 1000 as BFL does): [cos | sin]."""
    t = time_factor * t.float()
    half = dim // 2
    freqs = torch.exp(-math.log(max_period)
                      * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def rope_angles(ids: Tensor, axes_dim: tuple[int, ...], theta: int) -> tuple[Tensor, Tensor]:
    """cos and sin of the rotation angle of every (even, odd) channel pair of a head.

    ``ids``: (B, L, n_axes) positions. Axis ``i`` owns ``axes_dim[i] / 2`` consecutive pairs
    with frequencies ``theta ** (-2k / axes_dim[i])``. Returns two (B, 1, L, head_dim/2)
    tensors, broadcast over heads.
    """
    angles = []
    for axis, dim in enumerate(axes_dim):
        scale = torch.arange(0, dim, 2, dtype=torch.float64, device=ids.device) / dim
        omega = 1.0 / (theta ** scale)
        angles.append(ids[..., axis].double()[..., None] * omega)
    angle = torch.cat(angles, dim=-1)
    return torch.cos(angle).float().unsqueeze(1), torch.sin(angle).float().unsqueeze(1)


def apply_rope(x: Tensor, pe: tuple[Tensor, Tensor]) -> Tensor:
    """Rotate each adjacent channel pair (x0, x1) by its angle: (x0 c - x1 s, x0 s + x1 c)."""
    cos, sin = pe
    pairs = x.float().reshape(*x.shape[:-1], -1, 2)
    x0, x1 = pairs[..., 0], pairs[..., 1]
    out = torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], dim=-1)
    return out.reshape(x.shape).type_as(x)


def attention(q: Tensor, k: Tensor, v: Tensor, pe: tuple[Tensor, Tensor],
              mask: Tensor | None) -> Tensor:
    """Joint attention over (B, H, L, D) with RoPE; returns (B, L, H*D)."""
    q, k = apply_rope(q, pe), apply_rope(k, pe)
    x = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    b, h, seq, d = x.shape
    return x.transpose(1, 2).reshape(b, seq, h * d)


def split_heads(qkv: Tensor, num_heads: int) -> tuple[Tensor, Tensor, Tensor]:
    """(B, L, 3*H*D) laid out as (q|k|v, head, channel) -> three (B, H, L, D) tensors."""
    b, seq, width = qkv.shape
    qkv = qkv.reshape(b, seq, 3, num_heads, width // (3 * num_heads)).permute(2, 0, 3, 1, 4)
    return qkv[0], qkv[1], qkv[2]


def joint_mask(txt_mask: Tensor | None, total_len: int, num_heads: int) -> Tensor | None:
    """A boolean key mask for [text | image] tokens: padded text tokens are hidden,
    image tokens always visible (sd-scripts' ``apply_t5_attn_mask``)."""
    if txt_mask is None:
        return None
    keep = txt_mask.to(torch.bool)
    image = torch.ones(keep.shape[0], total_len - keep.shape[1], dtype=torch.bool,
                       device=keep.device)
    keep = torch.cat([keep, image], dim=1)
    return keep[:, None, None, :].expand(-1, num_heads, total_len, -1)


class MLPEmbedder(nn.Module):
    def __init__(self, in_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.in_layer = nn.Linear(in_dim, hidden_dim, bias=True)
        self.out_layer = nn.Linear(hidden_dim, hidden_dim, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.out_layer(F.silu(self.in_layer(x)))


class RMSNorm(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float()
        rrms = torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + 1e-6)
        return (xf * rrms * self.scale.float()).to(x.dtype)


class QKNorm(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.query_norm = RMSNorm(dim)
        self.key_norm = RMSNorm(dim)

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        return self.query_norm(q).to(v), self.key_norm(k).to(v)


class SelfAttention(nn.Module):
    """Holds a stream's weights (``qkv``, ``norm``, ``proj``); the block runs the maths."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool) -> None:
        super().__init__()
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.norm = QKNorm(dim // num_heads)
        self.proj = nn.Linear(dim, dim)


class Modulation(nn.Module):
    """``lin(silu(vec))`` split into (shift, scale, gate) once or twice."""

    def __init__(self, dim: int, double: bool) -> None:
        super().__init__()
        self.multiplier = 6 if double else 3
        self.lin = nn.Linear(dim, self.multiplier * dim, bias=True)

    def forward(self, vec: Tensor) -> tuple[Tensor, ...]:
        return self.lin(F.silu(vec))[:, None, :].chunk(self.multiplier, dim=-1)


def _mlp(hidden: int, mlp_hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(hidden, mlp_hidden, bias=True), nn.GELU(approximate="tanh"),
                         nn.Linear(mlp_hidden, hidden, bias=True))


def _norm(hidden: int) -> nn.LayerNorm:
    return nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)


class DoubleStreamBlock(nn.Module):
    """``vec``: (B, hidden) for Flux.1 (the block's own ``img_mod``/``txt_mod`` make the
    modulation); for Chroma (``modulated=False``) the block's 12 modulation vectors
    (B, 12, hidden), image then text, each (shift, scale, gate) twice."""

    def __init__(self, hidden: int, num_heads: int, mlp_ratio: float, qkv_bias: bool,
                 modulated: bool = True) -> None:
        super().__init__()
        mlp_hidden = int(hidden * mlp_ratio)
        self.num_heads = num_heads
        if modulated:
            self.img_mod = Modulation(hidden, double=True)
        self.img_norm1 = _norm(hidden)
        self.img_attn = SelfAttention(hidden, num_heads, qkv_bias)
        self.img_norm2 = _norm(hidden)
        self.img_mlp = _mlp(hidden, mlp_hidden)
        if modulated:
            self.txt_mod = Modulation(hidden, double=True)
        self.txt_norm1 = _norm(hidden)
        self.txt_attn = SelfAttention(hidden, num_heads, qkv_bias)
        self.txt_norm2 = _norm(hidden)
        self.txt_mlp = _mlp(hidden, mlp_hidden)

    def _qkv(self, x: Tensor, shift: Tensor, scale: Tensor, attn: SelfAttention, norm1):
        q, k, v = split_heads(attn.qkv((1 + scale) * norm1(x) + shift), self.num_heads)
        q, k = attn.norm(q, k, v)
        return q, k, v

    def forward(self, img: Tensor, txt: Tensor, vec: Tensor, pe: tuple[Tensor, Tensor],
                mask: Tensor | None) -> tuple[Tensor, Tensor]:
        if hasattr(self, "img_mod"):
            mods = self.img_mod(vec) + self.txt_mod(vec)
        else:
            mods = vec.split(1, dim=1)
        i_shift1, i_scale1, i_gate1, i_shift2, i_scale2, i_gate2 = mods[:6]
        t_shift1, t_scale1, t_gate1, t_shift2, t_scale2, t_gate2 = mods[6:]
        iq, ik, iv = self._qkv(img, i_shift1, i_scale1, self.img_attn, self.img_norm1)
        tq, tk, tv = self._qkv(txt, t_shift1, t_scale1, self.txt_attn, self.txt_norm1)
        out = attention(torch.cat((tq, iq), 2), torch.cat((tk, ik), 2), torch.cat((tv, iv), 2),
                        pe, mask)
        txt_out, img_out = out[:, :txt.shape[1]], out[:, txt.shape[1]:]
        img = img + i_gate1 * self.img_attn.proj(img_out)
        img = img + i_gate2 * self.img_mlp((1 + i_scale2) * self.img_norm2(img) + i_shift2)
        txt = txt + t_gate1 * self.txt_attn.proj(txt_out)
        txt = txt + t_gate2 * self.txt_mlp((1 + t_scale2) * self.txt_norm2(txt) + t_shift2)
        return img, txt


class SingleStreamBlock(nn.Module):
    """``vec`` as for ``DoubleStreamBlock``; Chroma's is (B, 3, hidden)."""

    def __init__(self, hidden: int, num_heads: int, mlp_ratio: float,
                 modulated: bool = True) -> None:
        super().__init__()
        self.hidden_size = hidden
        self.num_heads = num_heads
        self.mlp_hidden_dim = int(hidden * mlp_ratio)
        self.linear1 = nn.Linear(hidden, hidden * 3 + self.mlp_hidden_dim)
        self.linear2 = nn.Linear(hidden + self.mlp_hidden_dim, hidden)
        self.norm = QKNorm(hidden // num_heads)
        self.pre_norm = _norm(hidden)
        self.mlp_act = nn.GELU(approximate="tanh")
        if modulated:
            self.modulation = Modulation(hidden, double=False)

    def forward(self, x: Tensor, vec: Tensor, pe: tuple[Tensor, Tensor],
                mask: Tensor | None) -> Tensor:
        shift, scale, gate = (self.modulation(vec) if hasattr(self, "modulation")
                              else vec.split(1, dim=1))
        qkv, mlp = torch.split(self.linear1((1 + scale) * self.pre_norm(x) + shift),
                               [3 * self.hidden_size, self.mlp_hidden_dim], dim=-1)
        q, k, v = split_heads(qkv, self.num_heads)
        q, k = self.norm(q, k, v)
        out = attention(q, k, v, pe, mask)
        return x + gate * self.linear2(torch.cat((out, self.mlp_act(mlp)), dim=2))


class LastLayer(nn.Module):
    """Flux.1: (shift, scale) from ``adaLN_modulation(vec)``; Chroma: ``vec`` is its two
    modulation vectors (B, 2, hidden)."""

    def __init__(self, hidden: int, out_channels: int, modulated: bool = True) -> None:
        super().__init__()
        self.norm_final = _norm(hidden)
        self.linear = nn.Linear(hidden, out_channels, bias=True)
        if modulated:
            self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden))

    def forward(self, x: Tensor, vec: Tensor) -> Tensor:
        if hasattr(self, "adaLN_modulation"):
            shift, scale = (t[:, None, :] for t in self.adaLN_modulation(vec).chunk(2, dim=1))
        else:
            shift, scale = vec.split(1, dim=1)
        return self.linear((1 + scale) * self.norm_final(x) + shift)


class Approximator(nn.Module):
    """Chroma's ``distilled_guidance_layer``: an MLP that maps (time, guidance, vector index)
    embeddings to every modulation vector of the model, replacing Flux.1's per-block
    modulation Linears, ``time_in``, ``vector_in`` and ``guidance_in``."""

    def __init__(self, in_dim: int, hidden: int, depth: int, out_dim: int) -> None:
        super().__init__()
        self.in_proj = nn.Linear(in_dim, hidden, bias=True)
        self.layers = nn.ModuleList(MLPEmbedder(hidden, hidden) for _ in range(depth))
        self.norms = nn.ModuleList(RMSNorm(hidden) for _ in range(depth))
        self.out_proj = nn.Linear(hidden, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        x = self.in_proj(x)
        for layer, norm in zip(self.layers, self.norms, strict=True):
            x = x + layer(norm(x))
        return self.out_proj(x)


class Flux(nn.Module):
    """The transformer: packed latent tokens + T5 tokens (+ pooled CLIP) -> velocity tokens.

    Flux.1 (dev, schnell) modulates from ``time_in`` + ``guidance_in`` + ``vector_in``;
    Chroma (``config.is_chroma``) from its ``distilled_guidance_layer``, evaluated without
    gradients as sd-scripts does, and sees each caption's text up to one token past its
    padding mask (sd-scripts' ``attn_padding`` 1).
    """

    def __init__(self, config: FluxConfig) -> None:
        super().__init__()
        self.config = config
        hidden = config.hidden_size
        modulated = not config.is_chroma
        self.img_in = nn.Linear(config.in_channels, hidden, bias=True)
        if config.is_chroma:
            in_dim, approx_hidden, depth = config.approximator
            self.distilled_guidance_layer = Approximator(in_dim, approx_hidden, depth, hidden)
        else:
            self.time_in = MLPEmbedder(TIME_EMBED_DIM, hidden)
            self.vector_in = MLPEmbedder(config.vec_in_dim, hidden)
            if config.guidance_embed:
                self.guidance_in = MLPEmbedder(TIME_EMBED_DIM, hidden)
        self.txt_in = nn.Linear(config.context_in_dim, hidden)
        self.double_blocks = nn.ModuleList(
            DoubleStreamBlock(hidden, config.num_heads, config.mlp_ratio, config.qkv_bias,
                              modulated) for _ in range(config.depth))
        self.single_blocks = nn.ModuleList(
            SingleStreamBlock(hidden, config.num_heads, config.mlp_ratio, modulated)
            for _ in range(config.depth_single_blocks))
        self.final_layer = LastLayer(hidden, config.in_channels, modulated)
        self.gradient_checkpointing = False
        self.cpu_offload_checkpointing = False

    def enable_gradient_checkpointing(self, enabled: bool = True, cpu_offload: bool = False
                                      ) -> None:
        """Recompute each block's activations in backward instead of keeping them;
        ``cpu_offload``: keep the inputs saved for the recompute in CPU memory
        (``models/offloaded_checkpointing.py``)."""
        self.gradient_checkpointing = enabled
        self.cpu_offload_checkpointing = enabled and cpu_offload

    def _run(self, block: nn.Module, *args):
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            if self.cpu_offload_checkpointing:
                from lora_core.models.offloaded_checkpointing import offloaded_checkpoint

                return offloaded_checkpoint(block, *args)
            return checkpoint(block, *args, use_reentrant=False)
        return block(*args)

    def _flux_vec(self, timesteps: Tensor, guidance: Tensor | None, y: Tensor, dtype):
        vec = self.time_in(timestep_embedding(timesteps, TIME_EMBED_DIM).to(dtype))
        if self.config.guidance_embed:
            if guidance is None:
                raise ValueError("this Flux model is guidance-distilled (dev): pass guidance")
            vec = vec + self.guidance_in(timestep_embedding(guidance, TIME_EMBED_DIM).to(dtype))
        return vec + self.vector_in(y.to(dtype))

    @torch.no_grad()
    def chroma_mod_vectors(self, timesteps: Tensor, guidance: Tensor, dtype) -> Tensor:
        """Chroma's (B, num_mod_vectors, hidden) modulation: the approximator applied to
        [emb(t) | emb(guidance) | emb(vector index)] (quarter, quarter, half its width)."""
        in_dim = self.config.approximator[0]
        count = self.config.num_mod_vectors
        batch = timesteps.shape[0]
        index = timestep_embedding(torch.arange(count, device=timesteps.device), in_dim // 2)
        cond = torch.cat([timestep_embedding(timesteps, in_dim // 4),
                          timestep_embedding(guidance, in_dim // 4)], dim=1)
        x = torch.cat([cond[:, None, :].expand(-1, count, -1),
                       index[None].expand(batch, -1, -1)], dim=-1)
        return self.distilled_guidance_layer(x.to(dtype))

    def _chroma_mask(self, txt_mask: Tensor | None, txt_len: int) -> Tensor | None:
        if txt_mask is None:
            return None
        keep = (txt_mask[:, :txt_len].sum(dim=-1) + 1).clamp(0, txt_len)
        return torch.arange(txt_len, device=txt_mask.device)[None, :] < keep[:, None]

    def forward(self, img: Tensor, img_ids: Tensor, txt: Tensor, txt_ids: Tensor,
                timesteps: Tensor, y: Tensor | None, guidance: Tensor | None = None,
                txt_attention_mask: Tensor | None = None) -> Tensor:
        """``img`` (B, L_img, in_channels) packed latents, ``txt`` (B, L_txt, context) T5
        states, ``timesteps`` (B,) in [0, 1] (sigma), ``y`` (B, vec_in_dim) pooled CLIP (None
        for Chroma), ``guidance`` (B,) for guidance-distilled (dev) models and Chroma.
        Returns (B, L_img, in_channels)."""
        if img.ndim != 3 or txt.ndim != 3:
            raise ValueError("img and txt must be (batch, tokens, channels)")
        # Everything runs in the dtype the inputs come in (fp8-stored layers upcast to it).
        img = self.img_in(img)
        txt = self.txt_in(txt.to(img.dtype))
        c = self.config
        if c.is_chroma:
            if guidance is None:
                raise ValueError("Chroma's modulation needs the guidance value: pass guidance")
            mods = self.chroma_mod_vectors(timesteps, guidance, img.dtype)
            single_at, txt_at, final_at = 0, 3 * c.depth_single_blocks + 6 * c.depth, \
                3 * c.depth_single_blocks + 12 * c.depth
            img_at = 3 * c.depth_single_blocks
            double_vecs = [torch.cat([mods[:, img_at + 6 * i:img_at + 6 * i + 6],
                                      mods[:, txt_at + 6 * i:txt_at + 6 * i + 6]], dim=1)
                           for i in range(c.depth)]
            single_vecs = [mods[:, single_at + 3 * i:single_at + 3 * i + 3]
                           for i in range(c.depth_single_blocks)]
            final_vec = mods[:, final_at:final_at + 2]
            txt_attention_mask = self._chroma_mask(txt_attention_mask, txt.shape[1])
        else:
            vec = self._flux_vec(timesteps, guidance, y, img.dtype)
            double_vecs = [vec] * c.depth
            single_vecs = [vec] * c.depth_single_blocks
            final_vec = vec
        pe = rope_angles(torch.cat((txt_ids, img_ids), dim=1), c.axes_dim, c.theta)
        mask = joint_mask(txt_attention_mask, txt.shape[1] + img.shape[1], c.num_heads)
        for block, vec in zip(self.double_blocks, double_vecs, strict=True):
            img, txt = self._run(block, img, txt, vec, pe, mask)
        x = torch.cat((txt, img), dim=1)
        for block, vec in zip(self.single_blocks, single_vecs, strict=True):
            x = self._run(block, x, vec, pe, mask)
        return self.final_layer(x[:, txt.shape[1]:], final_vec)
