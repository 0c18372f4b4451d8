"""Loss maths, checked against hand computations from the scheduler's ``alphas_cumprod``:
per-element loss by type, per-sample weights, Huber thresholds and the SNR weightings."""

import math

import pytest
import torch
from diffusers import DDPMScheduler

from lora_core.errors import ProfileError
from lora_core.profile import TrainingSection
from lora_core.training.loss import (
    LossWeighting,
    all_snr,
    diffusion_loss,
    huber_c,
    prepare_schedule_and_loss,
    training_target,
)


def sd_scheduler() -> DDPMScheduler:
    return DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         num_train_timesteps=1000, clip_sample=False)


def snr_by_hand(sched: DDPMScheduler, t: int) -> float:
    a = float(sched.alphas_cumprod[t])
    return a / (1 - a)


def unit_error_loss(weighting: LossWeighting, timesteps: list[int],
                    loss_weights: list[float] | None = None) -> torch.Tensor:
    """diffusion_loss where every element's L2 error is 1, so each sample's loss is its weight."""
    n = len(timesteps)
    pred, target = torch.zeros(n, 4, 2, 2), torch.ones(n, 4, 2, 2)
    weights = torch.ones(n) if loss_weights is None else torch.tensor(loss_weights)
    return diffusion_loss(pred, target, torch.tensor(timesteps), weights, weighting)


# ---------------------------------------------------------------------------------------
# the plain weighted loss


def test_weights_scale_each_sample_before_the_batch_mean():
    pred = torch.zeros(2, 4, 2, 2)
    target = torch.stack([torch.full((4, 2, 2), 1.0), torch.full((4, 2, 2), 2.0)])
    plain = LossWeighting.build(sd_scheduler(), TrainingSection(), False)
    assert plain.huber_c is None and plain.timestep_weight is None
    t = torch.tensor([3, 900])
    # per-sample MSE: 1 and 4; weights 1 (train) and 0.5 (reg, prior_loss_weight)
    loss = diffusion_loss(pred, target, t, torch.tensor([1.0, 0.5]), plain)
    assert torch.isclose(loss, torch.tensor((1.0 * 1 + 4.0 * 0.5) / 2))
    assert torch.isclose(diffusion_loss(pred, target, t, torch.ones(2), plain),
                         torch.tensor(2.5))


@pytest.mark.parametrize("loss_type", ["l2", "huber"])
def test_loss_is_computed_in_float32(loss_type):
    pred = torch.full((1, 4, 2, 2), 300.0, dtype=torch.float16)
    target = torch.zeros(1, 4, 2, 2, dtype=torch.float16)
    weighting = LossWeighting.build(sd_scheduler(), TrainingSection(loss_type=loss_type), False)
    loss = diffusion_loss(pred, target, torch.tensor([10]), torch.ones(1), weighting)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)  # 300² overflows fp16


# ---------------------------------------------------------------------------------------
# targets and SNR


def test_epsilon_target_is_the_noise_and_v_target_follows_the_formula():
    sched = sd_scheduler()
    latents = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([50, 700])
    assert training_target(sched, latents, noise, t, v_parameterization=False) is noise
    v = training_target(sched, latents, noise, t, v_parameterization=True)
    for i, step in enumerate(t.tolist()):
        a = float(sched.alphas_cumprod[step])
        expected = math.sqrt(a) * noise[i] - math.sqrt(1 - a) * latents[i]
        assert torch.allclose(v[i], expected, atol=1e-6)


def test_all_snr_is_alpha_bar_over_one_minus_alpha_bar():
    sched = sd_scheduler()
    snr = all_snr(sched)
    assert snr.shape == (1000,)
    for t in (0, 1, 500, 999):
        assert snr[t].item() == pytest.approx(snr_by_hand(sched, t), rel=1e-5)


# ---------------------------------------------------------------------------------------
# element losses and the Huber threshold


@pytest.mark.parametrize(("loss_type", "expected"), [
    ("l2", lambda d, c: d * d),
    ("l1", lambda d, c: abs(d)),
    ("huber", lambda d, c: 2 * c * (math.sqrt(d * d + c * c) - c)),
    ("smooth_l1", lambda d, c: 2 * (math.sqrt(d * d + c * c) - c)),
])
def test_element_loss_by_type(loss_type, expected):
    tr = TrainingSection(loss_type=loss_type, huber_schedule="constant", huber_c=0.3,
                         huber_scale=2.0)
    weighting = LossWeighting.build(sd_scheduler(), tr, False)
    c = 0.3 * 2.0
    # sample 0: every element off by 3; sample 1: by 0.25
    pred = torch.stack([torch.full((4, 2, 2), 3.0), torch.full((4, 2, 2), -0.25)])
    target = torch.zeros(2, 4, 2, 2)
    loss = diffusion_loss(pred, target, torch.tensor([5, 600]), torch.ones(2), weighting)
    assert loss.item() == pytest.approx((expected(3.0, c) + expected(0.25, c)) / 2, rel=1e-5)


