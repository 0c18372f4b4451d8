"""Max-norm regularisation (``scale_weight_norms``), called after each optimizer step.

sd-scripts' ``apply_max_norm_regularization`` (networks/lora.py; kohya-compat.md §6.6),
for every module, text encoder and U-Net alike:

    n = max(‖ΔW‖_F, m/2)        ΔW = the module's update · alpha/rank (multiplier 1)
    r = min(n, m) / n           (r = 1 unless ‖ΔW‖ > m)
    every factor of ΔW *= r^(1/k)

where k is the number of factors ΔW is linear in, each separately: scaling each of them by
r^(1/k) scales ΔW by exactly r, so its norm becomes m. LoRA/LoCon: k = 2 (``up``, ``down``
by √r, as sd-scripts); LoHa: k = 4 (``w1_a``, ``w1_b``, ``w2_a``, ``w2_b``:
ΔW = (w1_a w1_b) ⊙ (w2_a w2_b) is linear in each); LoKr: k = 2 to 4 (``w1`` or
``w1_a``, ``w1_b``; ``w2`` or ``w2_a``, ``w2_b``: kron is bilinear), as LyCORIS does.
Spreading r over all factors keeps their relative sizes, so the optimizer's state stays
meaningful for each.

Returns what sd-scripts logs: the number of modules scaled and the mean and max of the
norms after scaling.
"""

from __future__ import annotations

import torch

from lora_core.network.adapter import AdapterNetwork


@torch.no_grad()
def apply_max_norm(network: AdapterNetwork, max_norm: float) -> tuple[int, float, float]:
    """Cap every module's ‖ΔW‖ at ``max_norm``; (modules scaled, mean norm, max norm)."""
    if not max_norm > 0:
        raise ValueError(f"max_norm must be above 0, not {max_norm}")
    modules = network.lora_modules()
    if not modules:
        return 0, 0.0, 0.0
    norms, ratios = [], []
    for module in modules:
        if not hasattr(module, "factors"):  # a lycoris-lora module caps itself
            scaled, norm = module.apply_max_norm(max_norm, None)
            if norm is None:
                raise ValueError(f"{module.lora_name}: {module.kind} has no weight norm to cap")
            norm = torch.as_tensor(norm, dtype=torch.float32).reshape(())
            norms.append(norm.detach().cpu())
            ratios.append(torch.tensor(0.5 if bool(scaled) else 1.0))
            continue
        norm = module.delta_weight().float().norm()
        clamped = norm.clamp(min=max_norm / 2)
        ratio = clamped.clamp(max=max_norm) / clamped
        factors = module.factors()
        step = ratio ** (1.0 / len(factors))
        for factor in factors:
            # Multiplying by exactly 1.0 leaves a factor bit-identical, so no branch (and no
            # device sync) is needed per module.
            factor.mul_(step.to(factor.dtype))
        norms.append(norm * ratio)
        ratios.append(ratio)
    norms_t = torch.stack(norms)
    keys_scaled = int((torch.stack(ratios) != 1).sum().item())
    return keys_scaled, float(norms_t.mean().item()), float(norms_t.max().item())
