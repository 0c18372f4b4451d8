"""What every network type shares: wrapping one layer, the dropouts, and the network itself.

An *adapter module* adds a trained update ΔW to one ``Linear`` or ``Conv2d`` of the frozen
model without touching its weights: it replaces the layer's ``forward`` with

    y = W x + ΔW x · multiplier

(for convolutions ``ΔW x`` is a convolution with the layer's stride, padding, dilation and
groups). The types differ only in how ΔW is parameterised: LoRA/LoCon as ``up @ down``
(lora.py), LoHa as a Hadamard product (loha.py), LoKr as a Kronecker product (lokr.py).

Dropouts act in training mode only (kohya-compat.md §6.4):

* ``module_dropout`` p: with probability p the module is skipped for this forward (ΔW = 0).
* ``rank_dropout`` p: a random share p of the update's channels is zeroed and the rest are
  scaled by 1/(1−p), so the expected update is unchanged. Which channels depends on the type
  (the rank channels for LoRA, the output rows of ΔW for LoHa/LoKr).
* ``dropout`` (``network_dropout``) p: ordinary dropout (see each type for where).

The :class:`AdapterNetwork` holds the modules under their kohya names, so its
``state_dict()`` keys are exactly the file keys. This module builds nothing (build.py does)
and reads no files (weights.py does).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class AdapterModule(nn.Module):
    """Base of every adapter: the wrapped layer, multiplier, dropouts, ``scale``.

    Subclasses define ``delta_weight()`` (ΔW · scale, in the layer's weight shape, without the
    multiplier or any dropout), ``factors()`` (the tensors ΔW is linear in, each separately,
    which max-norm rescales) and ``refresh_scale()`` (``scale`` from the ``alpha`` buffer).
    """

    #: The network type this module implements, as the profile names it.
    kind = ""

    def __init__(self, lora_name: str, org_module: nn.Module, multiplier: float = 1.0,
                 dropout: float | None = None, rank_dropout: float | None = None,
                 module_dropout: float | None = None) -> None:
        super().__init__()
        if not isinstance(org_module, (nn.Linear, nn.Conv2d)):
            raise TypeError(f"{lora_name}: only Linear and Conv2d layers can be adapted, "
                            f"not {type(org_module).__name__}")
        self.lora_name = lora_name
        self.multiplier = multiplier
        self.dropout = dropout
        self.rank_dropout = rank_dropout
        self.module_dropout = module_dropout
        self.is_conv = isinstance(org_module, nn.Conv2d)
        self.weight_shape = tuple(org_module.weight.shape)
        self.is_conv3x3 = self.is_conv and tuple(org_module.kernel_size) != (1, 1)
        # A plain list keeps the original out of this module's parameters and state dict.
        self._org: list[nn.Module] = [org_module]
        self._org_forward = None
        self.scale = 1.0

    # --- wrapping -------------------------------------------------------------------------

    def apply_to(self) -> None:
        org = self._org[0]
        self._org_forward = org.forward
        org.forward = self.forward

    def remove(self) -> None:
        if self._org_forward is not None:
            self._org[0].forward = self._org_forward
            self._org_forward = None

    def module_dropped(self) -> bool:
        """True when module dropout skips this module for the current forward."""
        return bool(self.module_dropout) and self.training and (
            torch.rand(()).item() < self.module_dropout)

    def apply_weight(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """``weight`` applied to ``x`` the way the wrapped layer applies its own (no bias)."""
        if not self.is_conv:
            return F.linear(x, weight)
        org = self._org[0]
        return F.conv2d(x, weight, None, org.stride, org.padding, org.dilation, org.groups)

    # --- what subclasses define ------------------------------------------------------------

    def delta_weight(self) -> torch.Tensor:
        raise NotImplementedError

    def factors(self) -> list[nn.Parameter]:
        raise NotImplementedError

    def refresh_scale(self) -> None:
        raise NotImplementedError

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        # ``alpha`` may come from a file: keep the cached scale in step with it.
        super()._load_from_state_dict(*args, **kwargs)
        self.refresh_scale()


class DeltaWeightModule(AdapterModule):
    """An adapter whose forward builds ΔW and applies it as a second layer (LoHa, LoKr).

        y = W x + drop(ΔW' x) · multiplier · c

    ``ΔW'`` is ΔW with each output row kept with probability 1−p under rank dropout and
    ``c = 1/(1−p)`` (sd-scripts' LoHa/LoKr, branch feat-support-lokr-loha; c = 1 without rank
    dropout); ``drop`` is ``network_dropout`` on the update's output, where LyCORIS applies
    it (its bypass mode: the factors have no rank-space activation to drop).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base = self._org_forward(x)
        if self.module_dropped():
            return base
        delta = self.delta_weight()
        gain = self.multiplier
        if self.rank_dropout and self.training:
            keep = torch.rand(delta.shape[0], device=delta.device) > self.rank_dropout
            delta = delta * keep.to(delta.dtype).view(-1, *[1] * (delta.dim() - 1))
            gain = gain / (1.0 - self.rank_dropout)
        out = self.apply_weight(x.to(delta.dtype), delta)
        if self.dropout and self.training:
            out = F.dropout(out, p=self.dropout)
        return base + (out * gain).to(base.dtype)


class AdapterNetwork(nn.Module):
    """All adapter modules of one model, registered under their kohya names.

    ``state_dict()`` keys are the file keys (``<lora_name>.<field>``); ``text_encoder_names``
    and ``unet_names`` list the modules of each side (for parameter groups);
    ``skipped_names`` the targets that got no module (block rank or LR weight 0).
    """

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.text_encoder_names: list[str] = []
        self.unet_names: list[str] = []
        self.skipped_names: list[str] = []

    def add(self, module: AdapterModule, text_encoder: bool) -> None:
        self.add_module(module.lora_name, module)
        (self.text_encoder_names if text_encoder else self.unet_names).append(module.lora_name)

    def lora_modules(self) -> list[AdapterModule]:
        return [m for m in self.children() if isinstance(m, AdapterModule)]

    def apply_to(self) -> None:
        for module in self.lora_modules():
            module.apply_to()

    def set_multiplier(self, multiplier: float) -> None:
        """The strength every module applies its update with (``network_multiplier``)."""
        for module in self.lora_modules():
            module.multiplier = multiplier

    def remove(self) -> None:
        for module in self.lora_modules():
            module.remove()

    def training_state(self) -> dict[str, torch.Tensor]:
        """What a training state saves of the network to resume it exactly (here the file's
        tensors; LycorisFamilyNetwork keeps its raw parameters instead)."""
        return self.state_dict()

    def load_training_state(self, state: dict[str, torch.Tensor]) -> None:
        self.load_state_dict(state, strict=True)

    def parameters_of(self, names: list[str]) -> list[nn.Parameter]:
        return [p for name in names for p in getattr(self, name).parameters()]
