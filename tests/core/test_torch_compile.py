"""``[training] torch_compile`` / ``dynamo_backend`` (issue 28): the U-Net's repeated blocks
compiled in place with the LoRA hooked into them (the same outputs and LoRA gradients as
eager, the same module names), the kept compile cache, what check says before a run (gone
backends, missing packages, no C++ compiler, no Triton, CUDA graphs without a GPU) and
calibrate's verdict on whether compiling pays off. (One real inductor run:
tests/e2e/test_training_options.py; the speed: bench/RESULTS.md.)"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from lora_core.checks import compiling as checks
from lora_core.compile_payoff import payoff
from lora_core.errors import ProfileError
from lora_core.family_registry import family
from lora_core.network.lora import LoRAModule
from lora_core.profile import Profile
from lora_core.training import compiling

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture(scope="module")
def tiny_unet():
    from diffusers import UNet2DConditionModel

    from lora_core.models.builtin import ensure_builtin

    return UNet2DConditionModel.from_pretrained(ensure_builtin("tiny-sd1") / "unet")


def _with_lora(unet) -> tuple[torch.nn.Module, list[LoRAModule]]:
    """A copy of ``unet`` with a LoRA on every Linear of its attention blocks and every
    resnet conv, hooked as the trainer hooks it; its up weights non-zero so it acts."""
    unet = copy.deepcopy(unet)
    torch.manual_seed(0)  # the down weights' init
    modules = []
    for name, layer in unet.named_modules():
        if isinstance(layer, (torch.nn.Linear, torch.nn.Conv2d)) and (
                ".attn" in name or "resnets" in name and "conv" in name):
            module = LoRAModule(name.replace(".", "_"), layer, rank=2, alpha=1.0)
            torch.nn.init.normal_(module.lora_up.weight, std=0.1,
                                  generator=torch.Generator().manual_seed(len(modules)))
            module.apply_to()
            modules.append(module)
    return unet, modules


def _pass(unet, modules) -> tuple[torch.Tensor, list[torch.Tensor]]:
    generator = torch.Generator().manual_seed(5)
    latents = torch.randn(2, 4, 8, 8, generator=generator)
    text = torch.randn(2, 77, unet.config.cross_attention_dim, generator=generator)
    out = unet(latents, torch.tensor([10, 500]), text).sample
    out.square().mean().backward()
    return out.detach(), [p.grad for m in modules for p in m.parameters()]


def test_repeated_blocks_compile_in_place_with_the_lora_inside(tiny_unet):
    torch._dynamo.reset()
    eager_unet, eager_modules = _with_lora(tiny_unet)
    compiled_unet, compiled_modules = _with_lora(tiny_unet)
    names = list(compiled_unet.state_dict())
    blocks = family("sd1").repeated_blocks
    count = compiling.compile_repeated_blocks(compiled_unet, blocks, "aot_eager")
    expected = sum(type(m).__name__ in blocks for m in compiled_unet.modules())
    assert count == expected >= 4  # the tiny U-Net's resnets and transformer blocks
    compiled = [m for m in compiled_unet.modules() if getattr(m, "_compiled_call_impl", None)]
    assert len(compiled) == count
    assert {type(m).__name__ for m in compiled} == set(blocks)
    assert list(compiled_unet.state_dict()) == names  # no _orig_mod. in any name
    out, grads = _pass(compiled_unet, compiled_modules)
    eager_out, eager_grads = _pass(eager_unet, eager_modules)
    torch.testing.assert_close(out, eager_out, rtol=1e-5, atol=1e-6)
    assert all(g is not None for g in grads)
    for got, want in zip(grads, eager_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    counters = torch._dynamo.utils.counters["stats"]
    assert counters["unique_graphs"] >= 2  # dynamo really traced the blocks


def test_the_limit_on_recompiles_is_raised_so_no_block_falls_back_to_eager(tiny_unet):
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    before = getattr(config, name)
    try:
        setattr(config, name, 8)
        compiling.compile_repeated_blocks(copy.deepcopy(tiny_unet), ("ResnetBlock2D",),
                                          "eager")
        assert getattr(config, name) == compiling.RECOMPILE_LIMIT
    finally:
        setattr(config, name, before)


def test_a_backend_from_a_package_is_imported_so_torch_lists_it(tiny_unet, monkeypatch):
    """ipex / TensorRT register their backend when imported: the run imports the package
    first (check found it installed) instead of saying torch has no such backend."""
    imported = []

    def fake_import(name):
        imported.append(name)
        raise ImportError("No module named 'intel_extension_for_pytorch'")

    monkeypatch.setattr("importlib.import_module", fake_import)
    with pytest.raises(ProfileError) as info:
        compiling.torch_backend("ipex")
    assert imported == ["intel_extension_for_pytorch"]
    assert "comes with the intel-extension-for-pytorch package" in info.value.message
    assert info.value.hint.startswith("pip install intel-extension-for-pytorch")


def test_a_backend_this_torch_lacks_is_refused_by_field(tiny_unet):
    with pytest.raises(ProfileError) as info:
        compiling.compile_repeated_blocks(copy.deepcopy(tiny_unet), ("ResnetBlock2D",),
                                          "tvm_not_here")
    assert "`[training] dynamo_backend` = \"tvm_not_here\"" in info.value.message
    assert "inductor" in info.value.message and "inductor" in info.value.hint
    assert compiling.TORCH_NAMES["tensort"] == "tensorrt"


def test_the_compile_cache_is_kept_in_the_state_folder_unless_the_user_chose(
        tmp_path, monkeypatch):
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    monkeypatch.setenv("LORA_TUI_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("LORA_TUI_COMPILE_CACHE_DIR", raising=False)
    monkeypatch.delenv("TRITON_CACHE_DIR", raising=False)
    # torch writes its /tmp default into the environment the first time it asks
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", default_cache_dir())
    assert compiling.keep_compile_cache() == tmp_path / "state" / "compile-cache" / "inductor"
    assert os.environ["TRITON_CACHE_DIR"] == str(tmp_path / "state" / "compile-cache" / "triton")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    assert compiling.keep_compile_cache() == tmp_path / "mine"
    # calibrate's measurements (a state folder of their own) are told the real one
    monkeypatch.setenv("LORA_TUI_COMPILE_CACHE_DIR", str(tmp_path / "real"))
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    assert compiling.keep_compile_cache() == tmp_path / "real" / "inductor"


# --- check, before the run ----------------------------------------------------------------


def _machine(has_cuda: bool):
    return SimpleNamespace(has_cuda=has_cuda, gpus=[], cpu_bf16=None)


def _problems(backend: str, has_cuda: bool = False, compile_on: bool = True):
    profile = Profile()
    profile.training.torch_compile = compile_on
    profile.training.dynamo_backend = backend
    return checks.compile_problems(profile, _machine(has_cuda))


def test_check_says_nothing_when_compiling_is_off_or_can_work(monkeypatch):
    monkeypatch.setattr(checks, "cpp_compiler", lambda: "/usr/bin/g++")
    monkeypatch.setattr(checks, "_torch_version", lambda: (2, 13))
    assert _problems("ofi", compile_on=False) == []
    assert _problems("inductor") == []
    assert _problems("aot_eager") == []


@pytest.mark.parametrize("backend", ["aot_ts_nvfuser", "nvprims_nvfuser", "ofi", "fx2trt"])
def test_backends_torch_dropped_are_refused_by_name(backend):
    (problem,) = [p for p in _problems(backend) if p.severity == "error"]
    assert problem.field == ("training", "dynamo_backend")
    assert f"\"{backend}\"" in problem.message and "since torch 2.2" in problem.message
    assert "inductor" in problem.hint


def test_a_backend_from_a_package_that_is_not_installed_says_which(monkeypatch):
    real = checks.importlib.util.find_spec
    monkeypatch.setattr(checks.importlib.util, "find_spec",
                        lambda name: None if name == "intel_extension_for_pytorch"
                        else real(name))
    (problem,) = _problems("ipex")
    assert "intel-extension-for-pytorch package, which is not installed" in problem.message
    assert problem.hint.startswith("pip install intel-extension-for-pytorch")


def test_cuda_graphs_need_a_gpu():
    (problem,) = _problems("cudagraphs")
    assert "CUDA graphs need a CUDA GPU" in problem.message
    assert _problems("cudagraphs", has_cuda=True) == []


def test_inductor_on_a_cpu_needs_the_cpp_compiler_it_uses(monkeypatch):
    """Inductor uses CXX, else g++ on Linux: a machine with only clang++ fails at the first
    step unless CXX names it, so check says so before."""
    monkeypatch.setattr(checks.sys, "platform", "linux")
    monkeypatch.setattr(checks, "_torch_version", lambda: (2, 13))
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(checks.shutil, "which", lambda name: f"/opt/{name}"
                        if name == "clang++" else None)
    (problem,) = _problems("inductor")
    assert problem.field == ("training", "torch_compile")
    assert "compiles C++ with g++, which was not found" in problem.message
    assert "apt install g++" in problem.hint and "CXX=clang++" in problem.hint
    monkeypatch.setenv("CXX", "clang++")
    assert _problems("inductor") == []
    monkeypatch.setattr(checks.sys, "platform", "win32")
    monkeypatch.delenv("CXX")
    (problem,) = _problems("inductor")
    assert "with cl, which was not found" in problem.message


def test_inductor_on_a_gpu_needs_triton(monkeypatch):
    real = checks.importlib.util.find_spec
    monkeypatch.setattr(checks.importlib.util, "find_spec",
                        lambda name: None if name == "triton" else real(name))
    (problem,) = _problems("inductor", has_cuda=True)
    assert "needs Triton, which is not installed" in problem.message
    assert "pip install triton" in problem.hint
    monkeypatch.setattr(checks.sys, "platform", "win32")
    (problem,) = _problems("inductor", has_cuda=True)
    assert "pip install triton-windows" in problem.hint


def test_triton_on_linux_needs_a_c_compiler_for_its_launcher(monkeypatch):
    monkeypatch.setattr(checks, "_torch_version", lambda: (2, 13))
    monkeypatch.setattr(checks.importlib.util, "find_spec", lambda name: object())
    monkeypatch.setattr(checks.sys, "platform", "linux")
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setattr(checks.shutil, "which", lambda name: None)
    (problem,) = _problems("inductor", has_cuda=True)
    assert "builds its launcher with a C compiler" in problem.message
    assert "apt install gcc" in problem.hint
    monkeypatch.setattr(checks.shutil, "which", lambda name: "/usr/bin/clang"
                        if name == "clang" else None)
    assert _problems("inductor", has_cuda=True) == []
    monkeypatch.setattr(checks.sys, "platform", "win32")  # triton-windows brings its own
    monkeypatch.setattr(checks.shutil, "which", lambda name: None)
    assert _problems("inductor", has_cuda=True) == []


def test_an_old_torch_is_warned_that_each_block_compiles_alone(monkeypatch):
    monkeypatch.setattr(checks, "cpp_compiler", lambda: "/usr/bin/g++")
    monkeypatch.setattr(checks, "_torch_version", lambda: (2, 4))
    (problem,) = _problems("inductor")
    assert problem.severity == "warning" and "torch 2.4" in problem.message
    assert "2.5" in problem.hint


def test_lora_train_check_refuses_a_gone_backend_before_anything_loads(capsys):
    from lora_core.cli import main

    code = main(["check", str(EXAMPLES / "quickstart.toml"), "--set",
                 "training.torch_compile=true", "--set", "training.dynamo_backend=fx2trt"])
    captured = capsys.readouterr()
    out = captured.out + captured.err
    assert code == 2
    assert "`[training] dynamo_backend` = \"fx2trt\"" in " ".join(out.split())


# --- calibrate's verdict ------------------------------------------------------------------


def _measured(load: float, per_step: float):
    return SimpleNamespace(load_seconds=load, seconds_per_step=per_step)


def test_compiling_pays_off_after_its_cost_over_the_saving_per_step():
    verdict = payoff(_measured(70.0, 0.6), _measured(10.0, 1.0), planned_steps=200,
                     cache_was_warm=False)
    assert verdict.compile_seconds == 60.0
    assert verdict.break_even_steps == 150  # 60 s / 0.4 s per step
    assert verdict.pays_off
    assert "keep it" in " ".join(verdict.lines())
    short = payoff(_measured(70.0, 0.6), _measured(10.0, 1.0), planned_steps=100,
                   cache_was_warm=True)
    assert not short.pays_off
    assert "torch_compile=false" in " ".join(short.lines())
    assert "the kept cache was warm" in short.lines()[0]


def test_compiling_never_pays_off_when_compiled_steps_are_no_faster():
    for compiled_per_step in (1.0, 0.99, 1.5):  # within 2 %, equal, slower
        verdict = payoff(_measured(70.0, compiled_per_step), _measured(10.0, 1.0),
                         planned_steps=10**6, cache_was_warm=False)
        assert verdict.break_even_steps is None and not verdict.pays_off
        assert "never pays off" in " ".join(verdict.lines())
    as_json = verdict.as_json()
    assert as_json["break_even_steps"] is None and as_json["pays_off"] is False


def test_flux_block_swap_is_not_traced_into_every_compiled_block():
    """The swapper's hook moves weights between devices and differs per block: traced, it
    made each swapped block recompile (towards the limit, after which blocks run eager)."""
    from torch import nn
    from torch.utils.checkpoint import checkpoint

    from lora_core.families.flux.offload import BlockSwapper

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer = nn.Linear(16, 16).requires_grad_(False)
            self.shift = nn.Parameter(torch.zeros(16))

        def forward(self, x):
            return torch.relu(self.layer(x)) + self.shift

    def run(compiled: bool):
        torch.manual_seed(0)
        blocks = nn.ModuleList([Block() for _ in range(6)])
        BlockSwapper(list(blocks)[2:], "cpu")
        if compiled:
            compiling.compile_repeated_blocks(blocks, ("Block",), "aot_eager")
        x = torch.randn(4, 16)
        for _ in range(2):
            h = x
            for block in blocks:
                h = checkpoint(block, h, use_reentrant=False)
            h.sum().backward()
        return h.detach(), [b.shift.grad.clone() for b in blocks]

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    eager_out, eager_grads = run(False)
    out, grads = run(True)
    torch.testing.assert_close(out, eager_out)
    for got, want in zip(grads, eager_grads, strict=True):
        torch.testing.assert_close(got, want)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] <= 3
