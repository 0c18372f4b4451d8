"""DoRA and the LyCORIS family through the whole engine (in-process, tiny SD1 model): each
algo chosen as sd-scripts users choose it (``lycoris.kohya`` + ``algo=``) trains, writes
LyCORIS' key names and metadata, and loads back through ``network_weights`` exactly; the
DoRA file holds the weights the network trained with; and what diffusers does with each
file, proved rather than assumed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lora_core.events import StepEnded
from lora_core.families.sd.loading import load_model
from lora_core.network.build import build_network
from lora_core.network.weights import load_network_weights
from lora_core.saving.lora_file import read_metadata
from tests.e2e.conftest import (
    assert_same_as_reference,
    run_reference,
    stop_at_step_7_then_resume,
    write_profile,
)

pytest.importorskip("lycoris")

# algo -> (network_args besides algo, the tensor names of every module besides alpha)
ALGOS = {
    "dora": (["algo=locon", "dora_wd=True"], {"lora_down.weight", "lora_up.weight",
                                              "dora_scale"}),
    "dora-loha": (["algo=loha", "dora_wd=True"], {"hada_w1_a", "hada_w1_b", "hada_w2_a",
                                                  "hada_w2_b", "dora_scale"}),
    "dora-lokr": (["algo=lokr", "dora_wd=True", "factor=4"], None),
    "dylora": (["algo=dylora", "unit=2"], {"lora_down.weight", "lora_up.weight"}),
    "full": (["algo=full"], {"diff"}),  # and diff_b where the layer has a bias
    "ia3": (["algo=ia3"], {"weight", "on_input"}),
    "diag-oft": (["algo=diag-oft"], {"oft_blocks"}),
    "boft": (["algo=boft"], {"oft_blocks"}),
    "glora": (["algo=glora"], {"a1.weight", "a2.weight", "b1.weight", "b2.weight"}),
}

# Every run here trains tiny_profile's network (network_dim 4, network_alpha 2) of the type
# it names and saves in float32, so that reloaded tensors compare exactly.
FLOAT32 = {"save_precision": "float"}


def fields_by_module(tensors: dict) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for key in tensors:
        module, field = key.split(".", 1)
        found.setdefault(module, set()).add(field)
    return found


@pytest.mark.parametrize("algo", list(ALGOS))
def test_each_algo_trains_saves_lycoris_keys_and_reloads_exactly(train, algo):
    args, fields = ALGOS[algo]
    run = train(algo.replace("-", ""), network={"network_module": "lycoris.kohya",
                                                "network_args": args}, saving=FLOAT32)
    profile, final = run.profile, run.final_file
    losses = [e.loss for e in run.events if isinstance(e, StepEnded)]
    assert len(losses) == 1 and all(torch.isfinite(torch.tensor(losses)))
    tensors = load_file(str(final))
    modules = fields_by_module(tensors)
    assert any(m.startswith("lora_te_") for m in modules)
    assert any(m.startswith("lora_unet_") for m in modules)
    for module, found in modules.items():
        if algo == "full":
            assert found - {"diff_b"} == fields, module
        elif fields is not None:
            assert found - {"alpha"} == fields, module
        else:  # LoKr: full or factored w2 by shape, and always the DoRA magnitude
            assert "dora_scale" in found and "lokr_w1" in found, module
    metadata = read_metadata(final)
    ss_args = json.loads(metadata["ss_network_args"])
    if algo == "dylora":
        assert metadata["ss_network_module"] == "networks.dylora" and ss_args["unit"] == "2"
    else:
        assert metadata["ss_network_module"] == "lycoris.kohya"
        assert ss_args["algo"] == args[0].split("=")[1]
    # Reloaded through network_weights: every tensor exactly as saved.
    bundle = load_model("builtin:tiny-sd1", Path("."), torch.float32)
    torch.manual_seed(123)  # another initialisation: the load must overwrite all of it
    network = build_network(bundle.unet, bundle.text_encoders, profile.network)
    load_network_weights(network, final)
    network.apply_to()  # as training does (Full's state dict is W - W0 once applied)
    reloaded = network.state_dict()
    assert reloaded.keys() == tensors.keys()
    for key, tensor in tensors.items():
        mine = reloaded[key].detach().cpu()
        if algo == "full":  # Full stores W - W0 and loads W0 + diff: float rounding only
            torch.testing.assert_close(mine.to(tensor.dtype), tensor, atol=1e-6, rtol=0)
        else:
            assert torch.equal(mine.to(tensor.dtype), tensor), key


def test_a_dora_run_continues_from_its_file(train):
    network = {"network_module": "LoCon", "dora_wd": True}
    first = train("first", network=network, saving=FLOAT32).final_file
    run = train("second", network={**network, "network_weights": str(first)}, saving=FLOAT32)
    second = run.final_file
    assert [e for e in run.events if isinstance(e, StepEnded)]
    before, after = load_file(str(first)), load_file(str(second))
    assert before.keys() == after.keys()
    # It started from the file: the magnitudes moved from the file's, not from a fresh start.
    key = next(k for k in before if k.endswith("dora_scale"))
    assert not torch.equal(before[key], after[key])
    assert (before[key] - after[key]).abs().max() < 0.05
    # `check` says so before anything loads when the profile and the file disagree.
    from lora_core.checks.inputs import lora_weights_problems

    profile = train("plain", network={"network_module": "LoCon"}, saving=FLOAT32).profile
    profile.network.network_weights = str(first)
    (problem,) = lora_weights_problems(profile, "sd1")
    assert "is a DoRA file (it has dora_scale), but dora_wd is false" in problem.message
    profile.network.network_module = "BOFT"
    (problem,) = lora_weights_problems(profile, "sd1")
    assert "holds a LoRA/LoCon network, but network_module is \"BOFT\"" in problem.message


def test_the_dora_file_holds_the_weights_the_network_trained(train):
    """A1111/ComfyUI rebuild a DoRA layer as dora_scale · (W0 + ΔW) / ‖W0 + ΔW‖ per output
    row; computed here from the file alone, it equals the trained module's weight."""
    run = train("dorafile", network={"network_module": "LoRA", "dora_wd": True},
                saving=FLOAT32)
    profile, final = run.profile, run.final_file
    tensors = load_file(str(final))
    bundle = load_model("builtin:tiny-sd1", Path("."), torch.float32)
    network = build_network(bundle.unet, bundle.text_encoders, profile.network)
    load_network_weights(network, final)
    network.apply_to()
    network.eval()
    checked = 0
    for module in network.lora_modules():
        org = module.org_module[0]
        if not isinstance(org, torch.nn.Linear):
            continue
        name = module.lora_name
        down, up = tensors[f"{name}.lora_down.weight"], tensors[f"{name}.lora_up.weight"]
        scale = tensors[f"{name}.alpha"].item() / down.shape[0]
        merged = org.weight.detach() + up @ down * scale
        norm = merged.norm(dim=1, keepdim=True)
        expected = tensors[f"{name}.dora_scale"] * merged / norm
        eye = torch.eye(org.in_features)
        with torch.no_grad():
            got = (org(eye) - (org.bias if org.bias is not None else 0)).T
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
        checked += 1
    network.remove()
    assert checked > 10


