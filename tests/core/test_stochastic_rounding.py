"""full_bf16's stochastic rounding (issue 28): ``copy_stochastic_`` rounds float32 into bf16
without bias and only to a neighbour, and the AdamW that uses it is torch's AdamW in float32
maths, keeps small updates that rounding to nearest loses, and resumes bit for bit."""

from __future__ import annotations

import copy

import pytest
import torch

from lora_core.checks.levers import lever_problems
from lora_core.errors import ProfileError
from lora_core.profile import OptimizerSection, Profile
from lora_core.training.optim import ParamGroupSpec, build_optimizer
from lora_core.training.stochastic_rounding import StochasticRoundingAdamW, copy_stochastic_


def _rounded(source: torch.Tensor, seed: int = 0) -> torch.Tensor:
    target = torch.empty(source.shape, dtype=torch.bfloat16)
    return copy_stochastic_(target, source, torch.Generator().manual_seed(seed))


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.float().view(torch.int32)


@pytest.mark.parametrize("sign", [1.0, -1.0])
@pytest.mark.parametrize("low, fraction", [(1.0, 0.3), (1.0, 0.9), (3.0e-5, 0.05)])
def test_the_mean_of_many_roundings_is_the_value_and_to_nearest_it_is_not(sign, low, fraction):
    below = torch.tensor(low, dtype=torch.bfloat16)
    above = torch.tensor(_bits(below).item() + (1 << 16), dtype=torch.int32).view(
        torch.float32).to(torch.bfloat16)
    spacing = above.float().item() - below.float().item()
    value = sign * (below.float().item() + fraction * spacing)
    source = torch.full((200_000,), value, dtype=torch.float32)
    rounded = _rounded(source).float()
    # only the two neighbours, in the proportion that makes the mean the value
    assert set(rounded.abs().unique().tolist()) == {below.float().item(), above.float().item()}
    assert abs(rounded.mean().item() - value) < 0.02 * spacing  # ~9 standard errors
    up = (rounded.abs() == above.float().item()).float().mean().item()
    assert abs(up - fraction) < 0.01
    nearest = source.to(torch.bfloat16).float().mean().item()
    assert abs(nearest - value) >= min(fraction, 1 - fraction) * spacing * 0.99


def test_a_rounding_never_leaves_the_two_neighbours_and_keeps_bf16_values():
    torch.manual_seed(0)
    source = torch.randn(50_000) * torch.logspace(-30, 30, 50_000)
    rounded = _bits(_rounded(source))
    toward_zero = _bits(source) & -(1 << 16)  # the neighbour nearer zero
    away = toward_zero + (1 << 16)
    assert ((rounded == toward_zero) | (rounded == away)).all()
    assert (rounded == away).any() and (rounded == toward_zero).any()
    exact = source.to(torch.bfloat16).float()  # already bf16: never moves
    assert torch.equal(_rounded(exact).float(), exact)


def test_infinities_nans_zeros_and_the_largest_values_round_sanely():
    specials = torch.tensor([0x7F800000, -0x800000, 0x7F800001, 0x7FC00000, -1, -0x7FFFFF,
                             0, -0x80000000, 0x7F7F0000, 0x00000001],
                            dtype=torch.int32).view(torch.float32)
    # +inf, -inf, a NaN with its mantissa in the low bits only, a quiet NaN, -NaNs
    # 0xFFFFFFFF (the carry would wrap past the sign) and 0xFF800001, +0, -0, bf16's largest,
    # float32's least subnormal
    for seed in range(20):
        rounded = _rounded(specials.repeat(1000), seed).float().view(1000, -1)
        assert (rounded[:, 0] == float("inf")).all() and (rounded[:, 1] == -float("inf")).all()
        assert rounded[:, 2:6].isnan().all()
        assert (_bits(rounded[:, 6]) == 0).all() and (_bits(rounded[:, 7]) == -(1 << 31)).all()
        assert (rounded[:, 8] == specials[8]).all()  # representable: kept
        assert set(rounded[:, 9].tolist()) <= {0.0, 2.0 ** -133}


