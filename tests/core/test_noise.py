"""Noise, timesteps and the zero-terminal-SNR schedule, checked against hand computations
that redraw the same random numbers from a generator with the same seed."""

import pytest
import torch
from diffusers import DDPMScheduler
from torch.nn import functional as F

from lora_core.profile import TrainingSection
from lora_core.training.noise import apply_zero_terminal_snr, make_noise, sample_timesteps

SHAPE = (2, 4, 8, 8)


def sd_scheduler(**extra) -> DDPMScheduler:
    return DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         num_train_timesteps=1000, clip_sample=False, **extra)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------
# timesteps


def test_timesteps_cover_min_to_max_minus_one():
    t = sample_timesteps(4000, 100, 110, "cpu", gen())
    assert t.dtype == torch.long and t.shape == (4000,)
    assert set(t.tolist()) == set(range(100, 110))  # 110 (the upper bound) never drawn


def test_timesteps_are_constant_when_min_equals_max():
    assert sample_timesteps(3, 500, 500, "cpu").tolist() == [500, 500, 500]


def test_timesteps_follow_the_seed():
    assert torch.equal(sample_timesteps(16, 0, 1000, "cpu", gen(3)),
                       sample_timesteps(16, 0, 1000, "cpu", gen(3)))
    assert not torch.equal(sample_timesteps(16, 0, 1000, "cpu", gen(3)),
                           sample_timesteps(16, 0, 1000, "cpu", gen(4)))


# ---------------------------------------------------------------------------------------
# noise


def test_plain_noise_is_one_gaussian_draw():
    latents = torch.zeros(SHAPE)
    noise = make_noise(latents, TrainingSection(), gen())
    assert torch.equal(noise, torch.randn(SHAPE, generator=gen()))


def test_noise_offset_shifts_each_channel_by_offset_times_a_gaussian_draw():
    latents = torch.zeros(SHAPE)
    noise = make_noise(latents, TrainingSection(noise_offset=0.1), gen())
    g = gen()
    base = torch.randn(SHAPE, generator=g)
    draw = torch.randn(SHAPE[0], SHAPE[1], 1, 1, generator=g)
    shift = (noise - base).mean(dim=(2, 3))
    assert torch.allclose(shift, 0.1 * draw[:, :, 0, 0], atol=1e-6)
    assert torch.allclose(noise, base + 0.1 * draw, atol=1e-6)  # constant over H, W
    assert shift.abs().max() > 0.01


def test_noise_offset_random_strength_scales_by_one_uniform_draw_per_batch():
    latents = torch.zeros(SHAPE)
    tr = TrainingSection(noise_offset=0.2, noise_offset_random_strength=True)
    noise = make_noise(latents, tr, gen(1))
    g = gen(1)
    base = torch.randn(SHAPE, generator=g)
    strength = torch.rand(1, generator=g)
    draw = torch.randn(SHAPE[0], SHAPE[1], 1, 1, generator=g)
    assert 0 < strength.item() < 1
    assert torch.allclose(noise, base + strength * 0.2 * draw, atol=1e-6)


def test_adaptive_noise_scale_adds_the_latents_mean_abs_per_sample_and_channel():
    # channel means: sample 0 = [1, -2, 0, 3], sample 1 = [-1, 0.5, 2, -0.25]
    means = torch.tensor([[1.0, -2.0, 0.0, 3.0], [-1.0, 0.5, 2.0, -0.25]])
    latents = means[:, :, None, None].expand(SHAPE).clone()
    latents[:, :, 0, 0] += 1.0  # not constant over H, W; the mean is what counts
    latents[:, :, 0, 1] -= 1.0
    noise = make_noise(latents, TrainingSection(noise_offset=0.1, adaptive_noise_scale=0.5),
                       gen(2))
    g = gen(2)
    base = torch.randn(SHAPE, generator=g)
    draw = torch.randn(SHAPE[0], SHAPE[1], 1, 1, generator=g)
    offset = 0.1 + 0.5 * means.abs()
    assert torch.allclose(noise - base, offset[:, :, None, None] * draw, atol=1e-6)


def test_negative_adaptive_noise_scale_clamps_the_offset_at_zero():
    means = torch.tensor([[0.0, 1.0, 0.05, 4.0]]).repeat(2, 1)
    latents = means[:, :, None, None].expand(SHAPE).clone()
    noise = make_noise(latents, TrainingSection(noise_offset=0.1, adaptive_noise_scale=-1.0),
                       gen(5))
    g = gen(5)
    base = torch.randn(SHAPE, generator=g)
    draw = torch.randn(SHAPE[0], SHAPE[1], 1, 1, generator=g)
    offset = torch.tensor([0.1, 0.0, 0.05, 0.0])  # max(0, 0.1 − |mean|)
    assert torch.allclose(noise - base, offset[None, :, None, None] * draw, atol=1e-6)


