"""Shared pieces for end-to-end tests: running the real CLI, tiny datasets, file snapshots,
tiny runs in this process (``train``) and runs in a child process that are stopped, killed
and resumed (``write_profile``, ``start``, ``wait_for_step``, ``run_reference``...).

torch and the engine are imported inside the helpers that need them, not here."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import tomli_w
from PIL import Image

if TYPE_CHECKING:
    from lora_core.events import Event
    from lora_core.profile import Profile

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "examples" / "quickstart.toml"


def run_cli(*args: str, timeout: int = 600, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lora_core.cli", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=kwargs.pop("cwd", ROOT),
                          env={**os.environ, **kwargs.pop("env", {})}, **kwargs)


def snapshot(folder: Path) -> dict[str, tuple[str, float]]:
    """Every file under folder with its content hash and mtime, to prove nothing changed."""
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(),
                                         p.stat().st_mtime)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def make_images(folder: Path, count: int, size=(64, 64), caption: str | None = "tok, thing"):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.new("RGB", size, (40 * i % 255, 90, 160)).save(folder / f"{i}.png")
        if caption is not None:
            (folder / f"{i}.txt").write_text(caption, encoding="utf-8")


@pytest.fixture
def tiny_profile(tmp_path):
    """A profile that trains a handful of steps on a two-image dataset: fast CLI tests."""

    def make(name: str = "tiny", epochs: int = 1, repeats: int = 1, **sections) -> Path:
        data_dir = tmp_path / f"data-{name}"
        make_images(data_dir / f"{repeats}_tok thing", 2)
        profile = {
            "profile_version": 1,
            "model": {"pretrained_model_name_or_path": "builtin:tiny-sd1"},
            "dataset": {"train_data_dir": str(data_dir), "resolution": 64,
                        "min_bucket_reso": 64, "max_bucket_reso": 64,
                        "max_data_loader_n_workers": 0},
            "network": {"network_dim": 4, "network_alpha": 2.0},
            "optimizer": {"optimizer_type": "AdamW", "learning_rate": 1e-3,
                          "lr_scheduler": "constant"},
            "training": {"max_train_epochs": epochs, "train_batch_size": 2,
                         "mixed_precision": "no", "seed": 1},
            "saving": {"output_dir": str(tmp_path / "out"), "output_name": name},
        }
        return _write(merge_sections(profile, sections), tmp_path / f"{name}.toml")

    return make


def merge_sections(profile: dict, sections: dict[str, dict]) -> dict:
    """``profile`` with each table in ``sections`` merged into its section; a value of None
    removes that key (the field is left unset)."""
    for section, values in sections.items():
        table = profile.setdefault(section, {})
        table.update(values)
        for key in [k for k, v in table.items() if v is None]:
            del table[key]
    return profile


def _write(profile: dict, path: Path) -> Path:
    path.write_text(tomli_w.dumps(profile), encoding="utf-8")
    return path


@dataclass
class TrainedRun:
    """What ``train`` ran: the loaded profile and every event the run sent."""

    profile: Profile
    events: list[Event]

    @property
    def output_dir(self) -> Path:
        return self.profile.path("saving", "output_dir")

    @property
    def final_file(self) -> Path:
        from lora_core.events import RunFinished

        return Path(next(e for e in self.events if isinstance(e, RunFinished)).final_file)


@pytest.fixture
def train(tiny_profile, state_dir):
    """Train a ``tiny_profile`` (same arguments) in this process, collecting its events."""
    from lora_core.events import EventBus
    from lora_core.profile_load import load_profile
    from lora_core.session import run_training, start_run

    def run(name: str = "t", **kwargs) -> TrainedRun:
        path = tiny_profile(name, **kwargs)
        profile = load_profile(path)
        events: list[Event] = []
        run_training(profile, path, start_run(profile, path), EventBus([events.append]),
                     lambda: False)
        return TrainedRun(profile, events)

    return run


# Runs in a child process (`lora-train run`), stopped, killed and resumed, read back from
# their event streams.

STEPS = 20  # write_profile's run as it is: 2 images x 5 repeats x 2 epochs, batch 1


def write_profile(root: Path, name: str, *, images: int = 2, repeats: int = 5,
                  **sections: dict) -> Path:
    """``root/<name>.toml``: a profile for runs that are stopped and resumed, saving into
    ``root/out-<name>``; its data (``images`` images repeated ``repeats`` times) is shared
    by every profile in ``root``. ``sections`` are merged as ``tiny_profile`` merges them."""
    data = root / "data"
    if not data.exists():
        make_images(data / f"{repeats}_tok thing", images, caption="tok, thing, red, blue")
    profile = {
        "profile_version": 1,
        "model": {"pretrained_model_name_or_path": "builtin:tiny-sd1"},
        # Caption shuffling and dropout draw random numbers: a resume must restore them.
        "dataset": {"train_data_dir": str(data), "resolution": 64, "min_bucket_reso": 64,
                    "max_bucket_reso": 64, "max_data_loader_n_workers": 0,
                    "shuffle_caption": True},
        "network": {"network_dim": 4, "network_alpha": 2.0, "network_dropout": 0.1},
        "optimizer": {"optimizer_type": "AdamW", "learning_rate": 1e-3,
                      "lr_scheduler": "cosine"},
        "training": {"max_train_epochs": 2, "train_batch_size": 1, "mixed_precision": "no",
                     "seed": 3},
        "saving": {"output_dir": str(root / f"out-{name}"), "output_name": name,
                   "save_every_n_steps": 3},
    }
    return _write(merge_sections(profile, sections), root / f"{name}.toml")


def events(path: Path) -> list[dict]:
    """The events in a JSON-lines stream (a line still being written is left out)."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()
            if line.endswith("}")]


