"""When a field applies and what its default depends on are declared once, by the profile's
fields (issue 26): the wizard hides a field exactly where the check refuses a value for it,
and the learning rate the wizard offers is the one the check advises."""

from __future__ import annotations

import dataclasses

import pytest

from lora_core.checks.rules import not_applying
from lora_core.profile import ALL_NETWORK_TYPES, FIELD_CONDITIONS, SECTIONS, Profile
from lora_core.training.optimizer_args import optimizer_advisories
from lora_tui.draft import Draft
from lora_tui.steps import applies


def _set_value(section: str, key: str):
    """A value other than the field's default."""
    f = next(f for f in dataclasses.fields(SECTIONS[section]) if f.name == key)
    default = f.default
    if isinstance(default, bool):
        return not default
    if isinstance(default, str):
        return "4"
    return 4 if default in (None, -1) else default + 1


@pytest.mark.parametrize("kind", ALL_NETWORK_TYPES)
def test_the_wizard_shows_a_network_field_exactly_where_the_check_takes_it(kind):
    draft = Draft()
    draft.set_text("network", "network_module", kind)
    conditional = [(key, when) for key, when in FIELD_CONDITIONS.items()
                   if (when.section, when.key) == ("network", "network_module")]
    assert len(conditional) >= 11  # conv_dim, factor, block_dims, dora_wd, dylora_unit...
    for (section, key), when in conditional:
        profile = Profile()
        profile.network.network_module = kind
        setattr(getattr(profile, section), key, _set_value(section, key))
        refused = any(p.field == (section, key) for p in not_applying(profile))
        shown = applies(draft, section, key)
        assert refused == (not shown and when.refused), (kind, key)


def test_sd_scripts_module_names_show_what_they_may_become():
    draft = Draft()
    draft.set_text("network", "network_module", "lycoris.kohya")  # any algo
    assert all(applies(draft, *key) for key, when in FIELD_CONDITIONS.items()
               if when.key == "network_module")
    draft.set_text("network", "network_module", "networks.lora")  # LoRA
    assert applies(draft, "network", "dora_wd") and not applies(draft, "network", "conv_dim")
    draft.set_text("network", "network_module", "networks.dylora")
    assert applies(draft, "network", "dylora_unit") and not applies(draft, "network", "factor")


def test_the_learning_rate_default_follows_the_optimizer_in_wizard_and_check():
    draft = Draft()
    assert draft.default_for("optimizer", "learning_rate") == 1e-4
    draft.set_text("optimizer", "optimizer_type", "Prodigy")
    offered = draft.default_for("optimizer", "learning_rate")
    assert offered == 1.0
    profile = Profile()
    profile.optimizer.optimizer_type = "Prodigy"  # the engine's default stays 1e-4
    assert any(f"around {offered}" in n for n in optimizer_advisories(profile.optimizer))


@pytest.mark.parametrize("model", ["builtin:tiny-sd1", "builtin:tiny-sdxl", "builtin:tiny-flux"])
def test_memory_levers_are_asked_where_the_family_has_them_and_kept(model):
    """fp8_base was asked (and kept) for Flux only: an SD profile opened with fp8_base = true
    lost it on save after SD U-Nets got the lever (issue 28). Each lever is asked where the
    model's family has it, and a value given where it has not stays for the check."""
    from lora_core.family_registry import family

    name = {"builtin:tiny-sd1": "sd1", "builtin:tiny-sdxl": "sdxl",
            "builtin:tiny-flux": "flux"}[model]
    levers = family(name).levers
    draft = Draft()
    draft.set_text("model", "pretrained_model_name_or_path", model)
    draft.set_text("training", "gradient_checkpointing", "true")
    for key in ("fp8_base", "fp8_base_unet", "blocks_to_swap", "cpu_offload_checkpointing"):
        assert applies(draft, "training", key) == (key in levers), (name, key)
    profile = Profile()
    profile.model.pretrained_model_name_or_path = model
    profile.training.fp8_base = True
    profile.training.blocks_to_swap = 2
    saved = Draft.from_profile(profile).data()["training"]  # what the wizard saves
    assert saved["fp8_base"] is True
    assert saved["blocks_to_swap"] == 2  # refused by the check where it cannot work, kept
