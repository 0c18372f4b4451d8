"""Masked loss (kohya-compat.md §5.1, §4.5): masks from alpha channels and from a subset's
conditioning_data_dir, following crops and flips; an all-opaque mask changes nothing and a
transparent region gets no gradient; bad mask setups are refused by name."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import tomli_w
import torch
from PIL import Image

from lora_core.checks import check_profile, scan_profile
from lora_core.checks.report import render_check_report
from lora_core.dataset.images import load_mask, load_sample
from lora_core.dataset.loader import EpochBatches
from lora_core.dataset.plan import epoch_batches, make_plan
from lora_core.dataset.subset_options import SubsetOptions
from lora_core.profile import TrainingSection
from lora_core.training.loss import LossWeighting, diffusion_loss
from tests.core.dataset_helpers import make_folder, profile_for
from tests.core.test_loss import sd_scheduler


def rgba_with_transparent_left(path: Path, size=(100, 64), opaque_from: int = 30) -> None:
    """Red and opaque from column ``opaque_from`` on, black and transparent before it, with
    a vertical ramp of alpha in the opaque part so flips and crops show."""
    width, height = size
    pixels = np.zeros((height, width, 4), dtype=np.uint8)
    pixels[:, opaque_from:, 0] = 255
    ramp = np.linspace(80, 255, width - opaque_from).astype(np.uint8)
    pixels[:, opaque_from:, 3] = ramp
    pixels[:, opaque_from:, 0] = ramp  # red == alpha, so the pixels show where the mask is
    Image.fromarray(pixels, "RGBA").save(path)


# ---------------------------------------------------------------------------------------
# The loss


def test_an_all_opaque_mask_gives_exactly_the_unmasked_loss():
    torch.manual_seed(0)
    pred, target = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    t, weights = torch.tensor([10, 700]), torch.tensor([1.0, 0.5])
    for training in (TrainingSection(), TrainingSection(loss_type="huber", min_snr_gamma=5.0)):
        weighting = LossWeighting.build(sd_scheduler(), training, False)
        plain = diffusion_loss(pred, target, t, weights, weighting)
        masked = diffusion_loss(pred, target, t, weights, weighting, torch.ones(2, 1, 64, 64))
        assert torch.equal(plain, masked)


def test_a_transparent_region_gets_zero_gradient_and_the_rest_does_not():
    torch.manual_seed(0)
    pred = torch.randn(1, 4, 8, 8, requires_grad=True)
    target = torch.randn(1, 4, 8, 8)
    mask = torch.ones(1, 1, 64, 64)
    mask[..., :, :24] = 0.0  # pixel columns 0-23: latent columns 0-2
    weighting = LossWeighting.build(sd_scheduler(), TrainingSection(), False)
    diffusion_loss(pred, target, torch.tensor([500]), torch.ones(1), weighting, mask).backward()
    assert torch.count_nonzero(pred.grad[..., :3]) == 0
    assert torch.count_nonzero(pred.grad[..., 3:]) == pred.grad[..., 3:].numel()
    # The mean still divides by every element (sd-scripts): a half mask halves the loss.
    half = torch.ones(1, 1, 8, 8)
    half[..., :4] = 0
    ones = torch.zeros(1, 4, 8, 8)
    loss = diffusion_loss(ones, ones + 1, torch.tensor([500]), torch.ones(1), weighting, half)
    assert float(loss) == pytest.approx(0.5)


def test_a_mask_is_area_averaged_to_the_latent_size():
    weighting = LossWeighting.build(sd_scheduler(), TrainingSection(), False)
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., :8, :8] = 1.0
    mask[..., 8:, :4] = 1.0  # latent cell (1, 0) is half covered
    zeros = torch.zeros(1, 1, 2, 2)
    loss = diffusion_loss(zeros, zeros + 1, torch.tensor([1]), torch.ones(1), weighting, mask)
    assert float(loss) == pytest.approx((1.0 + 0.5) / 4)


# ---------------------------------------------------------------------------------------
# Masks follow the pixels


@pytest.mark.parametrize("seed", range(6))
def test_the_alpha_mask_follows_random_crops_and_flips(tmp_path, seed):
    path = tmp_path / "a.png"
    rgba_with_transparent_left(path)
    opts = SubsetOptions(flip_aug=True, random_crop=True, alpha_mask=True)
    image, flipped, offset = load_sample(path, (64, 64), (100, 64), opts, random.Random(seed))
    mask = load_mask(path, None, (64, 64), (100, 64), offset, flipped)
    red = np.asarray(image, dtype=np.float32)[..., 0] / 255.0
    assert mask.shape == (64, 64)
    np.testing.assert_array_equal(mask, red)


def test_an_image_without_transparency_is_all_opaque(tmp_path):
    make_folder(tmp_path, "x", 1)
    mask = load_mask(tmp_path / "x" / "img00.png", None, (64, 64), (64, 64), None, False)
    assert mask.min() == mask.max() == 1.0


def test_a_mask_image_is_read_from_its_red_channel_and_resized_like_the_image(tmp_path):
    image = tmp_path / "a.png"
    Image.new("RGB", (128, 128), (10, 20, 30)).save(image)
    mask_file = tmp_path / "a_mask.png"
    pixels = np.zeros((128, 128, 3), dtype=np.uint8)
    pixels[:, 64:, 0] = 255  # right half white in red; green and blue say otherwise
    pixels[:, :, 1] = 255
    Image.fromarray(pixels, "RGB").save(mask_file)
    mask = load_mask(image, mask_file, (64, 64), (64, 64), None, False)
    assert mask[:, :32].max() == 0.0 and mask[:, 32:].min() == 1.0
    flipped = load_mask(image, mask_file, (64, 64), (64, 64), None, True)
    np.testing.assert_array_equal(flipped, mask[:, ::-1])


def test_batches_carry_masks_and_unmasked_subsets_train_everywhere(tmp_path):
    masked_dir = tmp_path / "train" / "2_masked"
    masked_dir.mkdir(parents=True)
    rgba_with_transparent_left(masked_dir / "a.png", size=(64, 64))
    make_folder(tmp_path / "train", "2_plain", 1)
    profile = profile_for(tmp_path / "train", alpha_mask=True, masked_loss=True, seed=1,
                          resolution=64, min_bucket_reso=64, max_bucket_reso=64)
    plan = make_plan(profile, scan_profile(profile))
    assert plan.masked
    batches = epoch_batches(plan, 1, 0)
    for latents_cached in (False, True):
        loaded = EpochBatches(plan, batches, 1, 0, 0, latents_cached=latents_cached)
        for index in range(len(batches)):
            batch = loaded[index]
            assert batch["masks"].shape == (1, 1, 64, 64)
            record = plan.items[batch["item_indices"][0]].record
            if record.has_alpha:
                assert batch["masks"][0, 0, :, :30].max() == 0  # its transparent part
            else:
                # An image without transparency: opaque everywhere.
                assert batch["masks"].min() == 1.0
    unmasked = make_plan(profile_for(tmp_path / "train"), scan_profile(
        profile_for(tmp_path / "train")))
    assert not unmasked.masked
    assert "masks" not in EpochBatches(unmasked, epoch_batches(unmasked, 1, 0), 1, 0, 0)[0]


# ---------------------------------------------------------------------------------------
# Mask folders in a dataset_config, and the checks


def config_project(tmp_path: Path, masks: int) -> Path:
    make_folder(tmp_path / "data", "imgs", 3)
    mask_dir = tmp_path / "data" / "masks"
    mask_dir.mkdir()
    for i in range(masks):
        Image.new("L", (64, 64), 255).save(mask_dir / f"img{i:02d}.png")
    config = tmp_path / "ds.toml"
    config.write_text(tomli_w.dumps({"datasets": [{"resolution": 64, "subsets": [
        {"image_dir": "data/imgs", "conditioning_data_dir": "data/masks",
         "num_repeats": 2}]}]}), encoding="utf-8")
    return config


def mask_profile(tmp_path: Path, **overrides):
    """A profile that passes every check but the mask ones (built-in model, no GPU)."""
    return profile_for(tmp_path / "train", pretrained_model_name_or_path="builtin:tiny-sd1",
                       mixed_precision="no", min_bucket_reso=64, max_bucket_reso=64,
                       **overrides)


def test_masks_from_a_conditioning_folder_are_found_by_file_name(tmp_path):
    config = config_project(tmp_path, masks=3)
    profile = mask_profile(tmp_path, dataset_config=str(config), masked_loss=True)
    report = check_profile(profile)
    assert not report.errors, [p.message for p in report.errors]
    (subset,) = report.scan.subsets
    assert [r.mask_path.name for r in subset.images] == ["img00.png", "img01.png", "img02.png"]
    text = render_check_report(report.scan, report.plan, profile, report.problems)
    assert "Loss masks (masked_loss)" in text
    assert "masks: 3 of 3 image(s) have a mask image in" in " ".join(text.split())


def test_a_mask_folder_with_missing_masks_is_refused_naming_the_images(tmp_path):
    config = config_project(tmp_path, masks=1)
    profile = mask_profile(tmp_path, dataset_config=str(config), masked_loss=True)
    (problem,) = check_profile(profile).errors
    assert "2 of 3 image(s) have no mask in" in problem.message
    assert "img01.png, img02.png" in problem.message
    assert "same file name" in problem.hint


def test_a_mask_folder_without_masked_loss_is_refused(tmp_path):
    config = config_project(tmp_path, masks=3)
    profile = mask_profile(tmp_path, dataset_config=str(config))
    (problem,) = check_profile(profile).errors
    assert "`datasets[0].subsets[0].conditioning_data_dir`" in problem.message
    assert "masked_loss = true" in problem.hint


def test_a_missing_mask_folder_is_refused(tmp_path):
    config = config_project(tmp_path, masks=0)
    text = config.read_text(encoding="utf-8").replace("data/masks", "data/nowhere")
    config.write_text(text, encoding="utf-8")
    profile = mask_profile(tmp_path, dataset_config=str(config), masked_loss=True)
    messages = " ".join(p.message for p in check_profile(profile).errors)
    assert "conditioning_data_dir` =" in messages and "does not exist" in messages


def test_masking_that_masks_nothing_is_an_advisory(tmp_path):
    make_folder(tmp_path / "train", "2_x", 2)
    notes = [p.message for p in check_profile(mask_profile(tmp_path, masked_loss=True)).warnings]
    assert any("masked_loss` is on, but no subset has masks" in n for n in notes)
    notes = [p.message for p in check_profile(mask_profile(tmp_path, alpha_mask=True)).warnings]
    assert any("none of its images has transparency" in n for n in notes)
