"""Full-size models (issue 18): our engine, and sd-scripts beside it, on a real-size checkpoint.

    python bench/full_size.py [--family sd15|sdxl] [--steps 8] [--warmup 2] [--rounds 1]
                              [--resolution 256] [--precision bf16] [--device cpu|cuda]
                              [--sd-scripts DIR --sd-python PYTHON] [--no-usual]
                              [--load-only] [--json] [--cache-dir DIR]

The checkpoint is the real architecture with random weights (the shipped SD 1.5 / SDXL
configs), written once as an A1111-layout single ``.safetensors`` file in float16, as released
files are (``--cache-dir``, default ``bench/.cache``; built in a child process so the
harness keeps none of it). Its tokenizers are the engine's generated ones, placed in a
private Hugging Face cache under the repositories both trainers ask for.

Runs, each a child process started as a user would start it, interleaved within a round,
each with the checkpoint read through once just before it (the page cache warm for all):

* ``ours-fast``: ``lora-train run`` with a U-Net LoRA (rank 4), latents cached (SDXL: text
  encoder outputs too), AdamW, constant LR, ``--precision`` compute, batch 1;
* ``peer-fast`` (with ``--sd-scripts``): sd-scripts' ``train_network.py`` /
  ``sdxl_train_network.py`` with the same settings and its fastest flags
  (``--network_train_unet_only --cache_latents --sdpa``; SDXL also
  ``--cache_text_encoder_outputs``);
* ``ours-defaults`` / ``peer-plain`` (unless ``--no-usual``): the same U-Net LoRA with nothing
  cached, each trainer left at its defaults (sd-scripts without ``--sdpa``, ``--xformers`` or
  ``--cache_latents``: its own attention, latents encoded every step).

sd-scripts is never committed or installed by this project: ``--sd-scripts`` is a checkout
and ``--sd-python`` a Python with its requirements. It is measured through
``bench/peer_probe.py``, which writes a ``step_ended`` event at every optimizer step, so both
are measured from an event stream the same way:

* **s/step**: median interval between ``step_ended`` events after ``--warmup`` steps;
* **first step**: seconds from launch to the first ``step_ended`` event;
* **RSS to first step**: the child's peak resident memory (``VmHWM``) when its first step
  ended: loading, caching and setup, the "RSS at load" of the issue; sampled every 0.1 s;
* **peak RSS**: the child's ``ru_maxrss`` over the whole run (``os.wait4``).

``--load-only`` runs ours alone with ``max_train_steps = 1`` and reports the time and RSS to
that first step (loading, caching, setup): for machines where a run of many steps does not
fit. Ratios are ours / peer within a round, then the median over rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from itertools import pairwise
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python bench/full_size.py` puts bench/ first, not the root
    sys.path.insert(0, str(ROOT))

from bench.dataset import ensure_train_dataset  # noqa: E402
from bench.run_bench import machine_info, wait_alone, write_profile  # noqa: E402

FAMILIES = {"sd15": "sd1", "sdxl": "sdxl"}
PEER_SCRIPTS = {"sd15": "train_network.py", "sdxl": "sdxl_train_network.py"}
TOKENIZER_REPOS = {"sd15": ("openai/clip-vit-large-patch14",),
                   "sdxl": ("openai/clip-vit-large-patch14",
                            "laion/CLIP-ViT-bigG-14-laion2B-39B-b160k")}
IMAGES = 4
LORA_RANK = 4
CHILD_TIMEOUT_S = 3 * 3600


@dataclass
class Run:
    name: str
    steps: int
    s_per_step: float
    first_step_s: float
    rss_to_first_step_mb: float
    peak_rss_mb: float
    wall_s: float
    peak_vram_mb: float | None = None  # --device cuda: the most nvidia-smi saw it use
    # ours: the peak RSS (MB) reached by the time each phase began (loading model ->
    # caching latents is the load itself)
    rss_at_phase_mb: dict[str, float] | None = None


# --- the checkpoint ---------------------------------------------------------------------


def build_checkpoint(family: str, path: Path) -> None:
    """The real architecture with random weights, float16, A1111 layout (runs in a child:
    ``python bench/full_size.py --build FAMILY PATH``)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from lora_core.families.sd.configs import init_kwargs, load_config
    from tests.helpers.ldm_export import write_single_file

    def text_config(part: str) -> CLIPTextConfig:
        kwargs = init_kwargs(load_config(FAMILIES[family], part))
        return CLIPTextConfig(**{k: v for k, v in kwargs.items() if k != "model_type"})

    torch.manual_seed(0)
    torch.set_default_dtype(torch.float16)  # SDXL in float32 would not fit beside its copy
    fam = FAMILIES[family]
    parts = {"unet": UNet2DConditionModel(**init_kwargs(load_config(fam, "unet"))),
             "vae": AutoencoderKL(**init_kwargs(load_config(fam, "vae"))),
             "text_encoder": CLIPTextModel(text_config("text_encoder"))}
    if family == "sdxl":
        parts["text_encoder_2"] = CLIPTextModelWithProjection(text_config("text_encoder_2"))
    tmp = path.with_suffix(".tmp.safetensors")
    write_single_file(parts, tmp, fam, dtype=torch.float16)
    os.replace(tmp, path)


