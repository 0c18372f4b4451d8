"""Prompt files for preview images (.txt / .toml / .json), the sampling schedule, the sample
file names and the prompt-file check. Pure Python: nothing here imports torch."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytest

from lora_core.checks import inputs
from lora_core.checks.inputs import sample_prompt_problems
from lora_core.errors import ProfileError
from lora_core.events import SampleSaved, event_from_json
from lora_core.profile import Profile, SampleSection
from lora_core.training.sample_prompts import (
    SamplePrompt,
    read_sample_prompts,
    sample_file_name,
    should_sample,
)


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# --- .txt ---------------------------------------------------------------------------------


def test_every_txt_option_is_read_case_insensitively(tmp_path):
    path = write(tmp_path, "p.txt", "a cat, sitting --N blurry, lowres --w 768 --H 640 --d 42 "
                 "--s 20 --L 5.5 --SS Euler_A\n")
    assert read_sample_prompts(path, "ddim") == [SamplePrompt(
        prompt="a cat, sitting", negative_prompt="blurry, lowres", width=768, height=640,
        seed=42, sample_steps=20, scale=5.5, sampler="euler_a")]


def test_txt_defaults_blank_and_comment_lines(tmp_path):
    path = write(tmp_path, "p.txt", "\ufeff# a comment --w 8\n\nfirst\n   \n  # indented comment\n"
                 "second --w 256\n")
    first, second = read_sample_prompts(path, "dpmsolver++")
    # sd-scripts' defaults; the profile's sample_sampler where a line names none
    assert first == SamplePrompt(prompt="first", negative_prompt=None, width=512, height=512,
                                 seed=None, sample_steps=30, scale=7.5, sampler="dpmsolver++")
    assert (second.prompt, second.width, second.height) == ("second", 256, 512)


@pytest.mark.parametrize(("options", "expected"), [
    ("--w 100 --h 130", (96, 128, 30)),     # floored to a multiple of 8
    ("--w 10 --h 0", (64, 64, 30)),         # never below 64
    ("--w 71 --h 64 --s 0", (64, 64, 1)),    # steps clamped to 1..1000
    ("--s 5000", (512, 512, 1000)),
])
def test_sizes_and_steps_are_fixed_like_sd_scripts(tmp_path, options, expected):
    path = write(tmp_path, "p.txt", f"x {options}\n")
    (prompt,) = read_sample_prompts(path, "ddim")
    assert (prompt.width, prompt.height, prompt.sample_steps) == expected


def test_a_line_that_starts_with_an_option_has_an_empty_prompt(tmp_path):
    path = write(tmp_path, "p.txt", "--n ugly --d 3\n")
    (prompt,) = read_sample_prompts(path, "ddim")
    assert (prompt.prompt, prompt.negative_prompt, prompt.seed) == ("", "ugly", 3)


def test_options_for_other_architectures_are_ignored_with_a_warning(tmp_path, caplog):
    path = write(tmp_path, "p.txt", "x --g 3.5 --cn pose.png --ctr 0.25 --rcfg 1 --fs 3 --w 64\n")
    with caplog.at_level(logging.INFO, logger="lora_core"):
        (prompt,) = read_sample_prompts(path, "ddim")
    assert (prompt.prompt, prompt.width) == ("x", 64)
    warned = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    for option in ("--cn", "--ctr", "--rcfg", "--fs"):
        assert f"{option} (" in warned
    assert "line 1" in warned
    # Flux's distilled guidance is kept for Flux runs (SD ignores it), and said so
    assert prompt.guidance_scale == 3.5
    assert "--g (guidance_scale) is read by Flux models only" in caplog.text


@pytest.mark.parametrize(("line", "named"), [
    ("x --x 3", "--x"),
    ("x --width 512", "--width"),
    ("x --w big", "--w 'big'"),
    ("x --w 51.5", "--w '51.5'"),
    ("x --d -1", "--d = -1"),
    ("x --l much", "--l 'much'"),
    ("x --l -2", "--l = -2"),
    ("x --ss euler_b", "'euler_b'"),
    ("x --ss ddpm", "'ddpm'"),  # sd-scripts dropped it from the list: it gives bad images
    ("x --w", "--w has no value"),
    ("x --ss pndm --s 3", "--s = 3"),
])
def test_txt_errors_name_the_file_line_and_option(tmp_path, line, named):
    path = write(tmp_path, "p.txt", f"# header\nfine --w 64\n{line}\n")
    with pytest.raises(ProfileError) as exc:
        read_sample_prompts(path, "ddim")
    assert str(path) in exc.value.message and "line 3" in exc.value.message
    assert named in exc.value.message
    assert exc.value.hint


def test_error_hints_suggest_the_closest_name(tmp_path):
    path = write(tmp_path, "p.txt", "x --ss eulr_a\n")
    with pytest.raises(ProfileError, match="did you mean 'euler_a'"):
        read_sample_prompts(path, "ddim")
    path = write(tmp_path, "q.txt", "x --sss euler\n")
    with pytest.raises(ProfileError, match="did you mean --ss"):
        read_sample_prompts(path, "ddim")


def test_unreadable_files(tmp_path):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes(b"fine\nalso fine\ncaf\xe9\n")
    with pytest.raises(ProfileError, match=r"line 3: not UTF-8") as exc:
        read_sample_prompts(bad, "ddim")
    assert str(bad) in exc.value.message and "UTF-8" in exc.value.hint
    with pytest.raises(ProfileError, match="does not exist"):
        read_sample_prompts(tmp_path / "missing.txt", "ddim")
    with pytest.raises(ProfileError, match="unknown kind '.yaml'"):
        read_sample_prompts(write(tmp_path, "p.yaml", "x"), "ddim")


# --- .toml and .json ----------------------------------------------------------------------


TOML = """
[prompt]
negative_prompt = "lowres"
width = 640
sample_steps = 12
scale = 6