def test_huber_c_schedules():
    sched = sd_scheduler()
    t = torch.tensor([0, 500, 999])
    const = huber_c(t, sched, TrainingSection(huber_schedule="constant", huber_c=0.2,
                                              huber_scale=1.5))
    assert const.tolist() == pytest.approx([0.3, 0.3, 0.3])
    expo = huber_c(t, sched, TrainingSection(huber_schedule="exponential", huber_c=0.2,
                                             huber_scale=1.5))
    # exp(−(−ln c₀ / 1000)·t)·k: k at t=0, √c₀·k halfway
    assert expo.tolist() == pytest.approx([1.5, math.sqrt(0.2) * 1.5, 0.2 ** 0.999 * 1.5],
                                          rel=1e-5)
    snr_sched = huber_c(t, sched, TrainingSection(huber_schedule="snr", huber_c=0.2))
    for got, step in zip(snr_sched.tolist(), t.tolist(), strict=True):
        a = float(sched.alphas_cumprod[step])
        sigma = math.sqrt((1 - a) / a)
        assert got == pytest.approx((1 - 0.2) / (1 + sigma) ** 2 + 0.2, rel=1e-5)


def test_huber_loss_uses_each_samples_own_threshold():
    sched = sd_scheduler()
    tr = TrainingSection(loss_type="huber", huber_schedule="snr", huber_c=0.1)
    weighting = LossWeighting.build(sched, tr, False)
    pred, target = torch.full((2, 4, 2, 2), 0.5), torch.zeros(2, 4, 2, 2)
    timesteps = [20, 950]
    loss = diffusion_loss(pred, target, torch.tensor(timesteps), torch.ones(2), weighting)
    by_hand = []
    for step in timesteps:
        a = float(sched.alphas_cumprod[step])
        c = (1 - 0.1) / (1 + math.sqrt((1 - a) / a)) ** 2 + 0.1
        by_hand.append(2 * c * (math.sqrt(0.25 + c * c) - c))
    assert by_hand[0] != pytest.approx(by_hand[1], rel=0.1)  # the timesteps matter
    assert loss.item() == pytest.approx(sum(by_hand) / 2, rel=1e-5)


def test_huber_c_of_zero_is_refused():
    """By the profile check (one place); the loss only asserts it."""
    from lora_core.profile_load import profile_from_dict

    with pytest.raises(ProfileError, match="huber_c` = 0.0 must be above 0"):
        profile_from_dict({"model": {"pretrained_model_name_or_path": "builtin:tiny-sd1"},
                           "dataset": {"train_data_dir": "d"}, "saving": {"output_dir": "o"},
                           "training": {"loss_type": "smooth_l1", "huber_c": 0.0}})
    with pytest.raises(AssertionError, match="checks.rules"):
        LossWeighting.build(sd_scheduler(), TrainingSection(loss_type="smooth_l1", huber_c=0.0,
                                                            huber_schedule="exponential"), False)


# ---------------------------------------------------------------------------------------
# SNR weightings


@pytest.mark.parametrize("v_pred", [False, True])
def test_min_snr_weight(v_pred):
    sched = sd_scheduler()
    weighting = LossWeighting.build(sched, TrainingSection(min_snr_gamma=5.0), v_pred)
    timesteps = [10, 300, 900]
    expected = []
    for t in timesteps:
        snr = snr_by_hand(sched, t)
        expected.append(min(snr, 5.0) / (snr + 1 if v_pred else snr))
    assert snr_by_hand(sched, 10) > 5 > snr_by_hand(sched, 900)  # both sides of γ
    for t, w in zip(timesteps, expected, strict=True):
        assert unit_error_loss(weighting, [t]).item() == pytest.approx(w, rel=1e-5)
    assert unit_error_loss(weighting, timesteps).item() == pytest.approx(sum(expected) / 3,
                                                                         rel=1e-5)