def ensure_checkpoint(cache: Path, family: str) -> Path:
    path = cache / "full-size" / f"{family}-random-fp16.safetensors"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, str(Path(__file__).resolve()), "--build", family,
                        str(path)], check=True, cwd=ROOT, timeout=CHILD_TIMEOUT_S)
    return path


def ensure_hf_home(cache: Path, family: str) -> Path:
    """A Hugging Face cache holding the generated tokenizers under the repositories sd-scripts
    and the engine look for (openai/clip-vit-large-patch14; SDXL also laion's bigG)."""
    from lora_core.models.tokenizer_gen import write_tokenizer

    home = cache / "full-size" / "hf-home"
    commit = "0" * 40
    for repo_id in TOKENIZER_REPOS[family]:
        repo = home / "hub" / f"models--{repo_id.replace('/', '--')}"
        if (repo / "refs" / "main").is_file():
            continue
        write_tokenizer(repo / "snapshots" / commit)
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / "main").write_text(commit)
    return home


# --- the runs ---------------------------------------------------------------------------


def our_profile(checkpoint: Path, data: Path, out: Path, args: argparse.Namespace,
                fast: bool) -> dict:
    steps = 1 if args.load_only else args.steps
    dataset = {"train_data_dir": str(data), "resolution": args.resolution,
               "min_bucket_reso": args.resolution, "max_bucket_reso": args.resolution,
               "max_data_loader_n_workers": 0}
    if fast:
        dataset["cache_latents"] = True
        if args.family == "sdxl":
            dataset["cache_text_encoder_outputs"] = True
    return {
        "profile_version": 1,
        "model": {"pretrained_model_name_or_path": str(checkpoint)},
        "dataset": dataset,
        "network": {"network_module": "LoRA", "network_dim": LORA_RANK, "network_alpha": 1.0,
                    "network_train_unet_only": True},
        "optimizer": {"optimizer_type": "AdamW", "learning_rate": 1e-4,
                      "lr_scheduler": "constant"},
        "training": {"max_train_steps": steps, "train_batch_size": 1,
                     "mixed_precision": args.precision, "seed": 1},
        "saving": {"output_dir": str(out), "output_name": "ours"},
    }


def peer_argv(checkpoint: Path, data: Path, out: Path, events: Path,
              args: argparse.Namespace, fast: bool) -> list[str]:
    script = args.sd_scripts / PEER_SCRIPTS[args.family]
    argv = [str(args.sd_python), str(ROOT / "bench" / "peer_probe.py"), str(events),
            str(script),
            "--pretrained_model_name_or_path", str(checkpoint), "--train_data_dir", str(data),
            "--output_dir", str(out), "--output_name", "peer", "--save_model_as",
            "safetensors", "--resolution", f"{args.resolution},{args.resolution}",
            "--train_batch_size", "1", "--max_train_steps", str(args.steps),
            "--learning_rate", "1e-4", "--optimizer_type", "AdamW", "--lr_scheduler",
            "constant", "--mixed_precision", args.precision, "--network_module",
            "networks.lora", "--network_dim", str(LORA_RANK), "--network_alpha", "1",
            "--network_train_unet_only", "--caption_extension", ".txt", "--seed", "1",
            "--max_data_loader_n_workers", "0"]
    if fast:
        argv += ["--cache_latents", "--sdpa"]
        if args.family == "sdxl":
            argv.append("--cache_text_encoder_outputs")
    return argv


def child_env(args: argparse.Namespace, hf_home: Path, work: Path, ours: bool) -> dict:
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
    env.pop("HF_HUB_CACHE", None)
    env.pop("PYTHONPATH", None)
    if ours:
        env.update({"LORA_TUI_STATE_DIR": str(work / "state"),
                    "LORA_TUI_CACHE_DIR": str(work / "engine-cache"), "PYTHONPATH": str(ROOT)})
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