def test_multires_noise_has_unit_std_and_differs_from_plain_noise():
    latents = torch.zeros(4, 4, 32, 32)
    tr = TrainingSection(multires_noise_iterations=6, multires_noise_discount=0.3)
    noise = make_noise(latents, tr, gen())
    plain = torch.randn(latents.shape, generator=gen())
    assert torch.isclose(noise.std(), torch.tensor(1.0), atol=1e-5)
    assert not torch.allclose(noise, plain, atol=1e-2)


def test_multires_noise_adds_low_frequency_energy():
    # Coarse levels are nearly constant over a latent, so per-(sample, channel) spatial means
    # vary far more than white noise's (whose variance is 1 / (H·W)).
    latents = torch.zeros(8, 4, 32, 32)
    tr = TrainingSection(multires_noise_iterations=8, multires_noise_discount=0.8)
    means = make_noise(latents, tr, gen()).mean(dim=(2, 3))
    plain_means = torch.randn(latents.shape, generator=gen()).mean(dim=(2, 3))
    assert means.var() > 5 * plain_means.var()


def test_one_multires_level_is_a_second_full_resolution_draw_added_after_the_offset():
    latents = torch.zeros(SHAPE)
    tr = TrainingSection(noise_offset=0.1, multires_noise_iterations=1)
    noise = make_noise(latents, tr, gen(7))
    g = gen(7)
    base = torch.randn(SHAPE, generator=g)
    draw = torch.randn(SHAPE[0], SHAPE[1], 1, 1, generator=g)
    torch.rand((), generator=g, dtype=torch.float64)  # the level's size factor r (r^0 = 1)
    level = torch.randn(SHAPE, generator=g)
    summed = base + 0.1 * draw + level
    assert torch.allclose(noise, summed / summed.std(), atol=1e-6)


def test_second_multires_level_is_upsampled_from_the_drawn_size_and_discounted():
    latents = torch.zeros(1, 1, 16, 16)
    tr = TrainingSection(multires_noise_iterations=2, multires_noise_discount=0.5)
    noise = make_noise(latents, tr, gen(9))
    g = gen(9)
    total = torch.randn(latents.shape, generator=g)
    torch.rand((), generator=g, dtype=torch.float64)
    total += torch.randn(latents.shape, generator=g)
    r = 2 + 2 * torch.rand((), generator=g, dtype=torch.float64).item()
    side = int(16 / r)  # between 4 and 8
    coarse = torch.randn(1, 1, side, side, generator=g)
    total += 0.5 * F.interpolate(coarse, size=(16, 16), mode="bilinear", align_corners=False)
    assert 4 <= side <= 8
    assert torch.allclose(noise, total / total.std(), atol=1e-6)


# ---------------------------------------------------------------------------------------
# zero terminal SNR


def test_zero_terminal_snr_ends_at_zero_and_keeps_the_first_alpha_bar():
    sched = sd_scheduler()
    original = sched.alphas_cumprod.clone()
    apply_zero_terminal_snr(sched)
    assert sched.alphas_cumprod[-1].item() == 0.0
    assert original[-1] > 0.004  # it was not zero before
    assert torch.isclose(sched.alphas_cumprod[0], original[0], rtol=1e-6)
    # Algorithm 1 by hand at a middle timestep: shift √ᾱ so the last is 0, rescale the first.
    s = original.double().sqrt()
    expected = ((s[500] - s[-1]) * s[0] / (s[0] - s[-1])) ** 2
    assert torch.isclose(sched.alphas_cumprod[500].double(), expected, rtol=1e-5)


def test_zero_terminal_snr_keeps_betas_alphas_and_cumprod_consistent():
    sched = sd_scheduler()
    apply_zero_terminal_snr(sched)
    assert torch.allclose(sched.alphas, 1 - sched.betas)
    assert torch.allclose(torch.cumprod(sched.alphas, 0), sched.alphas_cumprod, atol=1e-7)
    assert sched.betas[-1].item() == pytest.approx(1.0)
    # diffusers' own implementation of the same algorithm agrees
    reference = sd_scheduler(rescale_betas_zero_snr=True)
    assert torch.allclose(sched.alphas_cumprod, reference.alphas_cumprod, atol=1e-6)


def test_zero_terminal_snr_makes_the_last_timestep_pure_noise():
    sched = sd_scheduler()
    apply_zero_terminal_snr(sched)
    latents, noise = torch.randn(SHAPE, generator=gen(1)), torch.randn(SHAPE, generator=gen(2))
    last = torch.full((SHAPE[0],), 999)
    assert torch.allclose(sched.add_noise(latents, noise, last), noise)
    assert torch.allclose(sched.get_velocity(latents, noise, last), -latents)
