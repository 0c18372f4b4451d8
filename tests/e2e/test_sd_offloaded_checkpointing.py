"""``cpu_offload_checkpointing`` in real tiny SD1 runs (in-process), with the text encoder
trained and with the U-Net alone: the trainer checkpoints the U-Net's blocks through the
offload, the losses and the file equal plain gradient checkpointing's (on a CPU the inputs
move from "cpu" to "cpu"), and the metadata gains no key (sd-scripts writes none for it)."""

from __future__ import annotations

import pytest
import torch

from lora_core.events import StepEnded
from lora_core.saving.lora_file import read_lora

# Keys that differ between any two runs (when, where, how long).
_PER_RUN = {"ss_training_started_at", "ss_training_finished_at", "ss_output_name",
            "sshs_model_hash", "sshs_legacy_hash", "modelspec.date", "modelspec.title",
            "ss_session_id"}


@pytest.mark.parametrize("unet_only", [False, True])
def test_offloaded_checkpointing_trains_as_plain_checkpointing(train, monkeypatch, unet_only):
    from lora_core.models import offloaded_checkpointing

    blocks = []
    offloaded = offloaded_checkpointing.offloaded
    monkeypatch.setattr(offloaded_checkpointing, "offloaded",
                        lambda block: blocks.append(block) or offloaded(block))
    results = {}
    for name, offload in (("plain", False), ("offload", True)):
        run = train(name, training={"gradient_checkpointing": True,
                                    "cpu_offload_checkpointing": offload},
                    network={"network_train_unet_only": unet_only},
                    saving={"save_precision": "float"})
        losses = [e.loss for e in run.events if isinstance(e, StepEnded)]
        results[name] = (losses, *read_lora(run.final_file))
        if not offload:
            assert blocks == []  # plain checkpointing never goes through the offload
    assert blocks, "no U-Net block was checkpointed through the offload"
    (plain_losses, plain, plain_meta), (losses, tensors, meta) = results["plain"], \
        results["offload"]
    assert len(losses) == 1 and losses == plain_losses
    assert tensors.keys() == plain.keys()
    assert any(k.startswith("lora_te_") for k in tensors) != unet_only
    for key, tensor in plain.items():
        assert torch.equal(tensors[key], tensor), key
    assert meta.keys() == plain_meta.keys()
    assert not [k for k in meta if "offload" in k]
    assert {k: v for k, v in meta.items() if k not in _PER_RUN} == \
        {k: v for k, v in plain_meta.items() if k not in _PER_RUN}
