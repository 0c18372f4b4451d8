"""Loss maths: per-sample mean over C,H,W, times the sample's weight, then the batch mean."""

import torch

from lora_core.training.loss import weighted_mse


def test_weights_scale_each_sample_before_the_batch_mean():
    pred = torch.zeros(2, 4, 2, 2)
    target = torch.stack([torch.full((4, 2, 2), 1.0), torch.full((4, 2, 2), 2.0)])
    # per-sample MSE: 1 and 4; weights 1 (train) and 0.5 (reg, prior_loss_weight)
    loss = weighted_mse(pred, target, torch.tensor([1.0, 0.5]))
    assert torch.isclose(loss, torch.tensor((1.0 * 1 + 4.0 * 0.5) / 2))
    assert torch.isclose(weighted_mse(pred, target, torch.ones(2)), torch.tensor(2.5))


def test_loss_is_computed_in_float32():
    pred = torch.full((1, 4, 2, 2), 300.0, dtype=torch.float16)
    target = torch.zeros(1, 4, 2, 2, dtype=torch.float16)
    loss = weighted_mse(pred, target, torch.ones(1))
    assert loss.dtype == torch.float32 and torch.isfinite(loss)  # 300² overflows fp16
