"""What each Flux memory lever saves, measured: peak RSS and s/step of ``lora-train run``.

A Flux transformer with Flux.1's real width (hidden 3072, 24 heads of 128, MLP ratio 4,
in 64 / vec 768 / context 4096) but only a few blocks (default 1 double + 2 single), a
CLIP-L-wide text tower (768, 1 layer), a T5-XXL-wide encoder (d_model 4096, 64 heads,
d_ff 10240, 1 layer, a small vocabulary) and the tiny built-in's autoencoder, written once as
the four files a user has (the transformer and T5 in bf16, as released; T5 also as fp8
e4m3fn). Random weights: memory and time do not depend on them.

Each configuration is its own child process (``lora-train run``, 64 px, batch 1, T5 window
64 tokens, LoRA rank 4 on the transformer, mixed_precision "no": this CPU computes in fp32),
and its peak RSS is the child's own ``ru_maxrss`` (``os.wait4``). Levers:

* ``fp8_base``: the transformer's Linear weights stored as float8 (1 byte instead of 4);
* ``fp8_base`` with the fp8 T5 file: T5's Linears stay fp8 too (sd-scripts' rule);
* ``gradient_checkpointing``: block activations recomputed in backward;
* ``cache_text_encoder_outputs``: captions encoded once before training.

    .venv/bin/python bench/flux_memory.py [--double 1] [--single 2] [--steps 4] [--json]
    .venv/bin/python bench/flux_memory.py --device cuda --double 4 --single 8   # bench/gpu.sh

Block swap and CPU-offloaded checkpointing save GPU memory only (on a CPU they move tensors
from "cpu" to "cpu"): ``--device cuda`` adds them, in bf16, with nvidia-smi's VRAM.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.dataset import ensure_train_dataset  # noqa: E402
from bench.run_bench import child_env, measure, wait_alone, write_profile  # noqa: E402

HIDDEN, HEADS, VEC, CONTEXT = 3072, 24, 768, 4096
T5_FF, T5_HEADS, CLIP_LAYERS, T5_LAYERS = 10240, 64, 1, 1

LEVERS: dict[str, dict] = {
    "plain": {},
    "fp8_base": {"training": {"fp8_base": True}},
    "fp8_base + fp8 T5": {"training": {"fp8_base": True}, "t5": "fp8"},
    "gradient_checkpointing": {"training": {"gradient_checkpointing": True}},
    "cache_text_encoder_outputs": {"dataset": {"cache_text_encoder_outputs": True}},
}
# GPU-only levers (--device cuda): on a CPU they move tensors from "cpu" to "cpu".
GPU_LEVERS: dict[str, dict] = {
    "blocks_to_swap 4": {"training": {"gradient_checkpointing": True, "blocks_to_swap": 4}},
    "cpu_offload_checkpointing": {"training": {"gradient_checkpointing": True,
                                               "cpu_offload_checkpointing": True}},
}


def build_files(folder: Path, double: int, single: int) -> dict[str, Path]:
    """The four files (and the fp8 T5) in ``folder``, written once."""
    import torch
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from lora_core.families.flux.builtin import AE_FILE, ensure_tiny_flux
    from lora_core.families.flux.config import FluxConfig, default_axes_dim
    from lora_core.families.flux.model import Flux

    folder.mkdir(parents=True, exist_ok=True)
    tiny = ensure_tiny_flux()
    files = {"dit": folder / f"flux-w{HIDDEN}-{double}d{single}s.safetensors",
             "ae": folder / AE_FILE, "clip_l": folder / "clip_l.safetensors",
             "t5": folder / "t5xxl_bf16.safetensors", "t5_fp8": folder / "t5xxl_fp8.safetensors",
             "tokenizers": folder / "tokenizers"}
    if not files["tokenizers"].is_dir():
        shutil.copytree(tiny / "tokenizer_clip_l",
                        files["tokenizers"] / "openai_clip-vit-large-patch14")
        shutil.copytree(tiny / "tokenizer_t5xxl", files["tokenizers"] / "google_t5-v1_1-xxl")
    if not files["ae"].is_file():
        shutil.copy(tiny / AE_FILE, files["ae"])
    torch.manual_seed(0)

    def write(model, path: Path, dtype, prefix: str = "") -> None:
        save_file({prefix + k: v.detach().to(dtype).contiguous()
                   for k, v in model.state_dict().items()}, str(path))

    if not files["dit"].is_file():
        config = FluxConfig(in_channels=64, vec_in_dim=VEC, context_in_dim=CONTEXT,
                            hidden_size=HIDDEN, mlp_ratio=4.0, num_heads=HEADS, depth=double,
                            depth_single_blocks=single, axes_dim=default_axes_dim(128),
                            qkv_bias=True, guidance_embed=True)
        with torch.device("cpu"):
            write(Flux(config), files["dit"], torch.bfloat16)
    if not files["clip_l"].is_file():
        vocab = json.loads((tiny / "tokenizer_clip_l" / "vocab.json").read_text("utf-8"))
        clip = CLIPTextModel(CLIPTextConfig(vocab_size=len(vocab), hidden_size=VEC,
                                            intermediate_size=4 * VEC,
                                            num_hidden_layers=CLIP_LAYERS,
                                            num_attention_heads=VEC // 64, projection_dim=VEC))
        state = {(k if k.startswith("text_model.") else f"text_model.{k}"): v
                 for k, v in clip.state_dict().items()}
        save_file({k: v.to(torch.bfloat16).contiguous() for k, v in state.items()},
                  str(files["clip_l"]))
    if not files["t5"].is_file():
        from transformers import AutoTokenizer

        vocab = len(AutoTokenizer.from_pretrained(str(tiny / "tokenizer_t5xxl")))
        t5 = T5EncoderModel(T5Config(vocab_size=vocab, d_model=CONTEXT, d_kv=64, d_ff=T5_FF,
                                     num_layers=T5_LAYERS, num_heads=T5_HEADS,
                                     feed_forward_proj="gated-gelu", is_encoder_decoder=False))
        state = {k: v for k, v in t5.state_dict().items() if k != "encoder.embed_tokens.weight"}
        save_file({k: v.to(torch.bfloat16).contiguous() for k, v in state.items()},
                  str(files["t5"]))
        # sd-scripts' fp8 T5 files: Linear weights in e4m3fn, norms and embeddings wider
        save_file({k: (v.to(torch.float8_e4m3fn) if v.dim() == 2 and "embed" not in k
                       and "shared" not in k and "relative_attention_bias" not in k
                       else v.to(torch.bfloat16)).contiguous() for k, v in state.items()},
                  str(files["t5_fp8"]))
    return files


def profile_for(files: dict[str, Path], data: Path, out: Path, steps: int, lever: dict,
                precision: str = "no", resolution: int = 64) -> dict:
    training = {"max_train_steps": steps, "train_batch_size": 1, "mixed_precision": precision,
                "seed": 1, **lever.get("training", {})}
    return {
        "profile_version": 1,
        "model": {"pretrained_model_name_or_path": str(files["dit"]),
                  "tokenizer_cache_dir": str(files["tokenizers"])},
        "flux": {"ae": str(files["ae"]), "clip_l": str(files["clip_l"]),
                 "t5xxl": str(files["t5_fp8" if lever.get("t5") == "fp8" else "t5"]),
                 "t5xxl_max_token_length": 64},
        "dataset": {"train_data_dir": str(data), "resolution": resolution,
                    "min_bucket_reso": 64, "max_bucket_reso": max(64, resolution),
                    "max_data_loader_n_workers": 0,
                    "cache_latents": True, **lever.get("dataset", {})},
        "network": {"network_dim": 4, "network_alpha": 1.0, "network_train_unet_only": True},
        "optimizer": {"optimizer_type": "AdamW", "learning_rate": 1e-4,
                      "lr_scheduler": "constant"},
        "training": training,
        "saving": {"output_dir": str(out), "output_name": "bench"},
    }


def run_lever(name: str, argv: list[str], events: Path, env: dict, log: Path,
              gpu: bool = False) -> dict:
    """One child: its s/step, its overall peak RSS (``ru_maxrss``), its peak resident
    memory while loading (before the first training step's phase) and while training, and
    on a GPU the most memory ``nvidia-smi`` showed for it."""
    from bench.full_size import HighWaterMarks, VramMarks

    events.parent.mkdir(parents=True, exist_ok=True)
    events.write_text("", encoding="utf-8")
    with open(log, "w", encoding="utf-8") as log_fh:
        launched = time.time()
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log_fh,
                                stderr=subprocess.STDOUT)
        samples = HighWaterMarks(proc.pid, 0.05, field="VmRSS")
        samples.start()
        vram = VramMarks(proc.pid) if gpu else None
        if vram is not None:
            vram.start()
        try:
            usage = wait_alone(name, proc, 3600, log)
        finally:
            samples.stopped.set()
            if vram is not None:
                vram.stopped.set()
        ended = time.time()
    measured = measure(name, events, launched, 1, usage.ru_maxrss / 1024, ended - launched)
    records = [json.loads(line) for line in events.read_text("utf-8").splitlines()
               if line.strip()]
    training = next((r["time"] for r in records if r["type"] == "phase_changed"
                     and r["phase"] == "training"), ended)
    return {**asdict(measured), "load_peak_rss_mb": round(samples.peak_mb(launched, training)),
            "train_peak_rss_mb": round(samples.peak_mb(training)),
            "peak_vram_mb": None if vram is None else round(vram.peak_mb)}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--double", type=int, default=1, help="double blocks (default 1)")
    parser.add_argument("--single", type=int, default=2, help="single blocks (default 2)")
    parser.add_argument("--steps", type=int, default=4, help="training steps per run")
    parser.add_argument("--resolution", type=int, default=64,
                        help="training images' side in px (default 64; activations grow with "
                        "it: gradient checkpointing shows at 256 and up)")
    parser.add_argument("--levers", nargs="*", default=None,
                        choices=[*LEVERS, *GPU_LEVERS],
                        help="default: every lever for the device")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="cuda: bf16, and the GPU-only levers; VRAM from nvidia-smi")
    parser.add_argument("--cache-dir", type=Path, default=ROOT / "bench" / ".cache")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    if args.steps < 3:
        parser.error("--steps must be at least 3 (one warm-up step, then two to time)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cache = args.cache_dir
    files = build_files(cache / "flux-memory", args.double, args.single)
    data = ensure_train_dataset(cache, args.resolution, count=4)
    work = cache / "flux-memory-runs"
    gpu = args.device == "cuda"
    levers = {**LEVERS, **GPU_LEVERS}
    chosen = args.levers or [*LEVERS, *(GPU_LEVERS if gpu else ())]
    results = []
    for name in chosen:
        slug = f"{name.replace(' ', '').replace('+', '_')}-{args.resolution}"
        out = work / slug
        shutil.rmtree(out, ignore_errors=True)
        profile = write_profile(out / "profile.toml",
                                profile_for(files, data, out, args.steps, levers[name],
                                            "bf16" if gpu else "no", args.resolution))
        events = out / "events.jsonl"
        measured = run_lever(name, [sys.executable, "-m", "lora_core.cli", "run",
                                    str(profile), "--events", str(events), "--no-progress"],
                             events, child_env(work, args.device), out / "log.txt", gpu)
        results.append(measured)
        if not args.json:
            print(f"{name:28s} peak RSS {measured['peak_rss_mb']:7.0f} MiB (loading "
                  f"{measured['load_peak_rss_mb']:6.0f}, training "
                  f"{measured['train_peak_rss_mb']:6.0f})  "
                  f"{measured['median_s_per_step']:6.2f} s/step"
                  + (f"  VRAM {measured['peak_vram_mb']} MiB" if gpu else ""), flush=True)
    base = next((r for r in results if r["name"] == "plain"), None)
    if base is not None:
        for r in results:
            r["saves_mib"] = round(base["peak_rss_mb"] - r["peak_rss_mb"])
            r["train_saves_mib"] = round(base["train_peak_rss_mb"] - r["train_peak_rss_mb"])
    report = {"model": {"hidden": HIDDEN, "double": args.double, "single": args.single,
                        "t5_d_model": CONTEXT, "t5_layers": T5_LAYERS}, "device": args.device,
              "steps": args.steps, "resolution": args.resolution, "results": results}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print("\n| lever | peak RSS (MiB) | saves | loading peak | training peak | saves "
              "in training | s/step |\n| --- | --- | --- | --- | --- | --- | --- |")
        for r in results:
            print(f"| {r['name']} | {r['peak_rss_mb']:.0f} | {r.get('saves_mib', '')} | "
                  f"{r['load_peak_rss_mb']} | {r['train_peak_rss_mb']} | "
                  f"{r.get('train_saves_mib', '')} | {r['median_s_per_step']:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