def test_the_same_generator_state_gives_the_same_rounding_and_dtypes_are_checked():
    source = torch.rand(1000)
    assert torch.equal(_rounded(source, 7), _rounded(source, 7))
    assert not torch.equal(_rounded(source, 7), _rounded(source, 8))
    with pytest.raises(TypeError, match="float32 into bfloat16"):
        copy_stochastic_(torch.empty(3, dtype=torch.float16), torch.rand(3))
    with pytest.raises(TypeError, match="float32 into bfloat16"):
        copy_stochastic_(torch.empty(3, dtype=torch.bfloat16), torch.rand(3).double())


def _twins(dtype=torch.float32, shape=(6, 5), count: int = 3, seed: int = 0):
    torch.manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(shape).to(dtype)) for _ in range(count)]
    return params, [torch.nn.Parameter(p.detach().clone()) for p in params]


@pytest.mark.parametrize("kwargs", [
    {}, {"weight_decay": 0.1, "amsgrad": True}, {"maximize": True, "betas": (0.8, 0.99)},
    {"weight_decay": 0.0, "eps": 1e-6}])
def test_on_float32_parameters_it_is_torchs_adamw_bit_for_bit(kwargs):
    ours, theirs = _twins()
    groups = lambda ps: [{"params": ps[:2], "lr": 1e-2}, {"params": ps[2:], "lr": 3e-3}]  # noqa: E731
    a = StochasticRoundingAdamW(groups(ours), seed=1, **kwargs)
    b = torch.optim.AdamW(groups(theirs), foreach=False, **kwargs)
    for step in range(6):
        grads = [torch.randn(6, 5) for _ in ours]
        for index, (p, q, g) in enumerate(zip(ours, theirs, grads, strict=True)):
            keep = not (step == 2 and index == 1)  # a parameter without a gradient this step
            p.grad, q.grad = (g.clone(), g.clone()) if keep else (None, None)
        a.step()
        b.step()
    for p, q in zip(ours, theirs, strict=True):
        assert torch.equal(p, q)
        assert a.state[p].keys() == b.state[q].keys()
        for key, value in b.state[q].items():
            assert torch.equal(a.state[p][key], value), key


def test_on_bf16_parameters_each_value_is_torchs_float32_update_rounded_to_a_neighbour():
    ours, _ = _twins(torch.bfloat16)
    reference = [torch.nn.Parameter(p.detach().float()) for p in ours]
    a = StochasticRoundingAdamW(ours, lr=1e-2, weight_decay=0.1, seed=0)
    b = torch.optim.AdamW(reference, lr=1e-2, weight_decay=0.1, foreach=False)
    for p, q in zip(ours, reference, strict=True):
        g = torch.randn(6, 5).to(torch.bfloat16)
        p.grad, q.grad = g, g.float()
    a.step()
    b.step()
    for p, q in zip(ours, reference, strict=True):
        for mine, exact in ((p, q), (a.state[p]["exp_avg"], b.state[q]["exp_avg"]),
                            (a.state[p]["exp_avg_sq"], b.state[q]["exp_avg_sq"])):
            assert mine.dtype == torch.bfloat16
            toward_zero = _bits(exact) & -(1 << 16)
            assert ((_bits(mine) == toward_zero) | (_bits(mine) == toward_zero + (1 << 16))).all()


def test_updates_under_half_a_bf16_step_move_the_weights_only_with_stochastic_rounding():
    """lr 1e-4 on weights at 1.0, where half a bf16 step is 2**-8: torch's AdamW on bf16
    weights rounds every step away; with stochastic rounding they move as in float32."""
    steps, lr = 100, 1e-4

    def trained(optimizer_class, dtype, **kwargs):
        weight = torch.nn.Parameter(torch.ones(4096, dtype=dtype))
        optimizer = optimizer_class([weight], lr=lr, weight_decay=0.0, **kwargs)
        for _ in range(steps):
            weight.grad = torch.full_like(weight, 0.5)
            optimizer.step()
        return weight.detach().float()

    float32 = trained(torch.optim.AdamW, torch.float32, foreach=False)
    to_nearest = trained(torch.optim.AdamW, torch.bfloat16, foreach=False)
    stochastic = trained(StochasticRoundingAdamW, torch.bfloat16, seed=0)
    moved = 1.0 - float32.mean().item()
    assert moved == pytest.approx(steps * lr, rel=0.01) and lr < 2.0 ** -9
    assert torch.equal(to_nearest, torch.ones(4096))  # every update lost
    assert 1.0 - stochastic.mean().item() == pytest.approx(moved, rel=0.1)
    assert stochastic.max().item() == 1.0 and (stochastic < 1.0).float().mean() > 0.9