def test_what_diffusers_does_with_these_files(train):
    """diffusers reads kohya DoRA files by dropping dora_scale (it says so), so it applies
    the LoRA part only; it refuses LyCORIS' other key names outright. A1111/Forge and
    ComfyUI are the consumers for these types."""
    from diffusers import DiffusionPipeline

    from lora_core.models.builtin import ensure_builtin
    from tests.e2e.conftest import _expected_delta, _kohya_module_map

    dora = train("dorad", network={"network_module": "LoCon", "dora_wd": True},
                 saving=FLOAT32).final_file
    oft = train("oftd", network={"network_module": "lycoris.kohya",
                                 "network_args": ["algo=diag-oft"]}, saving=FLOAT32).final_file

    def pipeline():
        return DiffusionPipeline.from_pretrained(
            ensure_builtin("tiny-sd1"), safety_checker=None, requires_safety_checker=False,
            local_files_only=True)

    pipe = pipeline()
    modules = _kohya_module_map(pipe)
    before = {name: m.weight.detach().clone() for name, m in modules.items()}
    pipe.load_lora_weights(str(dora))
    pipe.fuse_lora()
    tensors = load_file(str(dora))
    names = sorted({k.split(".")[0] for k in tensors})
    for name in names:
        down, up = tensors[f"{name}.lora_down.weight"], tensors[f"{name}.lora_up.weight"]
        scale = tensors[f"{name}.alpha"].item() / down.shape[0]
        delta = modules[name].weight.detach() - before[name]
        expected = _expected_delta(down, up, delta.shape) * scale
        torch.testing.assert_close(delta, expected, atol=2e-4, rtol=1e-2)  # no magnitude
    with pytest.raises(ValueError, match="not been correctly renamed"):
        pipeline().load_lora_weights(str(oft))


def test_a_stopped_full_run_resumes_exactly(tmp_path):
    """Full is the type whose file form depends on its state (W - W0): the training state
    keeps raw tensors, so a stopped run continues bit for bit."""

    def full_profile(name: str, **saving) -> Path:
        # The resume tests' profile with a Full network in place of its LoRA.
        network = {"network_dim": None, "network_alpha": None, "network_module": "lycoris.kohya",
                   "network_args": ["algo=full"], "network_train_unet_only": True}
        return write_profile(tmp_path, name, network=network,
                             optimizer={"learning_rate": 1e-4}, saving=saving)

    reference = run_reference(tmp_path, full_profile("ref"))
    _, resumed, stopped_at = stop_at_step_7_then_resume(
        tmp_path, full_profile("stop", save_every_n_steps=None), "stop")
    assert_same_as_reference(reference, resumed, tmp_path / "out-stop", "stop", stopped_at + 1)
