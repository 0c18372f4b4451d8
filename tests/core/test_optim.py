"""Optimizers, parameter groups (LoRA+, block weights), schedules and advisories (§6.6, §8)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
import torch
from torch import nn

from lora_core.errors import ProfileError
from lora_core.profile import SUPPORTED_OPTIMIZERS, OptimizerSection
from lora_core.training.optim import (
    build_optimizer,
    build_scheduler,
    evaluation_switch,
    imported_optimizer_class,
    is_loraplus_up,
    optimizer_description,
    param_groups,
)
from lora_core.training.optimizer_args import optimizer_advisories

TE = "lora_te_text_model_encoder_layers_0_mlp_fc1"
DOWN1 = "lora_unet_down_blocks_0_attentions_0_proj_in"  # slot 1
DOWN4 = "lora_unet_down_blocks_1_attentions_0_proj_in"  # slot 4
MID = "lora_unet_mid_block_attentions_0_proj_in"  # slot 12
UP24 = "lora_unet_up_blocks_3_attentions_2_proj_out"  # slot 24


class _LoRA(nn.Module):
    def __init__(self, width: int = 4, rank: int = 2) -> None:
        super().__init__()
        self.lora_down = nn.Linear(width, rank, bias=False)
        self.lora_up = nn.Linear(rank, width, bias=False)


class _LoHa(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        for name, shape in (("hada_w1_a", (4, 2)), ("hada_w1_b", (2, 4)),
                            ("hada_w2_a", (4, 2)), ("hada_w2_b", (2, 4))):
            setattr(self, name, nn.Parameter(torch.randn(shape)))


class _LoKr(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lokr_w1 = nn.Parameter(torch.randn(2, 2))
        self.lokr_w2_a = nn.Parameter(torch.randn(2, 1))
        self.lokr_w2_b = nn.Parameter(torch.randn(1, 2))


class FakeNetwork(nn.Module):
    """Modules under their kohya names, like lora_core.network.adapter.AdapterNetwork."""

    def __init__(self, modules: dict[str, nn.Module]) -> None:
        super().__init__()
        for name, module in modules.items():
            self.add_module(name, module)
        self.text_encoder_names = [n for n in modules if n.startswith("lora_te")]
        self.unet_names = [n for n in modules if n.startswith("lora_unet")]


def section(**fields) -> OptimizerSection:
    base = {"optimizer_type": "AdamW", "optimizer_args": [], "learning_rate": 1e-4,
            "lr_scheduler": "constant"}
    return dataclasses.replace(OptimizerSection(), **{**base, **fields})


def lrs_by_name(groups) -> dict[str, float]:
    return {g.name: g.lr for g in groups}


def ids(params) -> set[int]:
    return {id(p) for p in params}


def test_plain_groups_take_text_encoder_and_unet_rates():
    net = FakeNetwork({TE: _LoRA(), DOWN1: _LoRA()})
    groups = param_groups(net, section(text_encoder_lr=5e-5))
    assert lrs_by_name(groups) == {"textencoder": 5e-5, "unet": 1e-4}
    assert ids(groups[0].params) == ids(getattr(net, TE).parameters())


def test_zero_rate_group_is_dropped():
    net = FakeNetwork({TE: _LoRA(), DOWN1: _LoRA()})
    assert lrs_by_name(param_groups(net, section(text_encoder_lr=0.0))) == {"unet": 1e-4}
    # every rate 0: the profile check's rule (one place); the run only asserts it
    with pytest.raises(AssertionError, match="checks.optimizer"):
        param_groups(net, section(learning_rate=0.0))
    from lora_core.checks.optimizer import profile_problems
    from lora_core.profile import Profile

    zero = Profile(optimizer=section(learning_rate=0.0))
    assert [p.message for p in profile_problems(zero)] == [
        "no parameters would be trained: every learning rate in use is 0"]


def test_loraplus_puts_up_weights_in_a_faster_group():
    net = FakeNetwork({TE: _LoRA(), DOWN1: _LoRA()})
    groups = param_groups(net, section(text_encoder_lr=5e-5, loraplus_lr_ratio=16.0,
                                       loraplus_unet_lr_ratio=4.0))
    assert lrs_by_name(groups) == pytest.approx(
        {"textencoder": 5e-5, "textencoder_plus": 8e-4, "unet": 1e-4, "unet_plus": 4e-4})
    by_name = {g.name: g for g in groups}
    assert ids(by_name["unet_plus"].params) == {id(getattr(net, DOWN1).lora_up.weight)}
    assert ids(by_name["unet"].params) == {id(getattr(net, DOWN1).lora_down.weight)}
    # the optimizer really has these rates
    optimizer = build_optimizer(groups, section())
    assert {g["name"]: g["lr"] for g in optimizer.param_groups} == pytest.approx(
        lrs_by_name(groups))


def test_loraplus_picks_the_rank_to_output_factors_of_loha_and_lokr():
    net = FakeNetwork({"lora_unet_mid_block_attentions_0_proj_in": _LoHa(),
                       "lora_unet_mid_block_attentions_0_proj_out": _LoKr()})
    groups = param_groups(net, section(loraplus_lr_ratio=2.0))
    plus = {n for n, p in net.named_parameters() if id(p) in ids(groups[1].params)}
    assert groups[1].name == "unet_plus" and groups[1].lr == pytest.approx(2e-4)
    assert plus == {"lora_unet_mid_block_attentions_0_proj_in.hada_w1_a",
                    "lora_unet_mid_block_attentions_0_proj_in.hada_w2_a",
                    "lora_unet_mid_block_attentions_0_proj_out.lokr_w2_a"}
    assert not is_loraplus_up("lora_unet_x.lokr_w1")
    assert is_loraplus_up("lora_unet_x.lora_up.weight")
    assert not is_loraplus_up("lora_unet_x.lora_down.weight")


def test_block_weights_make_one_group_per_block_and_drop_zero_blocks():
    net = FakeNetwork({TE: _LoRA(), DOWN1: _LoRA(), DOWN4: _LoRA(), MID: _LoRA(),
                       UP24: _LoRA()})
    # down: slot 0 = 0, slot 1 = 0.5, slot 4 = 0 (dropped); mid = 2; up: empty -> 1
    opt = section(unet_lr=1e-3, down_lr_weight="0,0.5,1,1,0", mid_lr_weight="2")
    groups = param_groups(net, opt)
    assert lrs_by_name(groups) == pytest.approx(
        {"textencoder": 1e-4, "unet_block1": 5e-4, "unet_block12": 2e-3,
         "unet_block24": 1e-3})
    trained = ids(p for g in groups for p in g.params)
    assert not trained & ids(getattr(net, DOWN4).parameters())
    optimizer = build_optimizer(groups, opt)
    assert [g["name"] for g in optimizer.param_groups] == [g.name for g in groups]
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([g.lr for g in groups])


def test_block_weights_combine_with_loraplus():
    net = FakeNetwork({DOWN1: _LoRA()})
    groups = param_groups(net, section(down_lr_weight="1,0.5", loraplus_lr_ratio=4.0))
    assert lrs_by_name(groups) == pytest.approx(
        {"unet_block1": 5e-5, "unet_block1_plus": 2e-4})


def _one_step(name: str, **fields) -> tuple[torch.optim.Optimizer, list[torch.Tensor], list]:
    torch.manual_seed(0)
    # 64x64 = 4096 elements: bitsandbytes keeps 8-bit state from this size on
    net = FakeNetwork({TE: _LoRA(), DOWN1: _LoRA(width=64, rank=64)})
    lr = 1.0 if name.startswith(("DAdapt", "Prodigy")) else 1e-3
    opt = section(optimizer_type=name, learning_rate=lr, **fields)
    groups = param_groups(net, opt)
    optimizer = build_optimizer(groups, opt)
    evaluation_switch(optimizer, opt)  # Schedule-Free: training mode, which step needs
    params = [p for g in groups for p in g.params]
    before = [p.detach().clone() for p in params]
    # RAdamScheduleFree's "silent SGD phase" makes no update until RAdam's variance estimate
    # is rectifiable (the 6th step with beta2 0.999).
    for _ in range(6 if name == "RAdamScheduleFree" else 1):
        for p in params:
            p.grad = torch.randn_like(p)
        optimizer.step()
    return optimizer, before, params


@pytest.mark.filterwarnings("ignore:Paged optimizers are not supported on CPU")
@pytest.mark.parametrize("name", SUPPORTED_OPTIMIZERS)
def test_every_supported_optimizer_builds_and_steps_on_cpu(name):
    optimizer, before, params = _one_step(name)
    assert all(not torch.equal(b, p) for b, p in zip(before, params, strict=True))
    if "8bit" in name:  # really 8-bit state, not a silent 32-bit fallback
        big = params[-1] if params[-1].numel() >= 4096 else params[-2]
        assert optimizer.state[big]["state1"].dtype == torch.uint8


def test_sgd_nesterov_gets_momentum_and_nesterov():
    optimizer, _, _ = _one_step("SGDNesterov")
    assert optimizer.param_groups[0]["nesterov"] is True
    assert optimizer.param_groups[0]["momentum"] == 0.9
    # bitsandbytes keeps (momentum, dampening) as "betas"; its SGD8bit accepts nesterov but
    # runs plain momentum SGD (bitsandbytes 0.50), exactly as under sd-scripts
    optimizer, _, _ = _one_step("SGDNesterov8bit", optimizer_args=["momentum=0.5"])
    assert optimizer.param_groups[0]["betas"] == (0.5, 0)
    optimizer, _, _ = _one_step("SGDNesterov8bit")
    assert optimizer.param_groups[0]["betas"] == (0.9, 0)


@pytest.mark.parametrize(("fields", "expected"), [
    ({"optimizer_type": "AdamW8bit", "optimizer_args": ["weight_decay=0.1"]},
     "bitsandbytes.optim.adamw.AdamW8bit(weight_decay=0.1)"),
    ({"optimizer_type": "AdamW", "optimizer_args": ["weight_decay=0.01", "betas=0.9,0.99"]},
     "torch.optim.adamw.AdamW(weight_decay=0.01,betas=(0.9, 0.99))"),
    ({"optimizer_type": "SGDNesterov"}, "torch.optim.sgd.SGD(momentum=0.9)"),
    ({"optimizer_type": "Lion"}, "lion_pytorch.lion_pytorch.Lion"),
    ({"optimizer_type": "DAdaptation"},
     "dadaptation.experimental.dadapt_adam_preprint.DAdaptAdamPreprint"),
    ({"optimizer_type": "Prodigy", "optimizer_args": ["d_coef=2"]},
     "prodigyopt.prodigy.Prodigy(d_coef=2)"),
    ({"optimizer_type": "AdaFactor"}, "transformers.optimization.Adafactor(relative_step=True)"),
])
def test_description_is_module_class_and_arguments(fields, expected):
    assert optimizer_description(section(**fields)) == expected


def test_adafactor_relative_step_drops_rates_and_reports_its_own():
    net = FakeNetwork({TE: _LoRA(), DOWN1: _LoRA()})
    opt = section(optimizer_type="AdaFactor", lr_scheduler="adafactor", learning_rate=1e-4,
                  unet_lr=3e-4)
    groups = param_groups(net, opt)
    optimizer = build_optimizer(groups, opt)
    assert optimizer.defaults["lr"] is None
    scheduler = build_scheduler(optimizer, opt, max_train_steps=10, warmup_steps=0)
    assert type(scheduler).__name__ == "AdafactorSchedule"
    assert scheduler.get_last_lr() == [1e-4, 1e-4]  # learning_rate until the first step
    firsts = [g["params"][0] for g in optimizer.param_groups]
    rms = [float(p.detach().pow(2).mean().sqrt()) for p in firsts]
    for g in optimizer.param_groups:
        for p in g["params"]:
            p.grad = torch.randn_like(p)
    optimizer.step()
    scheduler.step()
    # relative step at step 1: min(1e-2, 1/sqrt(1)) × max(eps2 = 1e-3, RMS(p))
    assert scheduler.get_last_lr() == pytest.approx([1e-2 * max(1e-3, r) for r in rms])


def test_adafactor_without_relative_step_keeps_group_rates():
    net = FakeNetwork({TE: _LoRA(), DOWN1: _LoRA()})
    opt = section(optimizer_type="AdaFactor", unet_lr=3e-4, lr_scheduler="constant_with_warmup",
                  optimizer_args=["relative_step=False", "scale_parameter=False"])
    optimizer = build_optimizer(param_groups(net, opt), opt)
    assert [g["lr"] for g in optimizer.param_groups] == [1e-4, 3e-4]


def test_missing_package_names_the_pip_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "lion_pytorch", None)  # makes `import` fail
    with pytest.raises(ProfileError) as info:
        optimizer_description(section(optimizer_type="Lion"))
    assert "pip install lion-pytorch" in info.value.hint
    monkeypatch.setitem(sys.modules, "dadaptation", None)
    monkeypatch.setitem(sys.modules, "dadaptation.experimental", None)
    net = FakeNetwork({DOWN1: _LoRA()})
    opt = section(optimizer_type="DAdaptation", learning_rate=1.0)
    with pytest.raises(ProfileError) as info:
        build_optimizer(param_groups(net, opt), opt)
    assert "pip install dadaptation" in info.value.hint


def test_mixed_rates_are_refused_for_optimizers_that_cannot_step_with_them():
    import dadaptation

    # the premise: DAdaptAdam stops at its first step with different group rates
    a, b = nn.Parameter(torch.ones(2)), nn.Parameter(torch.ones(2))
    raw = dadaptation.DAdaptAdam([{"params": [a], "lr": 1.0}, {"params": [b], "lr": 0.5}])
    a.grad, b.grad = torch.ones(2), torch.ones(2)
    with pytest.raises(RuntimeError, match="different lr"):
        raw.step()
    net = FakeNetwork({TE: _LoRA(), DOWN1: _LoRA()})
    opt = section(optimizer_type="DAdaptAdam", learning_rate=1.0, text_encoder_lr=0.5)
    # the profile check refuses it (test below); the run only asserts it
    with pytest.raises(AssertionError, match="checks.optimizer"):
        build_optimizer(param_groups(net, opt), opt)
    # DAdaptAdaGrad uses the first group's rate instead: it builds (with an advisory)
    opt = dataclasses.replace(opt, optimizer_type="DAdaptAdaGrad")
    assert build_optimizer(param_groups(net, opt), opt) is not None


def test_bad_optimizer_args_are_a_profile_error():
    net = FakeNetwork({DOWN1: _LoRA()})
    opt = section(optimizer_type="SGDNesterov", optimizer_args=["betas=0.9,0.99"])
    with pytest.raises(ProfileError, match="optimizer_args"):
        build_optimizer(param_groups(net, opt), opt)


def test_advisories_for_adaptive_optimizers():
    assert any("around 1.0" in n for n in optimizer_advisories(section(optimizer_type="Prodigy")))
    assert optimizer_advisories(section(optimizer_type="Prodigy", learning_rate=1.0)) == []
    first = optimizer_advisories(section(optimizer_type="DAdaptAdaGrad", learning_rate=1.0,
                                         text_encoder_lr=0.5))
    assert len(first) == 1 and "only the first" in first[0]
    assert optimizer_advisories(section()) == []


def test_several_rates_for_an_optimizer_that_refuses_them_stop_the_profile():
    """DAdaptAdam & co raise at their first step: the profile check says so first."""
    from lora_core.checks.optimizer import profile_problems
    from lora_core.profile import Profile

    def errors(**fields):
        p = Profile()
        for key, value in fields.items():
            owner = p.network if key.startswith("network_") else p.optimizer
            setattr(owner, key, value)
        return [e for e in profile_problems(p) if e.is_error]

    mixed = errors(optimizer_type="DAdaptAdam", learning_rate=1.0, text_encoder_lr=0.5)
    assert len(mixed) == 1 and "refuses different learning rates" in mixed[0].message
    assert mixed[0].field == ("optimizer", "learning_rate")
    assert errors(optimizer_type="Prodigy", learning_rate=1.0, loraplus_lr_ratio=16.0)
    assert errors(optimizer_type="Prodigy", learning_rate=1.0, up_lr_weight="cosine")
    # a side that is not trained has no group: its rate does not count
    assert errors(optimizer_type="DAdaptAdam", learning_rate=1.0, text_encoder_lr=0.5,
                  network_train_unet_only=True) == []
    assert errors(optimizer_type="DAdaptAdaGrad", learning_rate=1.0, text_encoder_lr=0.5) == []
    nothing = errors(optimizer_type="AdamW", learning_rate=0.0)
    assert len(nothing) == 1 and "every learning rate in use is 0" in nothing[0].message


def test_advisories_for_adafactor():
    relative = optimizer_advisories(section(optimizer_type="AdaFactor", unet_lr=1e-3,
                                            lr_scheduler="adafactor"))
    assert any("unet_lr is ignored" in n for n in relative)
    fixed = optimizer_advisories(section(
        optimizer_type="AdaFactor", lr_scheduler="cosine", max_grad_norm=1.0,
        optimizer_args=["relative_step=False", "clip_threshold=2.0"]))
    assert len(fixed) == 3
    assert any("max_grad_norm = 0" in n for n in fixed)
    assert any("constant_with_warmup" in n for n in fixed)
    assert any("clip_threshold=1.0" in n for n in fixed)
    tuned = optimizer_advisories(section(
        optimizer_type="AdaFactor", lr_scheduler="constant_with_warmup", max_grad_norm=0.0,
        optimizer_args=["relative_step=False"]))
    assert tuned == []


def test_advisories_import_no_torch():
    code = ("import sys\n"
            "from lora_core.profile import OptimizerSection\n"
            "from lora_core.training.optimizer_args import optimizer_advisories\n"
            "notes = optimizer_advisories(OptimizerSection(optimizer_type='Prodigy',"
            " up_lr_weight='cosine'))\n"
            "assert notes, notes\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in"
            " ('torch', 'bitsandbytes', 'transformers', 'prodigyopt')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("read", ["source", "imported"])
def test_arguments_an_optimizer_does_not_take_are_refused_before_the_model_loads(read):
    """The installed optimizer's signature, read from its source (check: no import) or from
    the imported class (run, when the source cannot be read), judges the same way."""
    from lora_core.checks.optimizer import (
        OptimizerSignature,
        installed_optimizer_problems,
        static_signature,
    )
    from lora_core.training.optim import optimizer_class
    from lora_core.training.optimizer_args import OPTIMIZER_CLASSES

    def problems(opt):
        if read == "source":
            return installed_optimizer_problems(opt)
        module, name, _ = OPTIMIZER_CLASSES[opt.optimizer_type]
        assert static_signature(module, name) is not None  # the source is readable here
        return installed_optimizer_problems(
            opt, OptimizerSignature.of(optimizer_class(opt.optimizer_type)))

    adafactor = OptimizerSection(optimizer_type="AdaFactor", lr_scheduler="adafactor",
                                 optimizer_args=["betas=0.9,0.99"])
    found = problems(adafactor)
    assert len(found) == 1 and found[0].field == ("optimizer", "optimizer_args")
    assert "takes no argument 'betas'" in found[0].message and "beta1" in found[0].hint
    assert problems(OptimizerSection(optimizer_type="AdamW")) == []  # the defaults fit
    # unset optimizer_args: the AdamW defaults are not given to other optimizers
    assert problems(OptimizerSection(optimizer_type="AdaFactor",
                                     lr_scheduler="adafactor")) == []
    # a value of the wrong shape: one number where the optimizer takes a pair
    pair = problems(OptimizerSection(optimizer_type="AdamW8bit",
                                     optimizer_args=["betas=0.9", "weight_decay=0.1"]))
    assert len(pair) == 1 and "expects 2 numbers for betas" in pair[0].message
    assert "betas=0.9,0.999" in pair[0].hint
    flag = problems(OptimizerSection(optimizer_type="Prodigy", learning_rate=1.0,
                                     optimizer_args=["decouple=0.5"]))
    assert len(flag) == 1 and "True or False" in flag[0].message


def test_adamw_is_fused_unless_turned_off_or_given_foreach():
    from lora_core.profile import OptimizerSection
    from lora_core.training.optim import ParamGroupSpec, build_optimizer

    def built(**fields):
        params = [torch.nn.Parameter(torch.randn(3, 3))]
        section = OptimizerSection(optimizer_type="AdamW", **fields)
        return build_optimizer([ParamGroupSpec("unet", params, 1e-3)], section)

    assert built().defaults["fused"] is True
    assert not built(fused_optimizer=False).defaults["fused"]
    assert not built(optimizer_args=["foreach=True"]).defaults["fused"]
    # Same update as the per-tensor loop (to float rounding).
    torch.manual_seed(0)
    a, b = built(), built(fused_optimizer=False)
    for opt in (a, b):
        with torch.no_grad():
            opt.param_groups[0]["params"][0].copy_(torch.ones(3, 3))
        opt.param_groups[0]["params"][0].grad = torch.full((3, 3), 0.5)
        opt.step()
    assert torch.allclose(a.param_groups[0]["params"][0], b.param_groups[0]["params"][0],
                          atol=1e-7)


@pytest.mark.parametrize("name", ["AdamWScheduleFree", "RAdamScheduleFree", "SGDScheduleFree"])
def test_schedule_free_evaluates_with_its_average_and_trains_on_exactly(name):
    """Inside the switch the parameters are the optimizer's evaluation weights (x, what
    eval() gives); on leaving, the training weights (y) are back bit for bit, so sampling
    or saving never changes training. The schedule is constant at learning_rate."""
    optimizer, _, params = _one_step(name)
    for p in params:
        p.grad = torch.randn_like(p)
    optimizer.step()
    opt = section(optimizer_type=name, learning_rate=1e-3)
    switch = evaluation_switch(optimizer, opt)
    training = [p.detach().clone() for p in params]
    with switch():
        evaluating = [p.detach().clone() for p in params]
    assert all(torch.equal(t, p) for t, p in zip(training, params, strict=True))
    assert any(not torch.equal(t, e) for t, e in zip(training, evaluating, strict=True))
    optimizer.eval()  # the library's own switch gives the same evaluation weights
    assert all(torch.allclose(e, p, atol=0, rtol=1e-6)
               for e, p in zip(evaluating, params, strict=True))
    optimizer.train()
    scheduler = build_scheduler(optimizer, section(optimizer_type=name, lr_scheduler="cosine"),
                                100, 10)
    for _ in range(5):
        optimizer.step()
        scheduler.step()
    assert scheduler.get_last_lr() == pytest.approx([1e-3] * len(optimizer.param_groups))
    assert evaluation_switch(optimizer, section(optimizer_type="AdamW")) is None


def test_schedule_free_advises_its_own_warmup():
    notes = optimizer_advisories(section(optimizer_type="AdamWScheduleFree",
                                         lr_scheduler="cosine", lr_warmup_steps=10))
    assert len(notes) == 1 and "lr_warmup_steps are not used" in notes[0]
    assert "warmup_steps=N" in notes[0]
    assert optimizer_advisories(section(optimizer_type="AdamWScheduleFree",
                                        lr_scheduler="constant")) == []


def test_an_optimizer_by_import_path_builds_and_a_wrong_one_is_named():
    """optimizer_type = "torch.optim.RAdam" (sd-scripts takes any import path); what does
    not import or is no optimizer class is a ProfileError naming the path, which `check`
    reports at the field before any model loads."""
    from lora_core.checks.optimizer import installed_optimizer_problems

    optimizer, before, params = _one_step("torch.optim.RAdam")
    assert type(optimizer) is torch.optim.RAdam
    assert all(not torch.equal(b, p) for b, p in zip(before, params, strict=True))
    assert optimizer_description(section(optimizer_type="torch.optim.RAdam",
                                         optimizer_args=["weight_decay=0.01"])) \
        == "torch.optim.radam.RAdam(weight_decay=0.01)"
    for path, said in (("no_such_module_x.Opt", "does not import"),
                       ("torch.optim.NoSuchOpt", "is nothing, not a torch optimizer"),
                       ("torch.optim.lr_scheduler", "is a module, not a torch optimizer")):
        with pytest.raises(ProfileError, match=said):
            imported_optimizer_class(path)
        found = installed_optimizer_problems(section(optimizer_type=path))
        assert len(found) == 1 and found[0].field == ("optimizer", "optimizer_type")
        assert path in found[0].message
    bad_arg = installed_optimizer_problems(section(optimizer_type="torch.optim.RAdam",
                                                   optimizer_args=["momentum=0.9"]))
    assert len(bad_arg) == 1 and "takes no argument 'momentum'" in bad_arg[0].message
