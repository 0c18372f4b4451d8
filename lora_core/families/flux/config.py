"""The shape of a Flux DiT, read from its tensors' shapes (never assumed).

Black Forest Labs' reference code hard-codes two configs (dev, schnell); files in the wild
differ (Flex-style files with fewer double blocks, tiny test models), so every number here is
read from the file's header: blocks are counted, widths come from weight shapes and the head
size from the q/k RMSNorm scale (one value per channel of a head).

Pure Python on purpose (no torch): ``check`` and the wizard can size a model from the
safetensors header alone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from lora_core.errors import ModelError

# Reference values (BFL's flux/util.py, sd-scripts' flux_models.configs): theta and the
# rope axes are not stored in a file; every released Flux.1 uses these.
ROPE_THETA = 10_000
REFERENCE_AXES_DIM = (16, 56, 56)  # for 128-wide heads
TIME_EMBED_DIM = 256  # sinusoidal width fed to time_in / guidance_in
LATENT_CHANNELS_PER_TOKEN = 64  # 16 AE channels packed 2x2

VARIANTS = ("dev", "schnell", "chroma")


@dataclass(frozen=True)
class FluxConfig:
    """sd-scripts' ``FluxParams`` plus the variant; constructor arguments are the config."""

    in_channels: int
    vec_in_dim: int
    context_in_dim: int
    hidden_size: int
    mlp_ratio: float
    num_heads: int
    depth: int
    depth_single_blocks: int
    axes_dim: tuple[int, ...]
    theta: int = ROPE_THETA
    qkv_bias: bool = True
    guidance_embed: bool = True
    # Chroma: the distilled guidance layer (in width, hidden width, depth); None for Flux.1.
    approximator: tuple[int, int, int] | None = None

    @property
    def is_chroma(self) -> bool:
        return self.approximator is not None

    @property
    def takes_guidance(self) -> bool:
        """Whether the model reads a guidance value (dev's ``guidance_in``; Chroma's
        approximator); schnell has none."""
        return self.guidance_embed or self.is_chroma

    @property
    def num_mod_vectors(self) -> int:
        """Chroma's modulation vectors: 3 per single block, 12 per double block, 2 final."""
        return 3 * self.depth_single_blocks + 12 * self.depth + 2

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def mlp_hidden_dim(self) -> int:
        return int(self.hidden_size * self.mlp_ratio)

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of "
                             f"num_heads {self.num_heads}")
        if sum(self.axes_dim) != self.head_dim or any(a % 2 for a in self.axes_dim):
            raise ValueError(f"axes_dim {self.axes_dim} must be even numbers that add up to "
                             f"the head size {self.head_dim}")


def default_axes_dim(head_dim: int) -> tuple[int, int, int]:
    """Rope axes for a head size: Flux's (16, 56, 56) for 128; for other sizes the same
    proportions (1/8 for the unused first axis, the rest split between height and width),
    every part even. No released Flux file has another head size; this keeps small test
    models usable."""
    if head_dim == 128:
        return REFERENCE_AXES_DIM
    if head_dim < 6 or head_dim % 2:
        raise ValueError(f"head size {head_dim} is too small or odd for 3-axis rope")
    first = max(2, (head_dim // 8) // 2 * 2)
    rest = head_dim - first
    height = rest // 2 // 2 * 2
    return first, height, rest - height


def count_blocks(keys, prefix: str) -> int:
    """Number of ``prefix.N.`` blocks (highest index + 1; 0 when there is none)."""
    pattern = re.compile(rf"^{re.escape(prefix)}\.(\d+)\.")
    indices = [int(m.group(1)) for k in keys if (m := pattern.match(k))]
    return max(indices) + 1 if indices else 0


def _shape(shapes: dict[str, tuple[int, ...]], key: str, where: str) -> tuple[int, ...]:
    try:
        return tuple(shapes[key])
    except KeyError:
        raise ModelError(f"{where}: the Flux file has no tensor '{key}'",
                         "the file is incomplete or not a Flux.1 transformer; pass the "
                         "flux1-dev/schnell .safetensors (or a Chroma file)") from None


def config_from_shapes(shapes: dict[str, tuple[int, ...]], *, where: str = "model",
                       axes_dim: tuple[int, ...] | None = None) -> FluxConfig:
    """Build the config from BFL-layout tensor shapes (``{key: shape}``).

    ``where`` names the file or field in error messages. Chroma files (no ``time_in`` /
    ``vector_in``, a ``distilled_guidance_layer``) give ``vec_in_dim`` 0, ``guidance_embed``
    False and the ``approximator`` sizes.
    """
    hidden, in_channels = _shape(shapes, "img_in.weight", where)
    _, context_in_dim = _shape(shapes, "txt_in.weight", where)
    depth = count_blocks(shapes, "double_blocks")
    depth_single = count_blocks(shapes, "single_blocks")
    if depth == 0 and depth_single == 0:
        raise ModelError(f"{where}: the file has no double_blocks.N / single_blocks.N tensors",
                         "pass a Flux.1 transformer file in Black Forest Labs' or diffusers' "
                         "layout")
    if depth:
        (head_dim,) = _shape(shapes, "double_blocks.0.img_attn.norm.query_norm.scale", where)
        mlp_hidden = _shape(shapes, "double_blocks.0.img_mlp.0.weight", where)[0]
        qkv_bias = "double_blocks.0.img_attn.qkv.bias" in shapes
    else:
        (head_dim,) = _shape(shapes, "single_blocks.0.norm.query_norm.scale", where)
        mlp_hidden = _shape(shapes, "single_blocks.0.linear1.weight", where)[0] - 3 * hidden
        qkv_bias = True
    if head_dim <= 0 or hidden % head_dim:
        raise ModelError(f"{where}: the q/k norm scale ({head_dim}) does not divide the width "
                         f"{hidden}", "the file is damaged or not a Flux.1 transformer")
    vec_in_dim = (_shape(shapes, "vector_in.in_layer.weight", where)[1]
                  if "vector_in.in_layer.weight" in shapes else 0)
    approximator = None
    if "distilled_guidance_layer.in_proj.weight" in shapes:
        approx_hidden, approx_in = shapes["distilled_guidance_layer.in_proj.weight"]
        approximator = (approx_in, approx_hidden,
                        count_blocks(shapes, "distilled_guidance_layer.layers"))
    return FluxConfig(
        in_channels=in_channels,
        vec_in_dim=vec_in_dim,
        context_in_dim=context_in_dim,
        hidden_size=hidden,
        mlp_ratio=mlp_hidden / hidden,
        num_heads=hidden // head_dim,
        depth=depth,
        depth_single_blocks=depth_single,
        axes_dim=tuple(axes_dim) if axes_dim is not None else default_axes_dim(head_dim),
        qkv_bias=qkv_bias,
        guidance_embed="guidance_in.in_layer.weight" in shapes,
        approximator=approximator,
    )


def split_blocks_to_swap(blocks_to_swap: int) -> tuple[int, int]:
    """sd-scripts' split of ``blocks_to_swap`` into (double, single) blocks."""
    double = blocks_to_swap // 2
    return double, (blocks_to_swap - double) * 2


def max_blocks_to_swap(depth: int, depth_single: int) -> int:
    """The largest ``blocks_to_swap`` that leaves two blocks of each kind resident."""
    best = 0
    for n in range(1, 2 * (depth + depth_single)):
        double, single = split_blocks_to_swap(n)
        if double <= depth - 2 and single <= depth_single - 2:
            best = n
    return best
