"""Stochastic rounding to bf16, and the AdamW that trains ``full_bf16`` LoRA weights with it.

Why: bf16 keeps 8 significant bits, so half the distance from a value ``w`` to its next
neighbour is 2⁻⁹ to 2⁻⁸ of ``|w|`` (0.2–0.4 %), and rounding to nearest drops every change
smaller than that. An AdamW step of ``lr · m̂ / (√v̂ + eps)``, about ``lr``, is lost on every
weight above 2⁸–2⁹ · lr (0.03–0.05 at lr 1e-4); a second moment ``v`` moves by
``(1 − β₂)(g² − v)``, with β₂ = 0.999 under half a step unless ``g²`` is several times ``v``,
so it can rise but never decays. Measured on the tiny SD 1 model (bench/RESULTS.md, "full_bf16
rounding"): ``lora_down`` moved half as far from its start in 40 steps as in float32.

Stochastic rounding (Gupta et al., 2015, "Deep Learning with Limited Numerical Precision",
ICML, arXiv:1502.02551) rounds ``x``, lying between neighbours ``a < x < b``, up to ``b``
with probability ``(x − a) / (b − a)`` and down to ``a`` otherwise, so ``E[round(x)] = x``:
small updates survive in expectation and accumulate over steps as in float32.

For float32 → bf16 it is a bit trick: bf16 is the top 16 bits of a float32, so add a
uniform random integer in ``[0, 2¹⁶)`` to the float32 bit pattern and truncate its low 16
bits. The carry into bit 16 happens with probability ``low16 / 2¹⁶``, the fraction of the
way from ``a`` to ``b`` (the same trick as sd-scripts' and OneTrainer's ``copy_stochastic_``).
The pattern is sign-magnitude, so negatives round their magnitude the same way; values
already in bf16 (low bits 0) never move; inf stays inf; NaN stays NaN; a finite value above
bf16's largest rounds to inf with the probability of its carry (to nearest, it would from
half way).

Resuming must stay exact (a run killed with kill -9 and resumed gives the same files), so
the random bits come from a generator seeded, for each parameter at each step, from the
run's seed, the parameter's place in the optimizer and its step count (kept in the optimizer
state as torch's AdamW keeps it). Every process of a multi-GPU run draws the same bits, so
their copies of the weights stay identical.

This module rounds; which optimizer a profile gets is ``training.optim``'s choice.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

_LOW_BITS = 1 << 16  # float32 bits below bf16's mantissa
_HIGH_MASK = -_LOW_BITS  # 0xFFFF0000 as an int32


def copy_stochastic_(target: torch.Tensor, source: torch.Tensor,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Write float32 ``source`` into bf16 ``target``, each element rounded up or down to a
    bf16 neighbour with the probability that makes the result unbiased. Returns ``target``."""
    if target.dtype != torch.bfloat16 or source.dtype != torch.float32:
        raise TypeError(f"copy_stochastic_ rounds float32 into bfloat16, not {source.dtype} "
                        f"into {target.dtype}")
    bits = torch.randint(0, _LOW_BITS, source.shape, dtype=torch.int32, device=source.device,
                         generator=generator)
    bits.add_(source.view(torch.int32))
    bits.bitwise_and_(_HIGH_MASK)
    # A NaN's low mantissa bits may carry into inf (or wrap past the sign): keep it NaN.
    rounded = torch.where(source.isnan(), source, bits.view(torch.float32))
    return target.copy_(rounded)  # exact: the low 16 bits are zero