[[prompt.subset]]
prompt = "a red cube"
seed = 1

[[prompt.subset]]
prompt = "a blue cube"
width = 300
negative_prompt = "blurry"
sample_sampler = "k_euler"
"""


def test_toml_subsets_are_merged_over_the_defaults(tmp_path):
    red, blue = read_sample_prompts(write(tmp_path, "p.toml", TOML), "ddim")
    assert red == SamplePrompt(prompt="a red cube", negative_prompt="lowres", width=640,
                               height=512, seed=1, sample_steps=12, scale=6.0, sampler="ddim")
    assert blue == SamplePrompt(prompt="a blue cube", negative_prompt="blurry", width=296,
                                height=512, seed=None, sample_steps=12, scale=6.0,
                                sampler="k_euler")


@pytest.mark.parametrize(("text", "named"), [
    ("[prompt\nx = 1", "not valid TOML"),
    ("[prompt]\nwidth = 64\n", "no [[prompt.subset]]"),
    ("[prompts]\n[[prompts.subset]]\nprompt = 'x'\n", "found [prompts]"),
    ("[prompt]\n[[prompt.subset]]\nprompt = 'a'\n[[prompt.subset]]\npromt = 'x'\n",
     "[[prompt.subset]] 2: unknown key 'promt'; did you mean 'prompt'"),
    ("[prompt]\nwidth = '512'\n[[prompt.subset]]\nprompt = 'a'\n", "width = '512' must be"),
    ("[prompt]\n[[prompt.subset]]\nprompt = 'a'\nseed = true\n", "seed = True must be"),
    ("[prompt]\n[[prompt.subset]]\nprompt = 'a'\nsample_sampler = 'fast'\n", "'fast'"),
])
def test_toml_errors(tmp_path, text, named):
    path = write(tmp_path, "p.toml", text)
    with pytest.raises(ProfileError) as exc:
        read_sample_prompts(path, "ddim")
    assert str(path) in exc.value.message and named in exc.value.message


def test_bad_toml_names_the_line(tmp_path):
    path = write(tmp_path, "p.toml", "[prompt]\n[[prompt.subset]]\nprompt = 'a'\nwidth = = 3\n"
                 "[[prompt.subset]]\nprompt = 'b'\n")
    with pytest.raises(ProfileError, match="line 4"):
        read_sample_prompts(path, "ddim")


def test_json_takes_dicts_and_txt_style_lines(tmp_path, caplog):
    data = ["a cat --w 320 --d 5", {"prompt": "a dog", "negative_prompt": None, "height": 200,
                                    "scale": 4, "guidance_scale": 3.5}]
    path = write(tmp_path, "p.json", json.dumps(data))
    with caplog.at_level(logging.INFO, logger="lora_core"):
        cat, dog = read_sample_prompts(path, "heun")
    assert cat == SamplePrompt(prompt="a cat", width=320, seed=5, sampler="heun")
    assert dog == SamplePrompt(prompt="a dog", height=200, scale=4.0, sampler="heun")
    assert (dog.guidance_scale, dog.scale_given, cat.scale_given) == (3.5, True, False)
    assert "guidance_scale is read by Flux models only" in caplog.text
    assert "item 2" in caplog.text


@pytest.mark.parametrize(("text", "named"), [
    ('[\n"a",\n{"prompt": "b",}\n]', "line 3: not valid JSON"),
    ('{"prompt": "a"}', "expected a JSON list"),
    ('["a", 3]', "item 2: expected a prompt"),
    ('[{"prompt": "a", "width": "wide"}]', "item 1: width = 'wide'"),
    ('["ok", "b --q 1"]', "item 2: unknown option --q"),
])
def test_json_errors(tmp_path, text, named):
    path = write(tmp_path, "p.json", text)
    with pytest.raises(ProfileError) as exc:
        read_sample_prompts(path, "ddim")
    assert str(path) in exc.value.message and named in exc.value.message


# --- schedule and names -------------------------------------------------------------------


def section(**kwargs) -> SampleSection:
    return SampleSection(sample_prompts="p.txt", **kwargs)


def test_steps_schedule_samples_at_multiples_only():
    every3 = section(sample_every_n_steps=3)
    assert [s for s in range(1, 10) if should_sample(every3, step=s)] == [3, 6, 9]
    assert not any(should_sample(every3, epoch=e) for e in range(1, 4))
    assert not should_sample(every3, first=True)


def test_epoch_schedule_wins_over_steps():
    both = section(sample_every_n_steps=1, sample_every_n_epochs=2)
    assert not any(should_sample(both, step=s) for s in range(1, 10))
    assert [e for e in range(1, 7) if should_sample(both, epoch=e)] == [2, 4, 6]


def test_sample_at_first_and_no_prompt_file():
    assert should_sample(section(sample_at_first=True), first=True)
    assert not should_sample(section(), first=True)
    unset = SampleSection(sample_every_n_steps=1, sample_every_n_epochs=1, sample_at_first=True)
    assert not any([should_sample(unset, first=True), should_sample(unset, step=1),
                    should_sample(unset, epoch=1)])


def test_sample_file_names():
    stamp = time.mktime((2024, 3, 5, 14, 7, 9, 0, 0, -1))  # local time, like the names
    assert sample_file_name("cube", step=120, epoch=None, index=3, timestamp=stamp,
                            seed=42) == "cube_000120_03_20240305140709_42.png"
    assert sample_file_name("cube", step=120, epoch=2, index=0, timestamp=stamp,
                            seed=None) == "cube_e000002_00_20240305140709.png"


def test_sample_saved_event_round_trips():
    event = SampleSaved(path="/o/sample/x.png", step=20, epoch=None, prompt_index=1,
                        prompt="a cat")
    back = event_from_json(event.to_json())
    assert isinstance(back, SampleSaved) and back == event
    assert json.loads(event.to_json())["type"] == "sample_saved"


# --- the check (checks.inputs) -----------------------------------------------------------


def check_sample_prompts(profile: Profile) -> list[str]:
    found = sample_prompt_problems(profile)
    assert all(p.is_error and p.field == ("sample", "sample_prompts") for p in found)
    return [p.text() for p in found]


def profile_with(tmp_path: Path, file_text: str | None, **schedule) -> Profile:
    profile = Profile(base_dir=tmp_path)
    if file_text is not None:
        write(tmp_path, "prompts.txt", file_text)
    profile.sample = SampleSection(sample_prompts="prompts.txt", **schedule)
    return profile


def test_check_reports_a_broken_prompt_file(tmp_path):
    errors = check_sample_prompts(profile_with(tmp_path, "ok\nbad --w x\n",
                                               sample_every_n_steps=5))
    assert len(errors) == 1
    assert str(tmp_path / "prompts.txt") in errors[0] and "line 2" in errors[0]
    (tmp_path / "prompts.txt").unlink()
    assert check_sample_prompts(profile_with(tmp_path, None, sample_at_first=True)) == [
        f"sample prompt file {tmp_path / 'prompts.txt'} does not exist; check `[sample] "
        "sample_prompts` (relative paths start at the profile's folder)"]


def test_check_passes_good_files_and_no_file(tmp_path):
    assert check_sample_prompts(profile_with(tmp_path, "ok --w 64\n", sample_at_first=True)) == []
    assert check_sample_prompts(Profile(base_dir=tmp_path)) == []


def test_check_reports_an_empty_file_only_when_sampling_is_scheduled(tmp_path):
    assert "has no prompts" in check_sample_prompts(
        profile_with(tmp_path, "# nothing yet\n", sample_every_n_epochs=1))[0]
    assert check_sample_prompts(profile_with(tmp_path, "# nothing yet\n")) == []


def test_check_reports_lms_without_scipy(tmp_path, monkeypatch):
    monkeypatch.setattr(inputs, "installed", lambda name: name != "scipy")
    errors = check_sample_prompts(profile_with(tmp_path, "a --ss k_lms\n", sample_at_first=True))
    assert errors and "'k_lms' needs scipy" in errors[0]
    assert check_sample_prompts(profile_with(tmp_path, "a --ss euler\n",
                                             sample_at_first=True)) == []
