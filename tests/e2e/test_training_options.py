"""Training options on the tiny model, in-process: each test fails if its option is ignored."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from lora_core.errors import ProfileError
from lora_core.events import CheckpointSaved, EpochEnded, RunFinished, StepEnded
from lora_core.models.builtin import ensure_builtin
from lora_core.saving.lora_file import read_lora
from tests.e2e.conftest import assert_diffusers_applies_every_module


def keys_of(path):
    with safe_open(str(path), "pt") as fh:
        return list(fh.keys())


def test_gradient_accumulation_counts_optimizer_steps(train):
    # 2 images × 3 repeats = 6 samples, batch 1 → 6 batches; accumulation 4 → 2 updates
    events = train("ga", repeats=3, training={"train_batch_size": 1,
                                              "gradient_accumulation_steps": 4}).events
    steps = [e for e in events if isinstance(e, StepEnded)]
    assert [e.step for e in steps] == [1, 2]
    assert [e.epoch for e in events if isinstance(e, EpochEnded)] == [1]


def test_save_every_n_steps_and_epochs(train):
    run = train("saves", repeats=2, training={"max_train_epochs": 3, "train_batch_size": 1},
                saving={"save_every_n_steps": 5, "save_every_n_epochs": 2})
    events, out = run.events, run.output_dir
    # 4 steps per epoch, 12 steps: step files at 5 and 10, epoch file at 2, final
    saved = [(e.kind, e.path.rsplit("/", 1)[-1]) for e in events
             if isinstance(e, CheckpointSaved)]
    assert saved == [("step", "saves-step00000005.safetensors"),
                     ("epoch", "saves-000002.safetensors"),
                     ("step", "saves-step00000010.safetensors"),
                     ("final", "saves.safetensors")]
    assert all((out / name).is_file() for _, name in saved)


def test_max_train_steps_when_no_epochs_given(train):
    # 2 images × 2 repeats, batch 1: 4 steps per epoch; 5 steps → 2 epochs, stop mid-epoch 2
    run = train("steps", repeats=2, training={"max_train_epochs": None, "max_train_steps": 5,
                                              "train_batch_size": 1})
    events, out = run.events, run.output_dir
    assert [e.step for e in events if isinstance(e, StepEnded)] == [1, 2, 3, 4, 5]
    assert [e.epoch for e in events if isinstance(e, EpochEnded)] == [1]
    _, meta = read_lora(out / "steps.safetensors")
    assert meta["ss_steps"] == "5" and meta["ss_max_train_steps"] == "5"


def test_unet_only_and_text_encoder_only_files(train):
    out = train("unet", network={"network_train_unet_only": True}).output_dir
    keys = keys_of(out / "unet.safetensors")
    assert keys and not any(k.startswith("lora_te") for k in keys)
    out = train("te", network={"network_train_text_encoder_only": True}).output_dir
    keys = keys_of(out / "te.safetensors")
    assert keys and all(k.startswith("lora_te_") for k in keys)


def test_separate_learning_rates_reach_the_optimizer(train):
    events = train("lrs", optimizer={"unet_lr": 3e-4, "text_encoder_lr": 2e-5,
                                     "lr_scheduler": "constant"}).events
    step = next(e for e in events if isinstance(e, StepEnded))
    assert step.lrs == {"lr/textencoder": pytest.approx(2e-5), "lr/unet": pytest.approx(3e-4)}
    events = train("te0", optimizer={"text_encoder_lr": 0.0, "lr_scheduler": "constant"}).events
    step = next(e for e in events if isinstance(e, StepEnded))
    assert list(step.lrs) == ["lr/unet"]  # a group at lr 0 is dropped, as sd-scripts does


def test_warmup_ratio_and_schedule(train):
    # 8 steps, warm-up ratio 0.25 → 2 warm-up steps: lr after step 1 is half the base
    events = train("warm", repeats=4, training={"train_batch_size": 1},
                   optimizer={"lr_scheduler": "constant_with_warmup",
                              "lr_warmup_steps": 0.25, "learning_rate": 1e-3}).events
    lrs = [e.lrs["lr/unet"] for e in events if isinstance(e, StepEnded)]
    assert lrs[:3] == [pytest.approx(5e-4), pytest.approx(1e-3), pytest.approx(1e-3)]


def test_bf16_and_gradient_checkpointing_train(train):
    run = train("bf16", training={"mixed_precision": "bf16", "gradient_checkpointing": True})
    events, out = run.events, run.output_dir
    assert isinstance(events[-1], RunFinished)
    tensors, meta = read_lora(out / "bf16.safetensors")
    assert meta["ss_mixed_precision"] == "bf16" and meta["ss_gradient_checkpointing"] == "True"
    assert any(t.abs().max() > 0 for k, t in tensors.items() if "lora_up" in k)


def test_fp8_base_trains_an_sd_model_on_the_cpu(train):
    """Issue 28: fp8_base on the tiny SD model, in fp32 (mixed_precision "no": each fp8 layer
    computes in fp32, as a CPU can), U-Net and text-encoder LoRA, with LoCon's convs and
    gradient checkpointing: it trains, diffusers applies every module, the metadata says it;
    and bf16 with fp8_base_unet trains as well."""
    run = train("fp8", network={"network_module": "LoCon", "conv_dim": 4, "conv_alpha": 2.0},
                training={"fp8_base": True, "gradient_checkpointing": True})
    tensors, meta = read_lora(run.output_dir / "fp8.safetensors")
    assert (meta["ss_fp8_base"], meta["ss_fp8_base_unet"]) == ("True", "False")
    assert any(k.startswith("lora_te_") for k in tensors)
    assert all(torch.isfinite(t).all() for t in tensors.values())
    assert any(t.abs().max() > 0 for k, t in tensors.items() if "lora_up" in k)
    losses = [e.loss for e in run.events if isinstance(e, StepEnded)]
    assert losses and all(torch.isfinite(torch.tensor(loss)) for loss in losses)
    assert_diffusers_applies_every_module(run.output_dir / "fp8.safetensors")
    run = train("fp8unet", training={"fp8_base_unet": True, "mixed_precision": "bf16"})
    _, meta = read_lora(run.output_dir / "fp8unet.safetensors")
    assert (meta["ss_fp8_base"], meta["ss_fp8_base_unet"]) == ("False", "True")


def test_fp16_on_cpu_is_a_clear_error(train):
    from lora_core.errors import CheckError

    with pytest.raises(CheckError, match="fp16.*needs a CUDA GPU"):
        train("fp16", training={"mixed_precision": "fp16"})


def test_full_bf16_trains_the_lora_and_its_optimizer_state_in_bf16(train, monkeypatch):
    """Issue 28: full_bf16 with mixed_precision "bf16": the LoRA's parameters and AdamW's
    moments are bf16 through the run (gradient clipping and max-norm included); the file,
    saved in float, holds bf16 values exactly, says ss_full_bf16 and diffusers applies it."""
    from lora_core.training import trainer

    optimizers = []
    build = trainer.build_optimizer
    monkeypatch.setattr(trainer, "build_optimizer",
                        lambda *a, **kw: optimizers.append(build(*a, **kw)) or optimizers[-1])
    run = train("fullbf16", repeats=2, training={"mixed_precision": "bf16", "full_bf16": True},
                optimizer={"max_grad_norm": 1.0, "scale_weight_norms": 1.0},
                saving={"save_precision": "float"})
    (optimizer,) = optimizers
    # AdamW's bf16 updates rounded stochastically, from the run's seed (the profile's 1)
    assert type(optimizer).__name__ == "StochasticRoundingAdamW" and optimizer.seed == 1
    params = [p for group in optimizer.param_groups for p in group["params"]]
    assert params and {p.dtype for p in params} == {torch.bfloat16}
    moments = [t for state in optimizer.state.values() for name, t in state.items()
               if name in ("exp_avg", "exp_avg_sq")]
    assert len(moments) == 2 * len(params) and {t.dtype for t in moments} == {torch.bfloat16}
    losses = [e.loss for e in run.events if isinstance(e, StepEnded)]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(loss)) for loss in losses)
    tensors, meta = read_lora(run.output_dir / "fullbf16.safetensors")
    assert (meta["ss_full_bf16"], meta["ss_full_fp16"]) == ("True", "False")
    weights = {k: t for k, t in tensors.items() if not k.endswith(".alpha")}
    assert {t.dtype for t in weights.values()} == {torch.float32}  # the save precision
    assert all(torch.equal(t.to(torch.bfloat16).float(), t) for t in weights.values())
    assert any(t.abs().max() > 0 for k, t in weights.items() if "lora_up" in k)
    assert_diffusers_applies_every_module(run.output_dir / "fullbf16.safetensors")


def test_network_weights_start_from_an_existing_file(train, tmp_path):
    out = train("first", network={"network_dim": 4}).output_dir
    first, _ = read_lora(out / "first.safetensors")
    from lora_core.families.sd.loading import load_model
    from lora_core.network.lora import LoRANetwork, NetworkShape
    from lora_core.network.weights import load_network_weights

    bundle = load_model("builtin:tiny-sd1", tmp_path)
    net = LoRANetwork(bundle.unet, bundle.text_encoders, NetworkShape(rank=4, alpha=2.0))
    load_network_weights(net, out / "first.safetensors")
    state = net.state_dict()
    assert set(state) == set(first)
    for key, value in first.items():
        assert torch.equal(state[key].to(value.dtype), value), key
    # and a rank mismatch is an error naming the rank to set
    wrong = LoRANetwork(bundle.unet, bundle.text_encoders, NetworkShape(rank=8, alpha=2.0))
    with pytest.raises(ProfileError, match="set network_dim"):
        load_network_weights(wrong, out / "first.safetensors")


def test_locon_file_has_conv_modules_that_diffusers_applies(train):
    out = train("locon", network={"network_module": "LoCon", "conv_dim": 4,
                                  "conv_alpha": 2.0}).output_dir
    keys = keys_of(out / "locon.safetensors")
    assert "lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight" in keys
    tensors, meta = read_lora(out / "locon.safetensors")
    assert tensors["lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight"].shape[1:] \
        == (32, 3, 3)
    assert tensors["lora_unet_down_blocks_0_resnets_0_conv1.alpha"].item() == 2.0
    assert '"conv_dim": "4"' in meta["ss_network_args"]
    names = assert_diffusers_applies_every_module(out / "locon.safetensors")
    assert any("resnets" in n for n in names)


def test_local_diffusers_folder_trains_like_builtin(train):
    folder = ensure_builtin("tiny-sd1")
    run = train("folder", model={"pretrained_model_name_or_path": str(folder)})
    events, out = run.events, run.output_dir
    assert isinstance(events[-1], RunFinished)
    _, meta = read_lora(out / "folder.safetensors")
    assert meta["ss_sd_model_name"] == folder.name


def test_carried_over_sd_scripts_options_train_together(train):
    """One tiny run with the sd-scripts options of issue 25 on, then a second that merges
    its file (base_weights) and starts from it with its ranks (dim_from_weights)."""
    run = train(
        "carried", repeats=2,
        dataset={"weighted_captions": True, "resize_interpolation": "nearest"},
        network={"network_multiplier": 0.5},
        optimizer={"lr_scheduler": "warmup_stable_decay", "lr_decay_steps": 0.5,
                   "lr_scheduler_min_lr_ratio": 0.1, "text_encoder_lr": 5e-4},
        training={"max_train_epochs": 4, "train_batch_size": 1, "ip_noise_gamma": 0.1,
                  "ip_noise_gamma_random_strength": True, "v_pred_like_loss": 0.1},
        saving={"save_n_epoch_ratio": 4, "save_last_n_epochs": 1,
                "save_every_n_steps": 4, "save_last_n_steps": 4})
    events, out = run.events, run.output_dir
    # 4 steps per epoch, 16 steps: epoch files 1-3 (ratio 4 -> every epoch), only the last
    # kept; step files 4, 8, 12, 16, only those of the last 4 steps (and 12) kept.
    files = sorted(p.name for p in out.glob("carried*.safetensors"))
    assert files == ["carried-000003.safetensors", "carried-step00000012.safetensors",
                     "carried-step00000016.safetensors", "carried.safetensors"]
    unet_lrs = [e.lrs["lr/unet"] for e in events if isinstance(e, StepEnded)]
    assert unet_lrs[:8] == [1e-3] * 8  # stable half, then the decay to 0.1 x
    assert 1e-4 - 1e-9 <= unet_lrs[-1] < unet_lrs[9] < 1e-3
    assert {e.lrs["lr/textencoder"] for e in events if isinstance(e, StepEnded)} \
        >= {5e-4}
    _, meta = read_lora(out / "carried.safetensors")
    assert (meta["ss_ip_noise_gamma"], meta["ss_ip_noise_gamma_random_strength"],
            meta["ss_resize_interpolation"], meta["ss_lr_scheduler"]) == \
        ("0.1", "True", "nearest", "warmup_stable_decay")

    first = str(out / "carried.safetensors")
    run = train("diff", network={"network_dim": 8, "network_weights": first,
                                 "dim_from_weights": True, "base_weights": [first],
                                 "base_weights_multiplier": [0.5]})
    events, out = run.events, run.output_dir
    assert any(isinstance(e, RunFinished) for e in events)
    tensors, _ = read_lora(out / "diff.safetensors")
    ranks = {v.shape[0] for k, v in tensors.items() if k.endswith("lora_down.weight")}
    assert ranks == {4}  # the file's rank, not network_dim = 8