def test_min_snr_multiplies_the_per_sample_loss_weights():
    sched = sd_scheduler()
    weighting = LossWeighting.build(sched, TrainingSection(min_snr_gamma=1.0), False)
    w0 = min(snr_by_hand(sched, 100), 1.0) / snr_by_hand(sched, 100)
    w1 = min(snr_by_hand(sched, 990), 1.0) / snr_by_hand(sched, 990)
    loss = unit_error_loss(weighting, [100, 990], loss_weights=[1.0, 0.25])
    assert loss.item() == pytest.approx((w0 * 1.0 + w1 * 0.25) / 2, rel=1e-5)


def test_scale_v_pred_loss_like_noise_pred_caps_snr_at_1000():
    sched = sd_scheduler()
    tr = TrainingSection(scale_v_pred_loss_like_noise_pred=True)
    weighting = LossWeighting.build(sched, tr, True)
    assert snr_by_hand(sched, 0) > 1000
    assert unit_error_loss(weighting, [0]).item() == pytest.approx(1000 / 1001, rel=1e-6)
    snr = snr_by_hand(sched, 400)
    assert unit_error_loss(weighting, [400]).item() == pytest.approx(snr / (snr + 1), rel=1e-5)


@pytest.mark.parametrize("v_pred", [False, True])
def test_debiased_estimation_weight(v_pred):
    sched = sd_scheduler()
    weighting = LossWeighting.build(sched, TrainingSection(debiased_estimation_loss=True), v_pred)
    for t in (0, 250, 999):
        snr = min(snr_by_hand(sched, t), 1000.0)
        expected = 1 / (snr + 1) if v_pred else 1 / math.sqrt(snr)
        assert unit_error_loss(weighting, [t]).item() == pytest.approx(expected, rel=1e-5)


def test_weightings_combine_by_product():
    sched = sd_scheduler()
    tr = TrainingSection(min_snr_gamma=5.0, scale_v_pred_loss_like_noise_pred=True,
                         debiased_estimation_loss=True)
    weighting = LossWeighting.build(sched, tr, True)
    snr = snr_by_hand(sched, 600)
    expected = min(snr, 5.0) / (snr + 1) * snr / (snr + 1) * 1 / (snr + 1)
    assert unit_error_loss(weighting, [600]).item() == pytest.approx(expected, rel=1e-5)


# ---------------------------------------------------------------------------------------
# zero terminal SNR


def test_zero_terminal_snr_schedule_gives_finite_weights_and_huber_threshold():
    from lora_core.training.noise import apply_zero_terminal_snr

    sched = sd_scheduler()
    apply_zero_terminal_snr(sched)
    assert all_snr(sched)[-1].item() == 0.0
    tr = TrainingSection(min_snr_gamma=5.0, debiased_estimation_loss=True, loss_type="huber",
                         huber_schedule="snr", huber_c=0.1)
    weighting = LossWeighting.build(sched, tr, False)  # SNR from the rescaled schedule
    assert torch.isfinite(weighting.timestep_weight).all()
    assert weighting.huber_c[-1].item() == pytest.approx(0.1)  # σ = ∞ leaves c = huber_c
    # ε min-SNR at snr = 0 takes its limit 1; debiased 1/√snr is floored at snr = 1e-3
    assert weighting.timestep_weight[-1].item() == pytest.approx(1 / math.sqrt(1e-3), rel=1e-5)
    loss = unit_error_loss(weighting, [999, 0])
    assert torch.isfinite(loss)


def test_prepare_rescales_the_schedule_but_weights_by_the_original_snr_as_sd_scripts():
    sched = sd_scheduler()
    original_snr = snr_by_hand(sched, 999)
    tr = TrainingSection(zero_terminal_snr=True, min_snr_gamma=5.0)
    weighting = prepare_schedule_and_loss(sched, tr, v_parameterization=True)
    assert sched.alphas_cumprod[-1].item() == 0.0  # add_noise now ends at pure noise
    expected = original_snr / (original_snr + 1)  # min(snr, 5)/(snr + 1), snr < 5
    assert expected > 0.004
    assert unit_error_loss(weighting, [999]).item() == pytest.approx(expected, rel=1e-5)


def test_prepare_leaves_the_schedule_alone_without_zero_terminal_snr():
    sched = sd_scheduler()
    before = sched.alphas_cumprod.clone()
    prepare_schedule_and_loss(sched, TrainingSection(min_snr_gamma=5.0), False)
    assert torch.equal(sched.alphas_cumprod, before)