def _run(optimizer, params, grads):
    for g in grads:
        for p, gp in zip(params, g, strict=True):
            p.grad = gp.clone()
        optimizer.step()


def test_a_state_dict_round_trip_resumes_bit_for_bit_and_the_seed_decides_the_rounding():
    torch.manual_seed(3)
    grads = [[torch.randn(6, 5).to(torch.bfloat16) for _ in range(3)] for _ in range(8)]
    params, _ = _twins(torch.bfloat16)
    start = [p.detach().clone() for p in params]
    whole = StochasticRoundingAdamW(params, lr=1e-3, seed=5)
    _run(whole, params, grads)

    first, _ = _twins(torch.bfloat16)
    stopped = StochasticRoundingAdamW(first, lr=1e-3, seed=5)
    _run(stopped, first, grads[:3])
    saved_weights = [p.detach().clone() for p in first]
    saved_state = copy.deepcopy(stopped.state_dict())
    assert {t.dtype for s in saved_state["state"].values() for k, t in s.items()
            if k != "step"} == {torch.bfloat16}
    del stopped, first
    resumed = [torch.nn.Parameter(w) for w in saved_weights]
    optimizer = StochasticRoundingAdamW(resumed, lr=1e-3, seed=5)
    optimizer.load_state_dict(saved_state)
    _run(optimizer, resumed, grads[3:])
    for p, q in zip(params, resumed, strict=True):
        assert torch.equal(p, q)
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(whole.state[p][key], optimizer.state[q][key]), key
    assert any(not torch.equal(p, s) for p, s in zip(params, start, strict=True))

    other, _ = _twins(torch.bfloat16)
    _run(StochasticRoundingAdamW(other, lr=1e-3, seed=6), other, grads)
    assert any(not torch.equal(p, q) for p, q in zip(params, other, strict=True))


def test_the_kernels_it_does_not_use_are_refused():
    with pytest.raises(ValueError, match="fused cannot be used with full_bf16"):
        StochasticRoundingAdamW([torch.nn.Parameter(torch.ones(2))], fused=True)
    with pytest.raises(TypeError, match="unexpected keyword arguments \\['nesterov'\\]"):
        StochasticRoundingAdamW([torch.nn.Parameter(torch.ones(2))], nesterov=True)
    StochasticRoundingAdamW([torch.nn.Parameter(torch.ones(2))], foreach=False)  # off: fine


def _built(optimizer_type: str = "AdamW", seed: int | None = 0, **fields):
    params = [torch.nn.Parameter(torch.randn(3, 3).to(torch.bfloat16))]
    section = OptimizerSection(optimizer_type=optimizer_type, **fields)
    return build_optimizer([ParamGroupSpec("unet", params, 1e-3)], section, rounding_seed=seed)


def test_build_optimizer_rounds_adamw_stochastically_under_full_bf16_only():
    built = _built()
    assert type(built) is StochasticRoundingAdamW and built.seed == 0
    assert built.param_groups[0]["name"] == "unet"
    assert built.defaults["weight_decay"] == 0.1 and built.defaults["betas"] == (0.9, 0.99)
    assert type(_built("torch.optim.AdamW", seed=4)) is StochasticRoundingAdamW
    assert type(_built(seed=None)) is torch.optim.AdamW  # not full_bf16: torch's (fused)
    assert _built(seed=None).defaults["fused"] is True
    assert type(_built("SGDNesterov")) is torch.optim.SGD
    with pytest.raises(ProfileError, match="fused cannot be used with full_bf16's stochastic"):
        _built(optimizer_args=["fused=True"])


def _bf16_profile(optimizer_type: str, full_bf16: bool = True) -> Profile:
    profile = Profile()
    profile.training.mixed_precision = "bf16"
    profile.training.full_bf16 = full_bf16
    profile.optimizer.optimizer_type = optimizer_type
    return profile


