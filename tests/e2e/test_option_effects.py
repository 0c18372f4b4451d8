"""Options observed where they act, in real tiny-model runs (in-process).

Each test fails if its option were ignored: the captions the text encoder actually
receives, the learning rates the optimizer actually uses, the module types actually saved
and loaded back, a dataset_config's subsets actually trained.
"""

from __future__ import annotations

import json

import pytest
import tomli_w
import torch
from safetensors import safe_open

from lora_core.events import EventBus, StepEnded
from lora_core.families.sd.loading import load_model
from lora_core.models.builtin import ensure_builtin
from lora_core.network.build import build_network
from lora_core.network.weights import load_network_weights
from lora_core.profile_load import load_profile
from lora_core.saving.lora_file import read_lora
from lora_core.session import run_training, start_run
from lora_core.training import conditioning
from tests.e2e.conftest import make_images

# §6.7: the tensor names each algorithm writes per module (besides `alpha`).
LOHA_KEYS = {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "alpha"}
LOKR_KEY_SETS = ({"lokr_w1", "lokr_w2", "alpha"}, {"lokr_w1", "lokr_w2_a", "lokr_w2_b", "alpha"},
                 {"lokr_w1_a", "lokr_w1_b", "lokr_w2", "alpha"},
                 {"lokr_w1_a", "lokr_w1_b", "lokr_w2_a", "lokr_w2_b", "alpha"})


def module_fields(path):
    with safe_open(str(path), "pt") as fh:
        keys = list(fh.keys())
    fields: dict[str, set[str]] = {}
    for key in keys:
        module, field = key.split(".", 1)
        fields.setdefault(module, set()).add(field.removesuffix(".weight"))
    return fields


@pytest.mark.parametrize("kind", ["LoHa", "LoKr"])
def test_loha_and_lokr_files_have_the_lycoris_keys_and_load_back_exactly(train, kind):
    run = train(kind.lower(), network={"network_module": kind, "network_dim": 4,
                                       "network_alpha": 2.0},
                saving={"save_precision": "float"})
    profile, path = run.profile, run.final_file
    fields = module_fields(path)
    assert any(name.startswith("lora_te_text_model_encoder_layers_0_") for name in fields)
    assert any(name.startswith("lora_unet_down_blocks_0_resnets_0_conv1") for name in fields)
    for name, keys in fields.items():
        assert keys == LOHA_KEYS if kind == "LoHa" else keys in LOKR_KEY_SETS, (name, keys)
    with safe_open(str(path), "pt") as fh:
        meta = fh.metadata()
    assert meta["ss_network_module"] == "lycoris.kohya"
    assert json.loads(meta["ss_network_args"])["algo"] == kind.lower()
    # Loading the file into a freshly built network restores every tensor bit for bit.
    tensors, _ = read_lora(path)
    bundle = load_model(str(ensure_builtin("tiny-sd1")), profile.base_dir, torch.float32)
    network = build_network(bundle.unet, bundle.text_encoders, profile.network)
    fresh = {k: v.clone() for k, v in network.state_dict().items()}
    load_network_weights(network, path)
    loaded = network.state_dict()
    assert loaded.keys() == tensors.keys()
    assert all(torch.equal(loaded[k], tensors[k]) for k in tensors)
    trained = [k for k in tensors if not torch.equal(fresh[k], tensors[k])]
    assert trained, "training changed nothing"


def test_captions_the_text_encoder_receives(tiny_profile, state_dir, monkeypatch):
    seen: list[str] = []
    real = conditioning.encode_captions

    def recording(bundle, captions, *args, **kwargs):
        seen.extend(captions)
        return real(bundle, captions, *args, **kwargs)

    monkeypatch.setattr(conditioning, "encode_captions", recording)
    path = tiny_profile("caps", repeats=4, dataset={
        "caption_prefix": "pfx", "shuffle_caption": True, "keep_tokens": 1,
        "caption_tag_dropout_rate": 0.3}, training={"max_train_epochs": 2})
    for caption_file in path.parent.glob("data-caps/*/*.txt"):
        caption_file.write_text("tok, red, green, blue", encoding="utf-8")
    profile = load_profile(path)
    run_training(profile, path, start_run(profile, path), EventBus([]), lambda: False)
    # prefix "pfx" joins the first tag with a space; keep_tokens 1 keeps it first
    assert len(seen) == 16
    assert all(c.startswith("pfx tok") for c in seen), seen
    flexible = [c.split(", ")[1:] for c in seen]
    assert len({tuple(f) for f in flexible if len(f) == 3}) > 1  # shuffled: several orders
    assert any(len(f) < 3 for f in flexible)  # tag dropout removed some
    assert all(set(f) <= {"red", "green", "blue"} for f in flexible)


def test_static_captions_are_encoded_once_before_training(train, monkeypatch):
    calls: list[int] = []
    real = conditioning.encode_captions

    def counting(bundle, captions, *args, **kwargs):
        calls.append(len(captions))
        return real(bundle, captions, *args, **kwargs)

    monkeypatch.setattr(conditioning, "encode_captions", counting)
    train("static", repeats=4, network={"network_train_unet_only": True})
    assert calls == [1]  # one distinct caption, encoded once; no encoding per step