def losses(path: Path) -> dict[int, float]:
    return {e["step"]: e["loss"] for e in events(path) if e["type"] == "step_ended"}


def run_folder(out: Path) -> Path:
    """The one run folder under an output folder."""
    (folder,) = (out / "runs").iterdir()
    return folder


def start(profile: Path, events_file: Path, state: Path) -> subprocess.Popen:
    """`lora-train run` in a child process, its events to ``events_file``."""
    return subprocess.Popen(
        [sys.executable, "-m", "lora_core.cli", "run", str(profile), "--events",
         str(events_file), "--no-progress"], cwd=ROOT, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, env={**os.environ, "LORA_TUI_STATE_DIR": str(state)})


def wait_for_step(events_file: Path, step: int, child: subprocess.Popen) -> None:
    deadline = time.time() + 300
    while time.time() < deadline:
        if events_file.exists() and step in losses(events_file):
            return
        assert child.poll() is None, child.stderr.read().decode()
        time.sleep(0.02)
    raise AssertionError(f"step {step} never came")


def run_reference(workdir: Path, profile: Path) -> dict:
    """The uninterrupted run of a profile named "ref": its losses per step, its final
    weights, its output folder and its events."""
    from safetensors.torch import load_file

    result = run_cli("run", str(profile), "--events", str(workdir / "ref.jsonl"),
                     "--no-progress", env={"LORA_TUI_STATE_DIR": str(workdir / "state")})
    assert result.returncode == 0, result.stderr
    ref = losses(workdir / "ref.jsonl")
    assert sorted(ref) == list(range(1, STEPS + 1))
    out = workdir / "out-ref"
    return {"losses": ref, "final": load_file(str(out / "ref.safetensors")), "out": out,
            "events": events(workdir / "ref.jsonl")}


def stop_at_step_7_then_resume(workdir: Path, profile: Path, name: str
                               ) -> tuple[list[dict], Path, int]:
    """Ctrl+C once step 7 is done, then `lora-train resume` to the end: the first attempt's
    events, the resumed attempt's events file, and the step the first one stopped after."""
    import signal

    state = workdir / f"state-{name}"
    first = workdir / f"{name}.jsonl"
    child = start(profile, first, state)
    wait_for_step(first, 7, child)
    child.send_signal(signal.SIGINT)
    assert child.wait(timeout=120) == 130
    stopped = events(first)
    stopped_at = [e for e in stopped if e["type"] == "run_finished"][-1]["steps"]
    out = workdir / f"out-{name}"
    second = workdir / f"{name}-resumed.jsonl"
    result = run_cli("resume", str(run_folder(out)), "--events", str(second), "--no-progress",
                     env={"LORA_TUI_STATE_DIR": str(state)})
    assert result.returncode == 0, result.stderr
    return stopped, second, stopped_at


def assert_same_as_reference(reference: dict, resumed_events: Path, out: Path, name: str,
                             first_step: int) -> None:
    from safetensors.torch import load_file

    resumed = losses(resumed_events)
    assert sorted(resumed) == list(range(first_step, STEPS + 1))
    # Step for step the same loss: same data order, captions, noise, timesteps, dropout.
    assert {s: reference["losses"][s] for s in resumed} == resumed
    final = load_file(str(out / f"{name}.safetensors"))
    assert final.keys() == reference["final"].keys()
    for key, tensor in reference["final"].items():
        assert (final[key] == tensor).all(), key