class HighWaterMarks(threading.Thread):
    """Samples one line of a process's /proc status every ``period_s``: (time, kB) pairs.
    ``VmHWM`` (default) is the peak RSS so far; ``VmRSS`` the resident memory now."""

    def __init__(self, pid: int, period_s: float = 0.1, field: str = "VmHWM") -> None:
        super().__init__(daemon=True)
        self.pid, self.period_s, self.field = pid, period_s, field + ":"
        self.samples: list[tuple[float, int]] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        status = Path(f"/proc/{self.pid}/status")
        while not self.stopped.is_set():
            try:
                for line in status.read_text().splitlines():
                    if line.startswith(self.field):
                        self.samples.append((time.time(), int(line.split()[1])))
                        break
            except (OSError, ValueError, IndexError):
                pass
            self.stopped.wait(self.period_s)

    def peak_mb(self, start: float, end: float = float("inf")) -> float:
        """The largest sample (MB) taken between ``start`` and ``end``."""
        inside = [kb for t, kb in self.samples if start <= t <= end]
        return max(inside, default=0) / 1024

    def at(self, moment: float) -> float:
        """The peak RSS (MB) the process had reached by ``moment``."""
        before = [kb for t, kb in self.samples if t <= moment]
        return (before[-1] if before else 0) / 1024


class VramMarks(threading.Thread):
    """The most GPU memory ``nvidia-smi`` reports for a process, polled every ``period_s``
    (what a user watching ``nvidia-smi`` sees: the allocator's reserve and the CUDA
    context included)."""

    def __init__(self, pid: int, period_s: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.pid, self.period_s, self.peak_mb = pid, period_s, 0.0
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                listed = subprocess.run(
                    ["nvidia-smi", "--query-compute-apps=pid,used_memory",
                     "--format=csv,noheader,nounits"], capture_output=True, text=True,
                    timeout=10).stdout
                for line in listed.splitlines():
                    pid, used = (part.strip() for part in line.split(","))
                    if int(pid) == self.pid:
                        self.peak_mb = max(self.peak_mb, float(used))
            except (OSError, ValueError, subprocess.SubprocessError):
                pass
            self.stopped.wait(self.period_s)


def warm_page_cache(path: Path) -> float:
    """Read ``path`` through once (seconds taken), so every child starts with the checkpoint
    in the page cache: otherwise whichever runs first, or after a run whose memory evicted
    it (sd-scripts holds 20 GB for SDXL on a 24 GB machine), pays the disk read."""
    started = time.perf_counter()
    with open(path, "rb", buffering=0) as fh:
        buffer = bytearray(16 << 20)
        while fh.readinto(buffer):
            pass
    return time.perf_counter() - started


def run_child(name: str, argv: list[str], events: Path, env: dict, log: Path,
              warmup: int, cwd: Path, gpu: bool = False, checkpoint: Path | None = None
              ) -> Run:
    events.parent.mkdir(parents=True, exist_ok=True)
    events.write_text("", encoding="utf-8")
    if checkpoint is not None:
        warm_page_cache(checkpoint)
    with open(log, "w", encoding="utf-8") as log_fh:
        launched = time.time()
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=log_fh, stderr=subprocess.STDOUT)
        marks = HighWaterMarks(proc.pid)
        vram = VramMarks(proc.pid) if gpu else None
        for watcher in (marks, vram):
            if watcher is not None:
                watcher.start()
        try:
            usage = wait_alone(name, proc, CHILD_TIMEOUT_S, log)
        finally:
            for watcher in (marks, vram):
                if watcher is not None:
                    watcher.stopped.set()
        ended = time.time()
    records = [json.loads(line) for line in events.read_text("utf-8").splitlines()
               if line.strip()]
    times = [r["time"] for r in records if r["type"] == "step_ended"]
    phases: dict[str, float] = {}
    for record in records:
        if record["type"] == "phase_changed" and record["phase"] not in phases:
            phases[record["phase"]] = round(marks.at(record["time"]), 1)
    if not times:
        raise RuntimeError(f"{name}: no step_ended event in {events}")
    intervals = [b - a for a, b in pairwise(times[warmup:])]
    return Run(name=name, steps=len(times),
               s_per_step=statistics.median(intervals) if intervals else float("nan"),
               first_step_s=times[0] - launched,
               rss_to_first_step_mb=marks.at(times[0]),
               peak_rss_mb=usage.ru_maxrss / 1024, wall_s=ended - launched,
               peak_vram_mb=vram.peak_mb if vram is not None else None,
               rss_at_phase_mb=phases or None)


