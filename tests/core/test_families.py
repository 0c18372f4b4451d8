"""A model family is one package (issue 27): every registered family answers the whole
interface, asking a family imports no torch, and nothing outside ``lora_core/families/``
branches on a family's name."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from lora_core.errors import ModelError
from lora_core.families.interface import ModelFamily
from lora_core.family_registry import FAMILY_NAMES, all_families, family, family_words

ROOT = Path(__file__).resolve().parents[2]


def interface_members() -> set[str]:
    """The names ModelFamily declares: its annotated attributes and its methods."""
    declared = set(ModelFamily.__annotations__)
    declared |= {name for name, value in vars(ModelFamily).items()
                 if callable(value) and not name.startswith("_")}
    return declared


def test_the_interface_lists_what_the_families_are_asked():
    members = interface_members()
    assert {"load", "objective", "build_network", "preview_sampler", "file_metadata",
            "input_problems", "claim_model_file", "tokenize", "encode"} <= members
    assert len(members) > 35


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_every_family_answers_the_whole_interface(name):
    fam = family(name)
    missing = sorted(m for m in interface_members() if not hasattr(fam, m))
    assert missing == [], f"{name} lacks {missing}"
    assert fam.name == name and fam.words and fam.label
    assert fam is family(name)  # one object per family


def test_the_registry_recognises_files_in_order_and_refuses_an_unknown_name():
    assert [f.name for f in all_families()][0] == "flux"  # its layout is told first
    assert set(FAMILY_NAMES) == {f.name for f in all_families()}
    with pytest.raises(ModelError, match="'sd3' is not supported yet"):
        family("sd3")
    assert family_words(None) == family_words("sd3") == "an unknown model family"
    assert family_words("sdxl") == "SDXL"


def test_asking_every_family_imports_no_torch():
    code = ("import sys; from lora_core.family_registry import all_families; "
            "fams = all_families(); [f.words for f in fams]; "
            "[f.block_layout() for f in fams]; [f.misplaced_part({}) for f in fams]; "
            "bad = [m for m in ('torch', 'diffusers', 'transformers', 'safetensors') "
            "if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=120)


# A comparison with a family's name ("sdxl" == family, family in ("sd1", "sd2"), ...).
_FAMILY_NAME = r"[\"'](?:sd1|sd2|sdxl|flux)[\"']"
_BRANCH = re.compile(
    rf"(?:(?:==|!=)\s*{_FAMILY_NAME})|(?:{_FAMILY_NAME}\s*(?:==|!=))"
    rf"|(?:family\w*\s+(?:not\s+)?in\s*[\(\[\{{]\s*{_FAMILY_NAME})")


def test_nothing_outside_the_family_packages_branches_on_a_family_name():
    """The trainer, the checks, the tools and the wizard ask the family; a family name in a
    comparison is only allowed inside ``lora_core/families/`` (a family telling its own
    variants apart). Profile table names ("flux" the [flux] section) and sd-scripts' script
    names are not family branches: the lines below say so where they occur."""
    allowed = {  # (file, text of the line): not a family branch
        ("lora_core/importing/sources.py", 'if key == "sdxl":'),  # LETS' "sdxl" toggle
    }
    found = []
    for folder in ("lora_core", "lora_tui"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel.startswith("lora_core/families/"):
                continue
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                code = line.split("#", 1)[0]
                if _BRANCH.search(code) and (rel, code.strip().split("  #")[0]) not in allowed:
                    found.append(f"{rel}:{number}: {line.strip()}")
    assert found == []


def test_the_branch_pattern_finds_the_shapes_it_forbids():
    for line in ('if family == "sdxl":', "if 'sd2' != fam.name:",
                 'if family in ("sd1", "sd2"):', 'elif source.family not in {"flux"}:'):
        assert _BRANCH.search(line), line
    for line in ('family("sdxl").naming', 'section == "notify"', 'BUILTINS["tiny-sd1"]'):
        assert not _BRANCH.search(line), line


def test_other_pipelines_are_named_not_taken_for_a_family(tmp_path):
    """An SD3 folder has a text_encoder_2 as SDXL's has, and an SD3 transformer file has
    transformer_blocks as Flux's diffusers layout has: neither is taken for those families."""
    import json

    import torch
    from safetensors.torch import save_file

    from lora_core.models.loading import inspect_model

    folder = tmp_path / "sd3"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps(
        {"_class_name": "StableDiffusion3Pipeline", "text_encoder_2": ["x", "y"]}))
    with pytest.raises(ModelError, match="Stable Diffusion 3 is not supported yet"):
        inspect_model(str(folder), tmp_path)
    sd3 = tmp_path / "sd3.safetensors"
    save_file({"transformer_blocks.0.attn.to_q.weight": torch.zeros(4, 4),
               "pos_embed.proj.weight": torch.zeros(4, 4)}, str(sd3))
    with pytest.raises(ModelError) as error:
        inspect_model(str(sd3), tmp_path)
    assert "Flux" not in error.value.message and "not a Stable Diffusion checkpoint" in \
        error.value.message