def kill_9_then_resume(workdir: Path, reference: dict, **sections: dict) -> int:
    """A run named "kill" of ``write_profile(workdir, ..., **sections)`` killed with -9 at a
    random step, then `lora-train resume` to the end: it must give ``reference``'s losses and
    final file. Returns the step the resume started from."""
    import random
    import signal

    state = workdir / "state-kill"
    first = workdir / "kill.jsonl"
    child = start(write_profile(workdir, "kill", **sections), first, state)
    wait_for_step(first, random.Random().randint(4, STEPS - 3), child)
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    out = workdir / "out-kill"
    second = workdir / "kill-resumed.jsonl"
    result = run_cli("resume", str(run_folder(out)), "--events", str(second), "--no-progress",
                     env={"LORA_TUI_STATE_DIR": str(state)})
    assert result.returncode == 0, result.stderr
    (point,) = [e for e in events(second) if e["type"] == "run_resumed"]
    assert_same_as_reference(reference, second, out, "kill", point["step"] + 1)
    return point["step"]


def _kohya_module_map(pipe, family: str = "sd1") -> dict:
    from lora_core.family_registry import family as family_named
    from lora_core.network.naming import text_encoder_targets, unet_targets

    naming = family_named(family).naming
    modules = {t.lora_name: t.module
               for t in unet_targets(pipe.unet, with_conv=True, naming=naming)}
    encoders = [e for e in (pipe.text_encoder, getattr(pipe, "text_encoder_2", None)) if e]
    for encoder, prefix in zip(encoders, naming.text_encoder_prefixes(len(encoders)),
                               strict=True):
        modules.update({t.lora_name: t.module for t in text_encoder_targets(encoder, prefix)})
    return modules


def _expected_delta(down, up, weight_shape):
    import torch

    if down.dim() == 4 and down.shape[2:] != (1, 1):
        delta = torch.nn.functional.conv2d(down.permute(1, 0, 2, 3), up).permute(1, 0, 2, 3)
    else:
        delta = up.flatten(1) @ down.flatten(1)
    return delta.reshape(weight_shape)


def assert_diffusers_applies_every_module(path: Path, folder: Path | None = None,
                                          family: str = "sd1") -> list[str]:
    """Load a LoRA file into a pipeline with diffusers (the tiny SD1 one unless ``folder``
    names another), fuse it, and check that every module in the file changed its weight by
    exactly alpha/dim · up·down, and that the U-Net's output changed. Returns the module
    names found in the file."""
    import torch
    from diffusers import DiffusionPipeline
    from safetensors import safe_open

    from lora_core.models.builtin import ensure_builtin

    pipe = DiffusionPipeline.from_pretrained(
        folder or ensure_builtin("tiny-sd1"), safety_checker=None,
        requires_safety_checker=False, local_files_only=True)
    modules = _kohya_module_map(pipe, family)
    before = {name: m.weight.detach().clone() for name, m in modules.items()}
    torch.manual_seed(0)
    config = pipe.unet.config
    latents, t = torch.randn(1, config.in_channels, 8, 8), torch.tensor([500])
    context = torch.randn(1, 77, config.cross_attention_dim)
    extra = {}
    if family == "sdxl":
        pooled = config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim
        extra = {"added_cond_kwargs": {"text_embeds": torch.randn(1, pooled),
                                       "time_ids": torch.tensor([[64., 64, 0, 0, 64, 64]])}}
    with torch.no_grad():
        out_before = pipe.unet(latents, t, context, **extra).sample
    with safe_open(str(path), "pt") as fh:
        tensors = {k: fh.get_tensor(k).float() for k in fh.keys()}
    names = sorted({k.split(".")[0] for k in tensors})
    pipe.load_lora_weights(str(path))
    pipe.fuse_lora()  # peft keeps the original modules as base layers and fuses into them
    for name in names:
        assert name in modules, f"{name} is not a module of the pipeline"
        down = tensors[f"{name}.lora_down.weight"]
        up = tensors[f"{name}.lora_up.weight"]
        scale = tensors[f"{name}.alpha"].item() / down.shape[0]
        weight = modules[name].weight
        expected = _expected_delta(down, up, weight.shape)
        delta = weight.detach().float() - before[name].float()
        assert torch.allclose(delta, expected * scale, atol=2e-4, rtol=1e-2), name
        # (a module that never got a gradient keeps lora_up = 0: SDXL's last TE1 layer)
        if expected.abs().max() > 0:
            assert delta.abs().max() > 0, f"{name} was not applied"
    with torch.no_grad():
        out_after = pipe.unet(latents, t, context, **extra).sample
    assert not torch.allclose(out_before, out_after)
    return names