def _mixed_seed(seed: int, index: int, step: int) -> int:
    """One 63-bit seed per (run seed, parameter, step): a multiplicative hash (splitmix64's
    constants), so neighbouring steps and parameters get unrelated streams."""
    mixed = (seed * 0x9E3779B97F4A7C15 + index * 0xBF58476D1CE4E5B9
             + step * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    mixed ^= mixed >> 31
    return mixed & 0x7FFFFFFFFFFFFFFF


class _SeededRounding:
    """The random bits of an optimizer's roundings: one generator per device, seeded for
    each (parameter, step) from the run's ``seed`` (module docstring)."""

    seed: int
    _generators: dict[torch.device, torch.Generator]

    def _init_rounding(self, seed: int) -> None:
        self.seed = seed
        self._generators = {}

    def _generator(self, device: torch.device, index: int, step: int) -> torch.Generator:
        generator = self._generators.get(device)
        if generator is None:
            generator = self._generators[device] = torch.Generator(device=device)
        return generator.manual_seed(_mixed_seed(self.seed, index, step))


class StochasticRoundingAdamW(_SeededRounding, torch.optim.AdamW):
    """torch's AdamW for bf16 parameters (``full_bf16``): each parameter's update is
    computed in float32 from float32 copies of its weights, gradient and moments, by
    torch's single-tensor AdamW rule op for op (decoupled weight decay, bias correction,
    eps outside the square root, amsgrad, maximize), then the weights and the moments are
    written back in bf16 with :func:`copy_stochastic_`. The moments stay bf16 (half the
    optimizer state); float32 parameters are updated in place, exactly as torch's AdamW
    with ``foreach=False`` does. The float32 copies live for one parameter at a time.

    ``seed``: the run's seed, from which every rounding's random bits derive (module
    docstring). The state dict is torch AdamW's (``step``, ``exp_avg``, ``exp_avg_sq``).
    torch's ``foreach`` / ``fused`` / ``capturable`` / ``differentiable`` kernels are not
    used; asking for them is an error."""

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2, amsgrad: bool = False, *,
                 maximize: bool = False, seed: int = 0, **kernels: object) -> None:
        asked = sorted(k for k, v in kernels.items() if v)
        unknown = sorted(set(kernels) - {"foreach", "fused", "capturable", "differentiable"})
        if unknown:
            raise TypeError(f"AdamW got unexpected keyword arguments {unknown}")
        if asked:
            raise ValueError(f"{', '.join(asked)} cannot be used with full_bf16's stochastic "
                             "rounding, which computes each update in float32 itself")
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         amsgrad=amsgrad, maximize=maximize, foreach=False)
        self._init_rounding(seed)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        index = -1  # the parameter's place in the optimizer, over all groups
        for group in self.param_groups:
            for param in group["params"]:
                index += 1
                if param.grad is None:
                    continue
                if param.grad.is_sparse:
                    raise RuntimeError("AdamW does not support sparse gradients")
                self._update(param, self.state[param], group, index)
        return loss

    def _update(self, param: torch.Tensor, state: dict, group: dict, index: int) -> None:
        if not state:
            # As torch's AdamW: the step count a float32 CPU scalar, the moments like param.
            state["step"] = torch.tensor(0.0, dtype=torch.float32)
            for key in ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) * group["amsgrad"]):
                state[key] = torch.zeros_like(param, memory_format=torch.preserve_format)
        beta1, beta2 = group["betas"]
        lr, weight_decay, eps = group["lr"], group["weight_decay"], group["eps"]
        lr = lr.item() if isinstance(lr, torch.Tensor) else lr
        state["step"] += 1
        step = state["step"].item()
        stored = [param, state["exp_avg"], state["exp_avg_sq"]]
        if group["amsgrad"]:
            stored.append(state["max_exp_avg_sq"])
        # float32 working copies (a float32 tensor is its own: updated in place).
        weights, exp_avg, exp_avg_sq, *max_sq = (t.float() for t in stored)
        grad = param.grad.float()
        if group["maximize"]:
            grad = -grad
        # torch.optim.adam._single_tensor_adam (decoupled_weight_decay=True), op for op.
        if weight_decay != 0:
            weights.mul_(1 - lr * weight_decay)
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        bias_correction1 = 1 - beta1 ** step
        bias_correction2 = 1 - beta2 ** step
        step_size = lr / bias_correction1
        bias_correction2_sqrt = bias_correction2 ** 0.5
        if max_sq:
            torch.maximum(max_sq[0], exp_avg_sq, out=max_sq[0])
            denom = (max_sq[0].sqrt() / bias_correction2_sqrt).add_(eps)
        else:
            denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
        weights.addcdiv_(exp_avg, denom, value=-step_size)
        generator = None
        for target, value in zip(stored, (weights, exp_avg, exp_avg_sq, *max_sq), strict=True):
            if target is value:
                continue  # float32: already updated in place
            if target.dtype == torch.bfloat16:
                if generator is None:
                    generator = self._generator(target.device, index, int(step))
                copy_stochastic_(target, value, generator)
            else:
                target.copy_(value)


class _Bf16Through8bit(_SeededRounding):
    """For a bitsandbytes 8-bit optimizer (its ``update_step(group, p, gindex, pindex)``):
    a bf16 parameter is updated by bitsandbytes' own kernel on float32 copies of itself and
    its gradient, then rounded back stochastically. Its 8-bit moments are bitsandbytes'
    (quantised blockwise by its rules); other dtypes are left to bitsandbytes as they are.
    (bitsandbytes' CPU kernel computes in float32 and writes the parameter back rounded to
    nearest: bitsandbytes/backends/cpu/ops.py, ``p.data.copy_(p_fp32)``.)"""

    def __init__(self, params, *args, seed: int = 0, **kwargs) -> None:
        super().__init__(params, *args, **kwargs)
        self._init_rounding(seed)

    def update_step(self, group: dict, p: torch.Tensor, gindex: int, pindex: int) -> None:
        if p.dtype != torch.bfloat16:
            return super().update_step(group, p, gindex, pindex)
        half, half_grad = p.data, p.grad
        # A parameter's data and gradient change dtype together (torch checks the pair).
        p.grad = None
        p.data = half.float()
        p.grad = half_grad.float()
        try:
            super().update_step(group, p, gindex, pindex)
            updated = p.data
        finally:
            p.grad = None
            p.data = half
            p.grad = half_grad
        index = sum(len(g["params"]) for g in self.param_groups[:gindex]) + pindex
        step = int(self.state[p]["step"])
        copy_stochastic_(half, updated, self._generator(half.device, index, step))
        return None


@functools.cache
def stochastic_rounding_8bit(base: type) -> type:
    """``base`` (a bitsandbytes 8-bit optimizer class, like ``AdamW8bit``) whose bf16
    parameters are rounded stochastically; it takes ``seed`` besides ``base``'s arguments.
    One class per base."""
    return type(f"StochasticRounding{base.__name__}", (_Bf16Through8bit, base),
                {"__module__": __name__, "__doc__": _Bf16Through8bit.__doc__})
