"""DoRA and the rest of the LyCORIS family, with the lycoris-lora package doing the maths.

``network_module = "lycoris.kohya"`` with ``network_args = ["algo=..."]`` (or the type's own
name: Full, IA3, DiagOFT, BOFT, GLoRA, DyLoRA) and ``dora_wd`` on LoRA / LoCon / LoHa / LoKr.
The modules are lycoris-lora's own classes (``lycoris.modules``: LoConModule, LohaModule and
LokrModule with ``weight_decompose``, FullModule, IA3Module, DiagOFTModule,
ButterflyOFTModule, GLoRAModule), so forward passes, initialisation and the saved tensors are
exactly LyCORIS' and its key names (``dora_scale``, ``oft_blocks``, ``diff``, ``on_input``,
``a1.weight``...) are what A1111/Forge and ComfyUI read. What is ours is *which* layers they
wrap and the names they are saved under: the targets and kohya names of naming.py, the same
as sd-scripts' for every type. LyCORIS' own kohya wrapper is not used: it names modules from
the live module paths (wrong for SDXL's U-Net, which sd-scripts names in the original layout,
and for text encoders under transformers 5) and its default preset wraps layers sd-scripts
leaves alone.

Why the four classic types without DoRA stay ours (lora.py, loha.py, lokr.py): their rank
dropout is sd-scripts' (LyCORIS defines it differently for LoHa/LoKr, as its source says),
their max-norm and resume behaviour are tested bit for bit, and they cost nothing extra.
Why DyLoRA is ours too (lora.DyLoRAModule): lycoris-lora 4.1's DyLoraModule ignores
``load_state_dict`` (a reloaded module differs from the saved one: measured up to 0.42 on a
probe layer), and draws a random rank on every forward, evaluation included, so samples and
saved files would not be reproducible.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch
from torch import nn

from lora_core.errors import ProfileError
from lora_core.network.adapter import AdapterNetwork
from lora_core.network.naming import Target
from lora_core.profile import NetworkSection, uses_lycoris

__all__ = ["LycorisFamilyNetwork", "make_module", "uses_lycoris"]

# network type -> lycoris.modules class name (with DoRA for the classic four)
_CLASSES = {"LoRA": "LoConModule", "LoCon": "LoConModule", "LoHa": "LohaModule",
            "LoKr": "LokrModule", "Full": "FullModule", "IA3": "IA3Module",
            "DiagOFT": "DiagOFTModule", "BOFT": "ButterflyOFTModule", "GLoRA": "GLoRAModule"}


def lycoris_modules() -> Any:
    try:
        import lycoris.modules as modules
    except ImportError as exc:
        raise ProfileError(
            f"this network type needs the lycoris-lora package, which cannot be imported "
            f"({exc})", "pip install lycoris-lora") from None
    return modules


class LycorisFamilyNetwork(AdapterNetwork):
    """An AdapterNetwork of lycoris-lora modules: ``state_dict()`` is LyCORIS' (its
    modules' custom state dicts) under the kohya names, and loading one back goes through
    LyCORIS' own load hooks."""

    def lora_modules(self) -> list[nn.Module]:  # type: ignore[override]
        return list(self.children())

    def apply_to(self) -> None:
        for module in self.lora_modules():
            module.apply_to()

    def _raw(self) -> dict[str, torch.Tensor]:
        return dict(itertools.chain(self.named_parameters(), self.named_buffers()))

    def training_state(self) -> dict[str, torch.Tensor]:
        """The raw parameters and buffers, not LyCORIS' file form: its modules' state dicts
        depend on whether they are applied (Full saves W − W0 only once applied, and its
        load hook adds the current weight), so a resume copies the tensors back as they
        were, bit for bit, without going through the hooks."""
        return {name: tensor.detach() for name, tensor in self._raw().items()}

    def load_training_state(self, state: dict[str, torch.Tensor]) -> None:
        own = self._raw()
        if own.keys() != state.keys():
            missing = sorted(own.keys() - state.keys())[:3]
            extra = sorted(state.keys() - own.keys())[:3]
            raise KeyError(f"the saved network does not match: missing {missing}, "
                           f"unexpected {extra}")
        with torch.no_grad():
            for name, tensor in own.items():
                tensor.copy_(state[name])

    def remove(self) -> None:
        for module in self.lora_modules():
            module.restore()


def make_module(target: Target, rank: int, alpha: float, net: NetworkSection) -> nn.Module:
    """One lycoris-lora module for ``target`` with the profile's options."""
    kind = net.network_module
    cls = getattr(lycoris_modules(), _CLASSES[kind])
    options: dict[str, Any] = {
        "multiplier": 1.0, "lora_dim": rank, "alpha": alpha,
        "dropout": net.network_dropout or 0.0, "rank_dropout": net.rank_dropout or 0.0,
        "module_dropout": net.module_dropout or 0.0,
        # The classic types with DoRA; the others take no such option.
        "weight_decompose": bool(net.dora_wd) and kind in ("LoRA", "LoCon", "LoHa", "LoKr"),
    }
    if kind == "LoKr":
        options["factor"] = net.factor
    if kind in ("DiagOFT", "BOFT"):
        options["constraint"] = net.constraint
        options["rescaled"] = net.rescaled
    if kind == "IA3":
        options["train_on_input"] = net.train_on_input
    module = cls(target.lora_name, target.module, **options)
    if getattr(module, "not_supported", False):
        raise ProfileError(f"{kind} cannot adapt layer {target.lora_name} "
                           f"({type(target.module).__name__})",
                           "pick another network_module for this model")
    module.kind = f"{kind} (DoRA)" if options["weight_decompose"] else kind
    module.is_conv3x3 = target.is_conv3x3
    module.rank = rank
    return module
