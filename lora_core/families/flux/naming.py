"""Which Flux modules get a LoRA and their names: sd-scripts' ``networks.lora_flux``.

Rules (read from sd-scripts' ``networks/lora_flux.py``):

* DiT: every ``Linear`` inside a ``DoubleStreamBlock`` / ``SingleStreamBlock`` (``train_blocks``
  "all", the default; "double" or "single" keeps one kind), prefix ``lora_unet`` (ComfyUI
  compatible): ``lora_unet_double_blocks_0_img_attn_qkv``, ``…_img_attn_proj``,
  ``…_img_mlp_0``, ``…_img_mlp_2``, ``…_img_mod_lin`` and the ``txt_`` ones,
  ``lora_unet_single_blocks_0_linear1``, ``…_linear2``, ``…_modulation_lin``. Model order:
  double blocks, then single blocks.
* ``in_dims`` [img, time, vector, guidance, txt]: extra modules on ``img_in``,
  ``time_in.{in,out}_layer``, ``vector_in.…``, ``guidance_in.…``, ``txt_in`` with those ranks
  (0 = none), after the blocks.
* Per-type ranks (``img_attn_dim``, ``txt_attn_dim``, ``img_mlp_dim``, ``txt_mlp_dim``,
  ``img_mod_dim``, ``txt_mod_dim``, ``single_dim`` (single linear1/linear2),
  ``single_mod_dim``); rank 0 drops the module.
* ``train_double_block_indices`` / ``train_single_block_indices`` ("all", "none", "0,2-4"):
  blocks not listed get no module. (sd-scripts checks indices against 19 / 38; here against
  the model's own block counts.)
* Text encoders: the ``Linear`` children of ``CLIPAttention`` / ``CLIPSdpaAttention`` /
  ``CLIPMLP`` (``lora_te1_text_model_encoder_layers_0_self_attn_q_proj`` — with the
  ``text_model_`` segment of transformers 4.x paths) and, with ``train_t5xxl``, of
  ``T5Attention`` / ``T5DenseGatedActDense`` (``lora_te3_encoder_block_0_layer_0_SelfAttention_q``).
* ``split_qkv``: trained as separate q/k/v (and MLP) pieces but saved merged, so the file has
  the same names with down (n·rank, in) and a block-diagonal up (out, n·rank), n = 3 for a
  double block's qkv and 4 for a single block's linear1 (sd-scripts' ``state_dict``).
  ``alpha`` is the base alpha, so these modules load back with scale alpha/(n·rank).

Not covered (they do not change which names a file has or are training-only): dropout
arguments, ``loraplus_*``, ``network_reg_lrs``, ``ggpo_*``, ``verbose``. ``network_reg_dims``
(regex → rank) is covered, on every module as in sd-scripts (text encoders and the in_dims
layers too: there a match makes a module even where the in_dims rank is 0). ``conv_dim``
does not apply (Flux has no convs in its blocks).

Nothing here changes a model; it finds modules and names them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

from lora_core.errors import ProfileError
from lora_core.network.naming import text_encoder_path
from lora_core.profile_flux import (  # the check parses block indices too
    TYPE_DIM_FIELDS,
    FluxSection,
    parse_block_selection,
    parse_reg_dims,
)

PREFIX_DIT = "lora_unet"
PREFIX_CLIP_L = "lora_te1"
PREFIX_T5 = "lora_te3"
DOUBLE_CLASS, SINGLE_CLASS = "DoubleStreamBlock", "SingleStreamBlock"
CLIP_TARGETS = ("CLIPAttention", "CLIPSdpaAttention", "CLIPMLP")
T5_TARGETS = ("T5Attention", "T5DenseGatedActDense")
TRAIN_BLOCKS = ("all", "single", "double")
IN_DIM_MODULES = ("img_in", "time_in", "vector_in", "guidance_in", "txt_in")
# sd-scripts' type_dims order and the name fragments each one matches (all must occur).
TYPE_DIMS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("img_attn_dim", ("img_attn",)), ("txt_attn_dim", ("txt_attn",)),
    ("img_mlp_dim", ("img_mlp",)), ("txt_mlp_dim", ("txt_mlp",)),
    ("img_mod_dim", ("img_mod",)), ("txt_mod_dim", ("txt_mod",)),
    ("single_dim", ("single_blocks", "linear")), ("single_mod_dim", ("modulation",)))


@dataclass(frozen=True)
class FluxNetworkArgs:
    """The ``network_args`` of ``networks.lora_flux`` that change which modules a file has
    or their shapes. ``None`` means "not given" (sd-scripts' defaults)."""

    train_blocks: str = "all"
    split_qkv: bool = False
    train_t5xxl: bool = False
    type_dims: tuple[tuple[str, int], ...] = ()  # (name from TYPE_DIMS, rank)
    in_dims: tuple[int, int, int, int, int] | None = None
    train_double_block_indices: str | None = None
    train_single_block_indices: str | None = None
    reg_dims: tuple[tuple[str, int], ...] = ()  # (regex, rank), first match wins

    def __post_init__(self) -> None:
        if self.train_blocks not in TRAIN_BLOCKS:
            raise ProfileError(f"network_args.train_blocks: '{self.train_blocks}' is not one of "
                               f"{', '.join(TRAIN_BLOCKS)}", "use all, single or double")
        known = {name for name, _ in TYPE_DIMS}
        for name, _ in self.type_dims:
            if name not in known:
                raise ProfileError(f"network_args: unknown per-type rank '{name}'",
                                   f"the per-type ranks are: {', '.join(sorted(known))}")
        if self.in_dims is not None and len(self.in_dims) != 5:
            raise ProfileError("network_args.in_dims must have 5 ranks "
                               "[img, time, vector, guidance, txt]", "e.g. in_dims=[4,0,0,0,4]")


def lora_flux_args(fx: FluxSection) -> FluxNetworkArgs:
    """``[flux]``'s networks.lora_flux fields (sd-scripts' network_args) for the naming."""
    return FluxNetworkArgs(
        train_blocks=fx.train_blocks, split_qkv=fx.split_qkv, train_t5xxl=fx.train_t5xxl,
        type_dims=tuple((name, getattr(fx, name)) for name in TYPE_DIM_FIELDS
                        if getattr(fx, name) is not None),
        in_dims=fx.in_dims, train_double_block_indices=fx.train_double_block_indices,
        train_single_block_indices=fx.train_single_block_indices,
        reg_dims=parse_reg_dims(fx.network_reg_dims) if fx.network_reg_dims else ())


@dataclass(frozen=True)
class FluxTarget:
    """One module to wrap: its sd-scripts name, the Linear, its rank and alpha, and the
    output split sizes when trained split (``split_qkv``)."""

    lora_name: str
    module: nn.Linear
    rank: int
    alpha: float
    split_dims: tuple[int, ...] | None = None

    def file_shapes(self) -> dict[str, tuple[int, ...]]:
        """Shapes of this module's tensors in the saved file."""
        pieces = len(self.split_dims) if self.split_dims else 1
        return {f"{self.lora_name}.lora_down.weight": (self.rank * pieces,
                                                         self.module.in_features),
                f"{self.lora_name}.lora_up.weight": (self.module.out_features,
                                                       self.rank * pieces),
                f"{self.lora_name}.alpha": ()}


def _linears(root: nn.Module, classes: tuple[str, ...]):
    """(parent path, child path, Linear) for every Linear under a module of ``classes``."""
    for parent_path, parent in root.named_modules():
        if type(parent).__name__ in classes:
            for child_path, child in parent.named_modules():
                if isinstance(child, nn.Linear):
                    yield parent_path, child_path, child


def _name(prefix: str, path: str) -> str:
    return f"{prefix}.{path}".replace(".", "_")


def dit_targets(flux: nn.Module, rank: int, alpha: float,
                args: FluxNetworkArgs = FluxNetworkArgs()) -> list[FluxTarget]:
    """The DiT's modules, named and ranked as ``networks.lora_flux`` does."""
    classes = {"all": (DOUBLE_CLASS, SINGLE_CLASS), "double": (DOUBLE_CLASS,),
               "single": (SINGLE_CLASS,)}[args.train_blocks]
    double_mask = single_mask = None
    n_double = sum(1 for m in flux.modules() if type(m).__name__ == DOUBLE_CLASS)
    n_single = sum(1 for m in flux.modules() if type(m).__name__ == SINGLE_CLASS)
    if args.train_double_block_indices is not None:
        double_mask = parse_block_selection(args.train_double_block_indices, n_double,
                                            "train_double_block_indices")
    if args.train_single_block_indices is not None:
        single_mask = parse_block_selection(args.train_single_block_indices, n_single,
                                            "train_single_block_indices")
    type_ranks = dict(args.type_dims)
    config = getattr(flux, "config", None)
    targets: list[FluxTarget] = []
    for parent_path, child_path, linear in _linears(flux, classes):
        name = _name(PREFIX_DIT, f"{parent_path}.{child_path}")
        dim = _regex_rank(name, args.reg_dims)
        if dim is None:
            dim = rank
            for type_name, fragments in TYPE_DIMS:
                if type_name in type_ranks and all(f in name for f in fragments):
                    dim = type_ranks[type_name]
                    break
            block = int(parent_path.split(".")[1])
            if dim and "double" in name and double_mask is not None and not double_mask[block]:
                dim = 0
            if dim and "single" in name and single_mask is not None and not single_mask[block]:
                dim = 0
        if not dim:
            continue
        split = None
        if args.split_qkv and config is not None:
            if "double" in name and "qkv" in name:
                split = (config.hidden_size,) * 3
            elif "single" in name and "linear1" in name:
                split = (config.hidden_size,) * 3 + (config.mlp_hidden_dim,)
        targets.append(FluxTarget(name, linear, dim, alpha, split))
    if args.in_dims is not None:
        for module_name, in_dim in zip(IN_DIM_MODULES, args.in_dims, strict=True):
            if not hasattr(flux, module_name):
                continue
            for path, child in getattr(flux, module_name).named_modules():
                if isinstance(child, nn.Linear):
                    name = _name(PREFIX_DIT, f"{module_name}.{path}" if path else module_name)
                    dim = _regex_rank(name, args.reg_dims)  # sd-scripts: before in_dims too
                    dim = in_dim if dim is None else dim
                    if dim:
                        targets.append(FluxTarget(name, child, dim, alpha))
    return targets


def _regex_rank(name: str, reg_dims: tuple[tuple[str, int], ...]) -> int | None:
    for pattern, dim in reg_dims:
        if re.search(pattern, name):
            return dim
    return None


def _ranked(named, rank: int, alpha: float, reg_dims) -> list[FluxTarget]:
    """Text-encoder targets at ``rank``, or the first matching ``reg_dims`` rank (sd-scripts
    applies network_reg_dims to every module; 0 drops it)."""
    targets = []
    for name, module in named:
        dim = _regex_rank(name, reg_dims)
        dim = rank if dim is None else dim
        if dim:
            targets.append(FluxTarget(name, module, dim, alpha))
    return targets


def clip_l_targets(clip_l: nn.Module, rank: int, alpha: float,
                   reg_dims: tuple[tuple[str, int], ...] = ()) -> list[FluxTarget]:
    """CLIP-L's modules (``lora_te1_text_model_…``), whatever transformers version runs."""
    return _ranked(((_name(PREFIX_CLIP_L, text_encoder_path(f"{p}.{c}")), m)
                    for p, c, m in _linears(clip_l, CLIP_TARGETS)), rank, alpha, reg_dims)


def t5_targets(t5: nn.Module, rank: int, alpha: float,
               reg_dims: tuple[tuple[str, int], ...] = ()) -> list[FluxTarget]:
    """T5's modules (``lora_te3_encoder_block_…``), only with ``train_t5xxl``."""
    return _ranked(((_name(PREFIX_T5, f"{p}.{c}"), m) for p, c, m in _linears(t5, T5_TARGETS)),
                   rank, alpha, reg_dims)


def network_targets(flux: nn.Module, clip_l: nn.Module | None, t5: nn.Module | None,
                    rank: int, alpha: float, args: FluxNetworkArgs = FluxNetworkArgs(),
                    train_text_encoder: bool = True) -> list[FluxTarget]:
    """Every module of a ``networks.lora_flux`` network: text encoders first (CLIP-L, then
    T5 with ``train_t5xxl``), then the DiT, as sd-scripts orders them."""
    targets: list[FluxTarget] = []
    if train_text_encoder and clip_l is not None:
        targets += clip_l_targets(clip_l, rank, alpha, args.reg_dims)
    if train_text_encoder and args.train_t5xxl and t5 is not None:
        targets += t5_targets(t5, rank, alpha, args.reg_dims)
    targets += dit_targets(flux, rank, alpha, args)
    names = [t.lora_name for t in targets]
    if len(set(names)) != len(names):
        raise ValueError("duplicate LoRA module names")
    return targets