# --- the benchmark ----------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Full-size SD 1.5 / SDXL: our engine beside "
                                     "sd-scripts (issue 18).")
    parser.add_argument("--family", choices=tuple(FAMILIES), default="sd15")
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps per run")
    parser.add_argument("--warmup", type=int, default=2, help="steps left out of the median")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--precision", choices=("no", "fp16", "bf16"), default="bf16")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--sd-scripts", type=Path, help="an sd-scripts checkout (peer mode)")
    parser.add_argument("--sd-python", type=Path,
                        help="the Python with sd-scripts' requirements (peer mode)")
    parser.add_argument("--sd-scripts-commit", help="the checkout's commit, for the report, "
                        "when the folder is not a git checkout")
    parser.add_argument("--no-usual", action="store_true",
                        help="only the fast pair (latents cached, SDPA)")
    parser.add_argument("--load-only", action="store_true",
                        help="ours only, one step: RSS and time to the first step")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--cache-dir", type=Path, default=ROOT / "bench" / ".cache")
    parser.add_argument("--build", nargs=2, metavar=("FAMILY", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.build:
        return args
    if (args.sd_scripts is None) != (args.sd_python is None):
        parser.error("peer mode needs both --sd-scripts and --sd-python")
    if args.sd_scripts is not None:
        args.sd_scripts = args.sd_scripts.resolve()
        if not (args.sd_scripts / PEER_SCRIPTS[args.family]).is_file():
            parser.error(f"{args.sd_scripts} has no {PEER_SCRIPTS[args.family]}: give the "
                         "folder of an sd-scripts checkout")
    if not args.load_only and args.steps < args.warmup + 2:
        parser.error("--steps must be at least --warmup + 2")
    return args


def run_benchmark(args: argparse.Namespace) -> dict:
    cache = args.cache_dir.resolve()
    checkpoint = ensure_checkpoint(cache, args.family)
    hf_home = ensure_hf_home(cache, args.family)
    data = ensure_train_dataset(cache / "datasets", size_px=args.resolution, count=IMAGES)
    work = cache / "runs" / f"full-{args.family}-{time.strftime('%Y%m%d-%H%M%S')}"
    warmup = 0 if args.load_only else args.warmup
    pairs = [("fast", True)] + ([] if args.no_usual or args.load_only else [("plain", False)])
    peer = args.sd_scripts is not None and not args.load_only
    rounds = []
    for index in range(args.rounds):
        folder = work / f"round-{index + 1}"
        results: dict[str, Run] = {}
        for label, fast in pairs:
            ours = f"ours-{'fast' if fast else 'defaults'}"
            profile = write_profile(folder / f"{ours}.toml", our_profile(
                checkpoint, data, folder / f"{ours}-out", args, fast))
            events = folder / f"{ours}.jsonl"
            results[ours] = run_child(
                ours, [sys.executable, "-m", "lora_core.cli", "run", str(profile), "--events",
                       str(events), "--no-progress"],
                events, child_env(args, hf_home, work, ours=True), folder / f"{ours}.log",
                warmup, ROOT, gpu=args.device == "cuda", checkpoint=checkpoint)
            if peer:
                name = f"peer-{label}"
                events = folder / f"{name}.jsonl"
                results[name] = run_child(
                    name, peer_argv(checkpoint, data, folder / f"{name}-out", events, args,
                                    fast),
                    events, child_env(args, hf_home, work, ours=False), folder / f"{name}.log",
                    warmup, args.sd_scripts, gpu=args.device == "cuda",
                    checkpoint=checkpoint)
        rounds.append(results)
    size = checkpoint.stat().st_size
    return {
        "command": " ".join(["python", "bench/full_size.py", *sys.argv[1:]]),
        "work": str(work),
        "machine": machine_info(args.device),
        "checkpoint": {"path": str(checkpoint), "bytes": size,
                       # float16 on disk: the same bytes in bf16 / fp16, twice in fp32
                       "training_dtype_bytes": size * (2 if args.precision == "no" else 1)},
        "peer": {"sd_scripts": str(args.sd_scripts),
                 "commit": args.sd_scripts_commit or _git_commit(args.sd_scripts),
                 "python": str(args.sd_python)} if peer else None,
        "settings": {"family": args.family, "steps": 1 if args.load_only else args.steps,
                     "warmup": warmup, "rounds": args.rounds, "resolution_px": args.resolution,
                     "precision": args.precision, "device": args.device, "lora_rank": LORA_RANK,
                     "images": IMAGES},
        "rounds": [{name: asdict(run) for name, run in r.items()} for r in rounds],
        "summary": summarise(rounds),
    }


def _git_commit(folder: Path | None) -> str | None:
    if folder is None:
        return None
    found = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True,
                           text=True)
    return found.stdout.strip() or None


def summarise(rounds: list[dict[str, Run]]) -> dict:
    """Medians over rounds; each ours/peer ratio is taken within its round first."""
    summary: dict = {}
    for name in rounds[0]:
        runs = [r[name] for r in rounds]
        summary[name] = {key: statistics.median(getattr(run, key) for run in runs)
                         for key in ("s_per_step", "first_step_s", "rss_to_first_step_mb",
                                     "peak_rss_mb")}
        if runs[0].peak_vram_mb is not None:
            summary[name]["peak_vram_mb"] = statistics.median(run.peak_vram_mb for run in runs)
    for ours, peer in (("ours-fast", "peer-fast"), ("ours-defaults", "peer-plain")):
        if peer not in rounds[0]:
            continue
        for key in ("s_per_step", "first_step_s", "rss_to_first_step_mb", "peak_rss_mb",
                    "peak_vram_mb"):
            if key in summary[peer] and all(getattr(r[peer], key) for r in rounds):
                summary[ours][f"{key}_vs_peer"] = statistics.median(
                    getattr(r[ours], key) / getattr(r[peer], key) for r in rounds)
    return summary


def render_table(report: dict) -> str:
    s, m, ck = report["settings"], report["machine"], report["checkpoint"]
    lines = [f"machine: {m['cpu']}, {m['nproc']} cores, torch {m['torch']}"
             + (f", GPU {m['gpu']}" if "gpu" in m else ""),
             f"checkpoint: {s['family']} random weights, float16 single file, "
             f"{ck['bytes'] / 2**30:.2f} GiB",
             f"settings: {s['steps']} steps (median after {s['warmup']}), "
             f"{s['resolution_px']} px, batch 1, U-Net LoRA r{s['lora_rank']}, AdamW, "
             f"{s['precision']}, {s['device']}, {s['rounds']} round(s)"]
    if report["peer"]:
        lines.append(f"peer: sd-scripts {report['peer']['commit'] or '?'} at "
                     f"{report['peer']['sd_scripts']}")
    gpu = any("peak_vram_mb" in row for row in report["summary"].values())
    lines += ["", "| run | s/step | it/s | ×peer | first step (s) | ×peer | "
              "RSS to first step (GiB) | ×peer | peak RSS (GiB) | ×peer |"
              + (" peak VRAM (GiB) | ×peer |" if gpu else ""),
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
              + (" ---: | ---: |" if gpu else "")]
    for name, row in report["summary"].items():
        def cell(key: str, scale: float = 1.0, digits: int = 2, r=row) -> str:
            return f"{r[key] / scale:.{digits}f}"

        def ratio(key: str, r=row) -> str:
            return f"{r[key + '_vs_peer']:.2f}" if key + "_vs_peer" in r else ""

        lines.append(f"| {name} | {cell('s_per_step', digits=3)} | "
                     f"{1 / row['s_per_step']:.2f} | {ratio('s_per_step')} | "
                     f"{cell('first_step_s', digits=1)} | {ratio('first_step_s')} | "
                     f"{cell('rss_to_first_step_mb', 1024)} | "
                     f"{ratio('rss_to_first_step_mb')} | {cell('peak_rss_mb', 1024)} | "
                     f"{ratio('peak_rss_mb')} |"
                     + (f" {cell('peak_vram_mb', 1024)} | {ratio('peak_vram_mb')} |"
                        if "peak_vram_mb" in row else ""))
    limit = 1.5 * ck["training_dtype_bytes"] / 2**30
    lines += ["", f"RSS-at-load target: under 1.5x the checkpoint in the training dtype = "
              f"{limit:.2f} GiB"]
    for name, run in report["rounds"][0].items():
        if run.get("rss_at_phase_mb"):
            lines.append(f"{name}, round 1, peak RSS (GiB) reached when each phase began: "
                         + ", ".join(f"{phase} {mb / 1024:.2f}" for phase, mb
                                     in run["rss_at_phase_mb"].items()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.build:
        build_checkpoint(args.build[0], Path(args.build[1]))
        return 0
    if args.device == "cuda":
        from bench.run_bench import _has_cuda

        if not _has_cuda():
            print("error: --device cuda needs a CUDA GPU and a CUDA build of torch",
                  file=sys.stderr)
            return 2
    report = run_benchmark(args)
    print(json.dumps(report, indent=2) if args.json else render_table(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