def test_check_notes_how_full_bf16_rounds_at_its_field():
    def notes(profile):
        return [p for p in lever_problems(profile, None) if p.field == ("training", "full_bf16")]

    (note,) = notes(_bf16_profile("AdamW"))
    assert note.severity == "warning" and "weights and moments with stochastic rounding" \
        in note.message
    (note,) = notes(_bf16_profile("AdamW8bit"))
    assert "weights (its moments are 8-bit) with stochastic rounding" in note.message
    for other in ("Lion", "AdaFactor"):
        (note,) = notes(_bf16_profile(other))
        assert note.severity == "warning" and f"full_bf16` with {other}" in note.message
        assert "rounded away" in note.message and "optimizer_type = \"AdamW\"" in note.hint
    assert notes(_bf16_profile("AdamW", full_bf16=False)) == []


def _ones_trained(optimizer_class, dtype, steps: int = 100, **kwargs) -> list[float]:
    """How far weights at 1.0 moved under a constant gradient at lr 1e-4: a tensor that
    bitsandbytes gives 8-bit moments (4096 values) and one it gives float32 ones (64)."""
    weights = [torch.nn.Parameter(torch.ones(n, dtype=dtype)) for n in (4096, 64)]
    optimizer = optimizer_class(weights, lr=1e-4, weight_decay=0.0, **kwargs)
    for _ in range(steps):
        for weight in weights:
            weight.grad = torch.full_like(weight, 0.5)
        optimizer.step()
    assert all(w.dtype == dtype for w in weights)
    return [1.0 - w.detach().float().mean().item() for w in weights]


def test_adamw8bit_rounds_its_bf16_weights_stochastically_and_resumes_exactly():
    bnb = pytest.importorskip("bitsandbytes")
    from lora_core.training.stochastic_rounding import stochastic_rounding_8bit

    rounding = stochastic_rounding_8bit(bnb.optim.AdamW8bit)
    assert issubclass(rounding, bnb.optim.AdamW8bit)
    float32 = _ones_trained(bnb.optim.AdamW8bit, torch.float32)
    assert float32 == pytest.approx([0.01, 0.01], rel=0.01)
    assert _ones_trained(bnb.optim.AdamW8bit, torch.bfloat16) == [0.0, 0.0]  # all lost
    assert _ones_trained(rounding, torch.bfloat16, seed=0) == pytest.approx(float32, rel=0.1)
    built = _built("AdamW8bit", seed=3)
    assert type(built) is rounding and built.seed == 3
    assert type(_built("AdamW8bit", seed=None)) is bnb.optim.AdamW8bit

    torch.manual_seed(1)
    grads = [[torch.randn(n).to(torch.bfloat16) for n in (4096, 64)] for _ in range(6)]

    def fresh():
        params = [torch.nn.Parameter(torch.linspace(-1, 1, n).to(torch.bfloat16))
                  for n in (4096, 64)]
        return params, rounding(params, lr=1e-3, seed=9)

    whole, optimizer = fresh()
    _run(optimizer, whole, grads)
    first, stopped = fresh()
    _run(stopped, first, grads[:2])
    saved = copy.deepcopy(stopped.state_dict()), [p.detach().clone() for p in first]
    resumed = [torch.nn.Parameter(w) for w in saved[1]]
    again = rounding(resumed, lr=1e-3, seed=9)
    again.load_state_dict(saved[0])
    _run(again, resumed, grads[2:])
    assert all(torch.equal(p, q) for p, q in zip(whole, resumed, strict=True))
    assert not torch.equal(whole[0], torch.linspace(-1, 1, 4096).to(torch.bfloat16))


def test_check_refuses_torch_kernels_that_full_bf16_with_adamw_cannot_use():
    """``run`` would stop on them when it builds the optimizer: check says so first, at
    optimizer_args, and lets them be for float32 AdamW (where they are torch's own)."""
    from lora_core.checks.levers import lever_problems
    from lora_core.profile import Profile

    profile = Profile()
    profile.training.full_bf16, profile.training.mixed_precision = True, "bf16"
    profile.optimizer.optimizer_type = "AdamW"
    profile.optimizer.optimizer_args = ["fused=True", "foreach=False", "weight_decay=0.1"]
    (problem,) = [p for p in lever_problems(profile, None) if p.severity == "error"]
    assert problem.field == ("optimizer", "optimizer_args")
    assert "ask for fused=True" in problem.message and "foreach" not in problem.message
    assert problem.hint.startswith("remove fused=True from optimizer_args")
    profile.training.full_bf16, profile.training.mixed_precision = False, "no"
    assert [p for p in lever_problems(profile, None) if p.severity == "error"] == []