def test_learning_rates_the_optimizer_uses(train):
    events = train("plus", network={"network_train_unet_only": True},
                   optimizer={"loraplus_lr_ratio": 16.0, "learning_rate": 1e-3}).events
    lrs = next(e for e in events if isinstance(e, StepEnded)).lrs
    assert lrs["lr/unet"] == pytest.approx(1e-3)
    assert lrs["lr/unet_plus"] == pytest.approx(16e-3)
    events = train("adafactor", optimizer={"optimizer_type": "AdaFactor",
                                           "lr_scheduler": "adafactor"}).events
    step = next(e for e in events if isinstance(e, StepEnded))
    assert step.lrs and all(0 < lr < 1 for lr in step.lrs.values())


def test_gradient_checkpointing_still_trains_the_text_encoder(train):
    run = train("ckpt", training={"gradient_checkpointing": True},
                saving={"save_precision": "float"})
    tensors, _ = read_lora(run.final_file)
    te_up = [v for k, v in tensors.items() if k.startswith("lora_te_") and "lora_up" in k]
    unet_up = [v for k, v in tensors.items() if k.startswith("lora_unet_") and "lora_up" in k]
    assert te_up and all(v.abs().max() > 0 for v in te_up)
    assert unet_up and all(v.abs().max() > 0 for v in unet_up)


def test_scale_weight_norms_caps_every_module(train):
    run = train("norms", optimizer={"scale_weight_norms": 0.01, "learning_rate": 0.05},
                saving={"save_precision": "float"})
    steps = [e for e in run.events if isinstance(e, StepEnded)]
    assert all("max_norm/max_key_norm" in e.metrics for e in steps)
    assert steps[-1].metrics["max_norm/max_key_norm"] <= 0.01 + 1e-6
    tensors, meta = read_lora(run.final_file)
    assert meta["ss_scale_weight_norms"] == "0.01"


def test_a_dataset_config_trains_its_subsets(train, tmp_path):
    make_images(tmp_path / "imgs" / "a", 2, caption="alpha, red")
    make_images(tmp_path / "imgs" / "b", 2, caption="beta, blue")
    config = {"general": {"caption_extension": ".txt", "resolution": 64,
                          "min_bucket_reso": 64, "max_bucket_reso": 64},
              "datasets": [{"batch_size": 1, "subsets": [
                  {"image_dir": "imgs/a", "num_repeats": 3, "keep_tokens": 1,
                   "shuffle_caption": True},
                  {"image_dir": "imgs/b", "num_repeats": 1}]}]}
    (tmp_path / "ds.toml").write_text(tomli_w.dumps(config), encoding="utf-8")
    run = train("cfg", dataset={"train_data_dir": None,
                                "dataset_config": str(tmp_path / "ds.toml")})
    steps = [e for e in run.events if isinstance(e, StepEnded)]
    assert len(steps) == 2 * 3 + 2 * 1  # batch 1 from the config, repeats per subset
    with safe_open(run.final_file, "pt") as fh:
        meta = fh.metadata()
    datasets = json.loads(meta["ss_datasets"])
    assert [s["num_repeats"] for s in datasets[0]["subsets"]] == [3, 1]
    assert datasets[0]["batch_size_per_device"] == 1
    assert "ss_dataset_dirs" in meta and "ss_resolution" not in meta


def test_masked_loss_trains_with_the_masks_it_is_given(train, tmp_path):
    """White masks train exactly as no masks (same losses step for step, latents cached or
    not); half-black masks change the loss; the file records it as sd-scripts does."""
    from PIL import Image

    make_images(tmp_path / "imgs" / "a", 2, caption="tok, thing")
    for name, fill in (("white", 255), ("half", None)):
        folder = tmp_path / name
        folder.mkdir()
        for image in sorted((tmp_path / "imgs" / "a").glob("*.png")):
            mask = Image.new("L", (64, 64), 255 if fill else 0)
            if fill is None:
                mask.paste(255, (32, 0, 64, 64))
            mask.save(folder / image.name)

    def config(masks: str | None, cached: bool) -> dict:
        subset = {"image_dir": "imgs/a", "num_repeats": 2}
        if masks:
            subset["conditioning_data_dir"] = masks
        path = tmp_path / f"ds-{masks}-{cached}.toml"
        path.write_text(tomli_w.dumps({"general": {"resolution": 64, "min_bucket_reso": 64,
                                                   "max_bucket_reso": 64},
                                       "datasets": [{"batch_size": 1,
                                                     "subsets": [subset]}]}), encoding="utf-8")
        return {"train_data_dir": None, "dataset_config": str(path), "cache_latents": cached}

    def losses(name, masks, cached=False):
        run = train(name, dataset=config(masks, cached),
                    training={"masked_loss": masks is not None})
        return [e.loss for e in run.events if isinstance(e, StepEnded)], run

    plain, _ = losses("plain", None)
    white, white_run = losses("white", "white")
    assert white == plain and len(plain) == 4
    cached_plain, _ = losses("cplain", None, cached=True)
    cached_white, _ = losses("cwhite", "white", cached=True)
    assert cached_white == cached_plain
    half, _ = losses("half", "half")
    assert all(h < p for h, p in zip(half, plain, strict=True))  # half the pixels count
    with safe_open(white_run.final_file, "pt") as fh:
        assert fh.metadata()["ss_masked_loss"] == "True"
