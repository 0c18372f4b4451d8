"""Flux's flow-matching objective and latent packing, against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from lora_core.errors import ProfileError
from lora_core.families.flux import objective as obj
from lora_core.families.flux.latents import image_ids, pack_latents, unpack_latents


def test_noisy_latents_and_target():
    x0, eps, sigma = torch.full((1, 16, 2, 2), 2.0), torch.full((1, 16, 2, 2), -1.0), \
        torch.tensor([0.25])
    assert torch.allclose(obj.noisy_latents(x0, eps, sigma), torch.full_like(x0, 1.25))
    assert torch.allclose(obj.flow_target(x0, eps), torch.full_like(x0, -3.0))


def test_shifts_and_schedule():
    assert obj.shift_sigmas(torch.tensor(0.5), 3.0).item() == pytest.approx(0.75)
    assert obj.mu_for_length(256) == pytest.approx(0.5)
    assert obj.mu_for_length(4096) == pytest.approx(1.15)
    assert obj.time_shift(0.5, torch.tensor(0.5)).item() == pytest.approx(
        1 / (1 + math.exp(-0.5)))
    sched = obj.schedule_sigmas(3.0)
    assert sched[0].item() == pytest.approx(1.0)
    assert sched[999].item() == pytest.approx(0.003 / 1.002)
    assert obj.density_to_sigmas(torch.tensor([0.5]), 3.0).item() == pytest.approx(0.75)


@pytest.mark.parametrize(("sampling", "draw", "expected"), [
    ("uniform", 0.3, 0.3),
    ("sigmoid", 0.0, 0.5),
    ("shift", 0.0, 0.75),  # sigmoid 0.5 shifted by 3
    ("flux_shift", 0.0, 1 / (1 + math.exp(-0.5))),  # 16x16 tokens: mu 0.5
    ("sigma", 0.5, 0.75),  # index 500 of the shift-3 schedule
])
def test_sigmas_from_draw(sampling, draw, expected):
    settings = obj.FlowSettings(timestep_sampling=sampling, sigmoid_scale=2.0)
    got = obj.sigmas_from_draw(settings, torch.tensor([draw]), (16, 16))
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_sigmoid_scale_scales_the_normal_draw():
    settings = obj.FlowSettings(timestep_sampling="sigmoid", sigmoid_scale=2.0)
    got = obj.sigmas_from_draw(settings, torch.tensor([1.0]), (1, 1)).item()
    assert got == pytest.approx(1 / (1 + math.exp(-2.0)))


def test_mode_density_and_draws_are_seeded_and_in_range():
    assert obj.mode_density(torch.tensor(0.5), 1.29).item() == pytest.approx(0.5)
    for sampling in obj.TIMESTEP_SAMPLINGS:
        for scheme in ("uniform", "logit_normal", "mode"):
            settings = obj.FlowSettings(timestep_sampling=sampling, weighting_scheme=scheme)
            a = obj.draw_sigmas(settings, 64, (8, 8), torch.Generator().manual_seed(3))
            b = obj.draw_sigmas(settings, 64, (8, 8), torch.Generator().manual_seed(3))
            assert torch.equal(a, b) and a.shape == (64,)
            assert ((a > 0) & (a <= 1)).all(), (sampling, scheme)


def test_prediction_types_and_weighting():
    pred, noisy, sigma = torch.full((1, 1, 2, 2), 4.0), torch.full((1, 1, 2, 2), 1.25), \
        torch.tensor([0.25])
    raw, w = obj.apply_prediction_type(obj.FlowSettings(model_prediction_type="raw"), pred,
                                       noisy, sigma)
    assert torch.equal(raw, pred) and w is None
    add, w = obj.apply_prediction_type(obj.FlowSettings(model_prediction_type="additive"),
                                       pred, noisy, sigma)
    assert torch.allclose(add, torch.full_like(pred, 5.25)) and w is None
    scaled, w = obj.apply_prediction_type(
        obj.FlowSettings(model_prediction_type="sigma_scaled", weighting_scheme="sigma_sqrt"),
        pred, noisy, sigma)
    assert torch.allclose(scaled, torch.full_like(pred, 0.25))
    assert torch.allclose(w, torch.full((1, 1, 1, 1), 16.0))
    cos = obj.loss_weighting("cosmap", torch.tensor([0.5]))
    assert cos.item() == pytest.approx(2 / (math.pi * 0.5))
    assert obj.loss_weighting("logit_normal", torch.tensor([0.3])).item() == 1.0


def test_guidance_vector_and_timesteps():
    assert torch.equal(obj.guidance_vector(1.0, 3, True), torch.ones(3))
    assert obj.guidance_vector(3.5, 3, False) is None
    assert torch.allclose(obj.model_timesteps(torch.tensor([0.25])), torch.tensor([0.25]))


def test_settings_are_validated_by_field():
    with pytest.raises(ProfileError, match="timestep_sampling"):
        obj.FlowSettings(timestep_sampling="logsnr")
    with pytest.raises(ProfileError, match="model_prediction_type"):
        obj.FlowSettings(model_prediction_type="v")
    with pytest.raises(ProfileError, match="discrete_flow_shift"):
        obj.FlowSettings(discrete_flow_shift=0)


def test_packing_layout_and_round_trip():
    x = torch.arange(2 * 16 * 4 * 6, dtype=torch.float32).reshape(2, 16, 4, 6)
    packed = pack_latents(x)
    assert packed.shape == (2, 2 * 3, 64)
    # token (i, j) holds x[:, c, 2i + dy, 2j + dx] at feature c*4 + dy*2 + dx
    i, j, c, dy, dx = 1, 2, 5, 1, 0
    assert packed[1, i * 3 + j, c * 4 + dy * 2 + dx] == x[1, c, 2 * i + dy, 2 * j + dx]
    assert torch.equal(unpack_latents(packed, 2, 3), x)
    ids = image_ids(2, 2, 3)
    assert ids.shape == (2, 6, 3)
    assert ids[0, 5].tolist() == [0.0, 1.0, 2.0] and ids[1, 1].tolist() == [0.0, 0.0, 1.0]
