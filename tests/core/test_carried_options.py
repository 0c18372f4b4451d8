"""sd-scripts options carried over from users' presets (issue 25): each one's effect, pure
where possible (schedules, rotation, noise, loss weights, prompt weights, rates, checks)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn

from lora_core.checks import scan_profile
from lora_core.dataset.images import load_training_image, resample_filter
from lora_core.dataset.plan import make_plan
from lora_core.network.lora import LoRAModule
from lora_core.profile import OptimizerSection, TrainingSection
from lora_core.profile_load import read_profile
from lora_core.saving.latent_cache import LatentKey
from lora_core.training.checkpoints import epoch_to_remove, step_to_remove
from lora_core.training.loss import timestep_weights
from lora_core.training.noise import input_noise
from lora_core.training.optim import build_scheduler, param_groups
from lora_core.training.prompt_weights import apply_weights, parse_prompt_attention
from tests.core.dataset_helpers import make_folder, profile_for

BASE = {"model": {"pretrained_model_name_or_path": "builtin:tiny-sd1"},
        "dataset": {"train_data_dir": "data"}, "saving": {"output_dir": "out"}}


def problems_of(**sections) -> list:
    data = {name: dict(values) for name, values in BASE.items()}
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return read_profile(data, Path("/tmp"))[1]


def messages(problems, severity=None) -> list[str]:
    return [p.message for p in problems if severity is None or p.severity == severity]


# --- the profile accepts them ----------------------------------------------------------------

CARRIED = {
    "saving": {"save_last_n_epochs": 2, "save_last_n_steps": 10, "save_last_n_epochs_state": 1,
               "save_last_n_steps_state": 5, "save_n_epoch_ratio": 3,
               "save_every_n_epochs": None, "save_every_n_steps": 5},
    "optimizer": {"lr_scheduler": "warmup_stable_decay", "lr_decay_steps": 0.2,
                  "lr_scheduler_min_lr_ratio": 0.1, "lr_scheduler_args": ["num_cycles=0.5"]},
    "training": {"ip_noise_gamma": 0.1, "ip_noise_gamma_random_strength": True,
                 "v_pred_like_loss": 0.2},
    "network": {"network_multiplier": -1.0, "base_weights": ["a.safetensors"],
                "base_weights_multiplier": [0.5], "dim_from_weights": True,
                "network_weights": "w.safetensors"},
    "dataset": {"weighted_captions": True, "resize_interpolation": "lanczos"},
}


def test_carried_over_options_are_accepted_without_errors():
    sections = {name: {k: v for k, v in values.items() if v is not None}
                for name, values in CARRIED.items()}
    found = problems_of(**sections)
    assert not [m for m in messages(found, "error")], messages(found)
    assert not any("not supported yet" in m for m in messages(found))


def test_wandb_api_key_is_refused_with_the_environment_variable_named():
    found = problems_of(logging={"wandb_api_key": "secret"})
    (message,) = [m for m in messages(found, "error") if "wandb_api_key" in m]
    assert "WANDB_API_KEY" in message and "secret" not in message


# --- learning-rate schedules -------------------------------------------------------------------

def lrs(steps: int = 10, warmup: int = 0, **fields) -> list[float]:
    param = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=1.0)
    scheduler = build_scheduler(optimizer, OptimizerSection(**fields), steps, warmup)
    out = []
    for _ in range(steps):
        out.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    return out


def test_inverse_sqrt_decays_with_the_timescale():
    got = lrs(lr_scheduler="inverse_sqrt", lr_scheduler_timescale=4)
    assert got == pytest.approx([1 / math.sqrt((s + 4) / 4) for s in range(10)])


def test_cosine_with_min_lr_ends_at_the_ratio():
    got = lrs(steps=100, lr_scheduler="cosine_with_min_lr", lr_scheduler_min_lr_ratio=0.25)
    assert got[0] == 1.0 and min(got) >= 0.25 and got[-1] == pytest.approx(0.25, abs=1e-3)


def test_warmup_stable_decay_has_its_three_phases():
    got = lrs(steps=10, warmup=2, lr_scheduler="warmup_stable_decay", lr_decay_steps=4,
              lr_scheduler_min_lr_ratio=0.5)
    assert got[:2] == pytest.approx([0.5, 0.75])  # warm-up from the min ratio
    assert got[2:6] == [1.0] * 4  # stable: 10 - 2 - 4 steps
    assert got[6] == 1.0 and 0.5 <= got[-1] < got[7] < 1.0  # the decay to the min ratio


def test_lr_scheduler_type_builds_any_class_with_its_args():
    got = lrs(lr_scheduler_type="StepLR", lr_scheduler_args=["step_size=3", "gamma=0.5"])
    assert got == [1, 1, 1, 0.5, 0.5, 0.5, 0.25, 0.25, 0.25, 0.125]
    got = lrs(lr_scheduler="piecewise_constant",
              lr_scheduler_args=["step_rules='1:2,0.1:5,0.01'"])
    assert got == pytest.approx([1, 1, 0.1, 0.1, 0.1, 0.01, 0.01, 0.01, 0.01, 0.01])


def test_schedule_checks():
    errors = messages(problems_of(optimizer={"lr_scheduler": "cosine_with_min_lr"}), "error")
    assert any("lr_scheduler_min_lr_ratio" in m for m in errors)
    errors = messages(problems_of(optimizer={"lr_scheduler_type": "StepLR",
                                             "lr_warmup_steps": 5,
                                             "lr_scheduler_args": ["gamma"]}), "error")
    assert any("lr_warmup_steps` must be 0 with lr_scheduler_type" in m for m in errors)
    assert any("not of the form name=value" in m for m in errors)
    errors = messages(problems_of(optimizer={"lr_scheduler": "piecewise_constant"}), "error")
    assert any("piecewise_constant\" needs its steps" in m for m in errors)
    warnings = messages(problems_of(optimizer={"lr_decay_steps": 5}), "warning")
    assert any("lr_decay_steps` has no effect" in m for m in warnings)


# --- text_encoder_lr with two values -----------------------------------------------------------

def test_two_text_encoder_rates_train_each_sdxl_encoder_at_its_own():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.names = ["lora_te1_text_model_encoder_layers_0_mlp_fc1",
                          "lora_te2_text_model_encoder_layers_0_mlp_fc1",
                          "lora_unet_input_blocks_4_1_proj_in"]
            for name in self.names:
                self.add_module(name, nn.Linear(2, 2))
            self.text_encoder_names, self.unet_names = self.names[:2], self.names[2:]

    opt = dataclasses.replace(OptimizerSection(), learning_rate=1e-4,
                              text_encoder_lr=(1e-5, 2e-5))
    groups = {g.name: g.lr for g in param_groups(Net(), opt)}
    assert groups == {"textencoder1": 1e-5, "textencoder2": 2e-5, "unet": 1e-4}
    same = dataclasses.replace(opt, text_encoder_lr=3e-5)
    assert {g.name: g.lr for g in param_groups(Net(), same)} == {"textencoder": 3e-5,
                                                                 "unet": 1e-4}


# --- saving rotation ---------------------------------------------------------------------------

def test_rotation_removes_what_sd_scripts_removes():
    # sd-scripts' own example: every 10 steps, keep 30 -> at step 50 the step-10 file goes.
    assert step_to_remove(50, 10, 30) == 10
    assert step_to_remove(40, 10, 30) is None
    assert step_to_remove(50, 10, None) is None
    # every 2 epochs, keep the last 2 -> saving epoch 6 removes epoch 2.
    assert epoch_to_remove(6, 2, 2) == 2
    assert epoch_to_remove(4, 2, 2) is None


def test_save_n_epoch_ratio_sets_the_epoch_interval(tmp_path):
    make_folder(tmp_path / "data", "1_x", 2)
    profile = profile_for(tmp_path / "data", max_train_epochs=10, save_n_epoch_ratio=3,
                          save_every_n_epochs=1)
    plan = make_plan(profile, scan_profile(profile))
    assert plan.save_every_n_epochs == 3 and plan.epoch_save_points == [3, 6, 9]


def test_rotation_options_without_numbered_files_warn():
    warnings = messages(problems_of(saving={"save_last_n_steps": 5}), "warning")
    assert any("save_last_n_steps` has no effect" in m for m in warnings)


# --- noise and loss ----------------------------------------------------------------------------

def test_input_perturbation_adds_noise_the_target_does_not_have():
    noise = torch.randn(2, 4, 8, 8)
    off = TrainingSection()
    assert input_noise(noise, off) is noise
    on = TrainingSection(ip_noise_gamma=0.5)
    got = input_noise(noise, on, torch.Generator().manual_seed(3))
    extra = torch.randn(noise.shape, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(got, noise + 0.5 * extra)


def test_v_pred_like_loss_weight_is_sd_scripts_formula():
    snr = torch.tensor([0.5, 1.0, 4.0, 5000.0])
    weights = timestep_weights(snr, TrainingSection(v_pred_like_loss=0.2), False)
    capped = snr.clamp(max=1000.0).double()
    expected = 1 + 0.2 / (capped / (capped + 1))  # loss + loss / scale * k, over loss
    assert weights.double() == pytest.approx(expected.tolist(), rel=1e-6)
    errors = messages(problems_of(training={"v_pred_like_loss": 0.1},
                                  model={"v_parameterization": True}), "error")
    assert any("v_pred_like_loss" in m for m in errors)


# --- network ----------------------------------------------------------------------------------

def test_network_multiplier_scales_the_update():
    layer = nn.Linear(4, 4)
    module = LoRAModule("lora_unet_x", layer, 2, 2.0)
    nn.init.normal_(module.lora_up.weight)
    module.apply_to()
    x = torch.randn(3, 4)
    base = x @ layer.weight.T + layer.bias
    update = layer(x) - base
    module.multiplier = -1.0
    assert torch.allclose(layer(x) - base, -update, atol=1e-6)


def test_dim_from_weights_requires_network_weights_and_a_lora_type():
    errors = messages(problems_of(network={"dim_from_weights": True}), "error")
    assert any("network_weights, which is not set" in m for m in errors)
    errors = messages(problems_of(network={"dim_from_weights": True, "network_module": "LoHa",
                                           "network_weights": "w.safetensors"}), "error")
    assert any("reads LoRA / LoCon files" in m for m in errors)


# --- images -------------------------------------------------------------------------------------

def test_resize_interpolation_picks_the_filter(tmp_path):
    assert resample_filter((100, 100), (50, 50), "nearest") is Image.Resampling.NEAREST
    assert resample_filter((100, 100), (50, 50), "area") is Image.Resampling.BOX
    assert resample_filter((100, 100), (200, 200)) is Image.Resampling.LANCZOS
    path = tmp_path / "i.png"
    torch.manual_seed(0)
    Image.fromarray((torch.rand(64, 64, 3) * 255).byte().numpy()).save(path)
    default = load_training_image(path, (40, 40), (40, 40))
    nearest = load_training_image(path, (40, 40), (40, 40), interpolation="nearest")
    assert default.tobytes() != nearest.tobytes()
    errors = messages(problems_of(dataset={"resize_interpolation": "sinc"}), "error")
    assert any("resize_interpolation" in m for m in errors)


def test_latent_cache_key_keeps_old_files_and_separates_interpolations():
    key = LatentKey("/a.png", 1, 1, (64, 64), (64, 64), (0, 0), "vae")
    assert key.digest() == LatentKey("/a.png", 1, 1, (64, 64), (64, 64), (0, 0), "vae",
                                     "").digest()
    assert key.digest() != dataclasses.replace(key, interpolation="nearest").digest()


# --- weighted captions --------------------------------------------------------------------------

def test_prompt_attention_parses_as_sd_scripts():
    got = parse_prompt_attention("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).")
    assert [text for text, _ in got] == ["a ", "house", " ", "on", " a ", "hill", ", sun, ",
                                         "sky", "."]
    assert [w for _, w in got] == pytest.approx([1.0, 1.573, 1.1, 1.0, 1.1, 0.55, 1.1,
                                                 1.4641, 1.1])
    assert parse_prompt_attention(r"\(literal\]") == [("(literal]", 1.0)]
    assert parse_prompt_attention("plain, tags") == [("plain, tags", 1.0)]


def test_prompt_weights_scale_each_encoders_states():
    hidden = torch.ones(1, 3, 5)
    weights = [torch.tensor([[1.0, 2.0, 1.0]]), torch.tensor([[1.0, 3.0, 1.0]])]
    out = apply_weights(hidden, weights, [2, 3])
    assert out[0, 1].tolist() == [2.0, 2.0, 3.0, 3.0, 3.0]
    assert out[0, 0].tolist() == [1.0] * 5


# --- on the tiny model: dim_from_weights, base_weights, weighted captions --------------------

@pytest.fixture(scope="module")
def bundle():
    from lora_core.families.sd.loading import load_model

    return load_model("builtin:tiny-sd1", Path("."), torch.float32)


def lora_file(bundle, path: Path, dim: int, alpha: float) -> Path:
    from lora_core.network.build import build_network
    from lora_core.profile import NetworkSection
    from lora_core.saving.lora_file import save_lora

    net = build_network(bundle.unet, bundle.text_encoders,
                        NetworkSection(network_module="LoRA", network_dim=dim,
                                       network_alpha=alpha))
    torch.manual_seed(1)
    for module in net.lora_modules():
        nn.init.normal_(module.lora_up.weight, std=0.1)
    save_lora(path, net.state_dict(), {}, "float")
    return path


def test_dim_from_weights_builds_the_files_ranks(bundle, tmp_path):
    from lora_core.network.build import build_network
    from lora_core.network.weights import load_network_weights, module_shapes
    from lora_core.profile import NetworkSection

    path = lora_file(bundle, tmp_path / "w.safetensors", dim=3, alpha=1.5)
    shapes = module_shapes(path)
    assert set(shapes.values()) == {(3, 1.5)}
    net = build_network(bundle.unet, bundle.text_encoders, NetworkSection(network_dim=8),
                        shapes=shapes)
    assert {m.lora_name for m in net.lora_modules()} == set(shapes)
    assert {(m.rank, float(m.alpha)) for m in net.lora_modules()} == {(3, 1.5)}
    load_network_weights(net, path)  # fits exactly: no shape error


def test_base_weights_are_merged_into_the_model(bundle, tmp_path):
    from lora_core.families.sd.loading import load_model
    from lora_core.saving.lora_file import read_lora

    fresh = load_model("builtin:tiny-sd1", Path("."), torch.float32)
    path = lora_file(bundle, tmp_path / "base.safetensors", dim=2, alpha=1.0)
    name = "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_q"
    layer = fresh.unet.mid_block.attentions[0].transformer_blocks[0].attn1.to_q
    before = layer.weight.detach().clone()
    fresh.impl.merge_base_weights(fresh, [str(path)], [0.5])
    tensors, _ = read_lora(path)
    delta = tensors[f"{name}.lora_up.weight"] @ tensors[f"{name}.lora_down.weight"] * 0.5
    assert torch.allclose(layer.weight - before, 0.5 * delta, atol=1e-6)


def test_weighted_captions_scale_the_weighted_words_only(bundle):
    from lora_core.models.bundle import TextSettings
    from lora_core.training.conditioning import encode_captions

    weighted = dataclasses.replace(bundle, text=TextSettings(weighted_captions=True))
    plain = encode_captions(bundle, ["a cat"], torch.device("cpu")).hidden
    same = encode_captions(weighted, ["a cat"], torch.device("cpu")).hidden
    assert torch.equal(plain, same)  # no brackets: exactly the plain encoding
    double = encode_captions(weighted, ["a (cat:2)"], torch.device("cpu")).hidden
    tokens = len(bundle.tokenizers[0]("a").input_ids) - 2  # "a" without BOS / EOS
    cat = slice(1 + tokens, 1 + tokens + len(bundle.tokenizers[0]("cat").input_ids) - 2)
    assert torch.allclose(double[:, cat], 2 * plain[:, cat], atol=1e-5)
    assert torch.allclose(double[:, :1 + tokens], plain[:, :1 + tokens], atol=1e-5)


def test_rotation_deletes_old_files_and_the_states_saved_with_them(tmp_path):
    from types import SimpleNamespace

    from lora_core.events import EventBus
    from lora_core.profile import SavingSection
    from lora_core.saving.train_state import state_name, states_folder
    from lora_core.training.checkpoints import Checkpointer, Outputs, Rotation

    outputs = Outputs(tmp_path, "r", {}, "float", run_dir=tmp_path / "run")
    for step in (4, 8, 12):
        (tmp_path / f"r-step{step:08d}.safetensors").touch()
        (states_folder(outputs.run_dir) / state_name("r", step)).mkdir(parents=True)
    (tmp_path / "r-000001.safetensors").touch()
    (states_folder(outputs.run_dir) / state_name("r", 5)).mkdir(parents=True)  # epoch 1
    saving = SavingSection(output_dir=str(tmp_path), save_last_n_steps=4,
                           save_last_n_steps_state=8, save_last_n_epochs=1)
    keeper = Checkpointer(outputs, saving, lambda: None, None, None, None, EventBus([]),
                          rotation=Rotation(every_n_epochs=1, every_n_steps=4,
                                            steps_per_epoch=5))
    keeper.rotate(SimpleNamespace(step=12, epoch=2), "step")
    # files: the step-4 one goes (12 - 4 - 1 = 7 -> 4); states keep 8 steps: none goes yet
    assert not (tmp_path / "r-step00000004.safetensors").exists()
    assert (tmp_path / "r-step00000008.safetensors").exists()
    assert (states_folder(outputs.run_dir) / state_name("r", 4)).is_dir()
    keeper.rotate(SimpleNamespace(step=16, epoch=2), "step")
    assert not (states_folder(outputs.run_dir) / state_name("r", 4)).exists()
    assert (states_folder(outputs.run_dir) / state_name("r", 8)).is_dir()
    keeper.rotate(SimpleNamespace(step=10, epoch=2), "epoch")  # epoch 2 saved: epoch 1 goes
    assert not (tmp_path / "r-000001.safetensors").exists()
    assert not (states_folder(outputs.run_dir) / state_name("r", 5)).exists()


def test_a_decay_longer_than_the_run_is_refused_before_it(tmp_path):
    from lora_core.checks.schedule import plan_schedule_problems

    profile = profile_for(tmp_path, lr_scheduler="warmup_stable_decay", lr_decay_steps=8)
    (problem,) = plan_schedule_problems(profile, max_train_steps=10, warmup_steps=3)
    assert problem.key == "lr_decay_steps" and "no stable phase" in problem.message
    assert plan_schedule_problems(profile, max_train_steps=11, warmup_steps=3) == []
