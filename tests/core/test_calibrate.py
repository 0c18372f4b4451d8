"""``lora-train calibrate`` (issue 28): sizes, the order levers are tried in, stopping at
the first that fits, and the words for a budget nothing fits. The measurements are faked
here (each is a child process training real steps: tests/e2e/test_calibrate_runs.py)."""

from __future__ import annotations

import pytest

from lora_core import calibrate as cal
from lora_core.errors import ProfileError
from lora_core.family_registry import family
from lora_core.profile import Profile

GIB = 2**30


def test_sizes_take_si_and_binary_units_and_refuse_the_rest():
    assert cal.parse_size("12GB") == 12 * 10**9
    assert cal.parse_size("11.5GiB") == int(11.5 * GIB)
    assert cal.parse_size(" 900 mib ") == 900 * 2**20
    assert cal.parse_size("4096") == 4096
    for bad in ("12 gigs", "GB", "-1GB", "0", "1e9", ""):
        with pytest.raises(ProfileError, match="--memory-budget"):
            cal.parse_size(bad)
    assert cal.format_size(int(1.5 * GIB)) == "1.50 GiB"


def test_the_levers_come_in_order_of_what_they_cost_in_speed():
    profile = Profile()
    profile.training.train_batch_size = 4
    profile.training.mixed_precision = "bf16"
    profile.optimizer.optimizer_type = "AdamW"
    profile.network.network_train_unet_only = True
    sets = cal.candidate_levers(profile, family("sd1"))
    assert sets == [["dataset.cache_latents=true"],
                    ["dataset.cache_text_encoder_outputs=true"],
                    ["training.gradient_checkpointing=true"],
                    ["training.fp8_base=true"],
                    ["optimizer.optimizer_type=AdamW8bit"],
                    ["training.full_bf16=true"],
                    ["training.train_batch_size=2", "training.gradient_accumulation_steps=2"]]
    flux = cal.candidate_levers(profile, family("flux"))
    assert flux[-1] == ["training.blocks_to_swap=8"]
    # What a profile already has is not proposed again.
    profile.training.gradient_checkpointing = profile.dataset.cache_latents = True
    profile.training.train_batch_size = 1
    assert ["training.gradient_checkpointing=true"] not in cal.candidate_levers(
        profile, family("sd1"))
    assert ["dataset.cache_latents=true"] not in cal.candidate_levers(profile, family("sd1"))


def fake_measure(peaks: dict[str, int], tried: list[list[str]],
                 failing: dict[str, str] | None = None):
    """A measurement whose peak is the one of the last lever in its sets (``failing``: a
    lever whose run fails, with its error; "out of memory" in it marks an OOM)."""
    failing = failing or {}

    def measure(path, overrides, steps, warmup, timeout_s=None):
        tried.append(list(overrides))
        failed = [failing[item] for item in overrides if item in failing]
        if failed:
            return cal.Measurement(error=failed[0],
                                   out_of_memory="out of memory" in failed[0])
        last = overrides[-1] if overrides else "plain"
        return cal.Measurement(seconds_per_step=1.0 + len(overrides),
                               peak_memory_bytes=peaks.get(last, peaks["plain"]),
                               step_seconds=[1.0], device="cpu")
    return measure


@pytest.fixture
def no_checks(monkeypatch):
    """Every candidate passes the checks (they are tested elsewhere)."""
    monkeypatch.setattr("lora_core.profile_load.load_profile", lambda *a, **k: Profile())
    monkeypatch.setattr("lora_core.checks.check_profile",
                        lambda p: type("R", (), {"errors": []})())


def trial(tmp_path, budget):
    return cal._Trial(tmp_path / "p.toml", [], 2, 60.0, budget, lambda text: None)


def test_proposals_add_levers_until_one_fits_and_stop_there(monkeypatch, tmp_path, no_checks):
    profile = Profile()
    profile.training.train_batch_size = 2
    tried: list[list[str]] = []
    peaks = {"plain": 10 * GIB, "dataset.cache_latents=true": 9 * GIB,
             "training.gradient_checkpointing=true": 7 * GIB,
             "training.fp8_base=true": 5 * GIB}
    monkeypatch.setattr(cal, "measure_in_child", fake_measure(peaks, tried))
    plain = cal.Measurement(peak_memory_bytes=10 * GIB)
    found = cal._proposals(trial(tmp_path, 6 * GIB), profile, family("sd1"), plain, 6 * GIB,
                           False)
    assert [p.set for p in found] == [
        ["dataset.cache_latents=true"],
        ["dataset.cache_latents=true", "training.gradient_checkpointing=true"],
        ["dataset.cache_latents=true", "training.gradient_checkpointing=true",
         "training.fp8_base=true"]]
    assert [p.fits for p in found] == [False, False, True]
    assert found[-1].peak_memory_bytes == 5 * GIB and found[-1].seconds_per_step == 4.0
    assert tried == [p.set for p in found]  # each one measured, nothing after the fit


def test_a_lever_that_fails_is_not_carried_into_the_next_ones(monkeypatch, tmp_path,
                                                                no_checks):
    """AdamW8bit failing (bitsandbytes missing) made every later proposal fail with it; one
    that ran out of memory is kept (the next lever may bring it under)."""
    profile = Profile()
    profile.optimizer.optimizer_type = "AdamW"
    profile.training.train_batch_size = 2
    profile.training.gradient_checkpointing = profile.dataset.cache_latents = True
    tried: list[list[str]] = []
    peaks = {"plain": 10 * GIB, "training.gradient_accumulation_steps=2": 5 * GIB}
    failing = {"optimizer.optimizer_type=AdamW8bit": "No module named 'bitsandbytes'",
               "training.fp8_base=true": "CUDA out of memory"}
    monkeypatch.setattr(cal, "measure_in_child", fake_measure(peaks, tried, failing))
    plain = cal.Measurement(error="CUDA out of memory", out_of_memory=True)
    found = cal._proposals(trial(tmp_path, 6 * GIB), profile, family("sd1"), plain, 6 * GIB,
                           False)
    assert [(p.set[-1], p.fits, p.note.split(":")[0]) for p in found] == [
        ("training.fp8_base=true", False, "ran out of memory"),
        ("optimizer.optimizer_type=AdamW8bit", False, "ran out of memory"),
        ("training.gradient_accumulation_steps=2", False, "ran out of memory")]
    # fp8_base ran out of memory: kept, and every later candidate ran with it (and failed
    # as it did); now the same with fp8_base fitting nothing but not failing:
    tried.clear()
    failing.pop("training.fp8_base=true")
    found = cal._proposals(trial(tmp_path, 6 * GIB), profile, family("sd1"), plain, 6 * GIB,
                           False)
    assert [(p.set[-1], p.fits, p.note.split(":")[0]) for p in found] == [
        ("training.fp8_base=true", False, ""),
        ("optimizer.optimizer_type=AdamW8bit", False, "failed"),
        ("training.gradient_accumulation_steps=2", True, "")]
    assert "optimizer.optimizer_type=AdamW8bit" not in found[-1].set  # left out after it


def test_a_run_that_fits_with_checkpointing_is_measured_without_it(monkeypatch, tmp_path,
                                                                     no_checks):
    profile = Profile()
    profile.training.gradient_checkpointing = True
    tried: list[list[str]] = []
    monkeypatch.setattr(cal, "measure_in_child", fake_measure({"plain": 3 * GIB}, tried))
    plain = cal.Measurement(peak_memory_bytes=2 * GIB)
    (faster,) = cal._proposals(trial(tmp_path, 4 * GIB), profile, family("sd1"), plain,
                               4 * GIB, False)
    assert faster.set == ["training.gradient_checkpointing=false"] and faster.fits


def test_a_profile_that_runs_out_of_memory_gets_proposals(monkeypatch, tmp_path):
    """On a GPU a profile that does not fit fails at its first steps: with the budget the
    measurement still gave (the GPU's free memory), the levers are measured anyway."""
    from lora_core.profile_io import save_profile
    from tests.core.dataset_helpers import make_folder, profile_for

    started = cal.Measurement(device="cuda:0 (RTX 3060)", free_memory_bytes=11 * GIB,
                              error="ran out of memory", out_of_memory=True)

    def measure(path, overrides, steps, warmup, timeout_s=None):
        if not overrides:
            return started
        return cal.Measurement(seconds_per_step=1.5, peak_memory_bytes=9 * GIB,
                               step_seconds=[1.5], device="cuda:0 (RTX 3060)")

    monkeypatch.setattr(cal, "measure_in_child", measure)
    make_folder(tmp_path / "train", "2_tok", 2)
    profile = tmp_path / "p.toml"
    save_profile(profile_for(tmp_path / "train", resolution=64, min_bucket_reso=64,
                             max_bucket_reso=64, mixed_precision="no",
                             pretrained_model_name_or_path="builtin:tiny-sd1"), profile)
    result = cal.calibrate(profile, [], steps=2, again=True)
    assert result.budget_bytes == 11 * GIB and result.fits is False
    assert result.eta_seconds is None and result.proposals[0].fits
    assert result.as_json()["seconds_per_step"] is None
    assert "did not run: ran out of memory" in cal.render(result)


def test_the_words_for_a_budget_nothing_fits():
    measured = cal.Measurement(seconds_per_step=0.5, peak_memory_bytes=3 * GIB,
                               step_seconds=[0.5] * 4, first_step_seconds=9.0)
    result = cal.Calibration(measured, 100, 59.0, {"load_and_caches": 8.5, "steps": 50.0,
                                                   "samples": 0.0, "saves": 0.5},
                             GIB, [cal.Proposal(["training.gradient_checkpointing=true"], 0.6,
                                                2 * GIB, False),
                                   cal.Proposal(["training.fp8_base=true"], None, None, False,
                                                "not for this profile: ...")])
    text = cal.render(result)
    assert "budget 1.00 GiB: the profile does not fit" in text
    assert "--set training.gradient_checkpointing=true" in text and "does not fit" in text
    assert "nothing measured fits the budget" in text
    data = result.as_json()
    assert {"seconds_per_step", "first_step_seconds", "peak_memory_bytes", "eta_seconds",
            "device", "proposals"} <= set(data)
    assert data["proposals"][0]["set"] == ["training.gradient_checkpointing=true"]


def _tiny_profile(tmp_path, **training):
    from lora_core.profile_io import save_profile
    from tests.core.dataset_helpers import make_folder, profile_for

    make_folder(tmp_path / "train", "2_tok", 2)
    profile = profile_for(tmp_path / "train", resolution=64, min_bucket_reso=64,
                          max_bucket_reso=64, mixed_precision="no",
                          pretrained_model_name_or_path="builtin:tiny-sd1")
    for key, value in training.items():
        setattr(profile.training, key, value)
    path = tmp_path / "p.toml"
    save_profile(profile, path)
    return path


def test_a_budget_given_on_cuda_keeps_room_for_the_cuda_context(monkeypatch, tmp_path):
    """The allocator's peak leaves the CUDA context out: a 10 GiB card does not take a run
    whose peak is 9.8 GiB. The GPU's free memory (the default budget) has the context in."""
    gpu = "cuda:0 (RTX 3080)"

    def measure(path, overrides, steps, warmup, timeout_s=None):
        peak = int(9.8 * GIB) if not overrides else 8 * GIB
        return cal.Measurement(seconds_per_step=1.0, peak_memory_bytes=peak, step_seconds=[1.0],
                               device=gpu, free_memory_bytes=int(9.9 * GIB))

    monkeypatch.setattr(cal, "measure_in_child", measure)
    monkeypatch.setattr(cal, "state_dir", lambda: tmp_path / "state")
    path = _tiny_profile(tmp_path)
    given = cal.calibrate(path, [], budget=10 * GIB, steps=2, again=True)
    assert given.context_bytes == cal.CUDA_CONTEXT_BYTES and given.fits is False
    assert given.proposals and given.proposals[-1].fits  # 8 GiB + the context fit
    assert "less 512.00 MiB kept for the CUDA context: the profile does not fit" in \
        cal.render(given)
    free = cal.calibrate(path, [], steps=2, again=True)  # the free memory: 9.9 GiB
    assert free.budget_bytes == int(9.9 * GIB) and free.context_bytes == 0 and free.fits


def test_a_measurement_trains_each_epochs_largest_batch_first(monkeypatch):
    """So a few steps of a mixed-size dataset meet its largest bucket, whose peak is the
    run's; the other batches keep their order."""
    from types import SimpleNamespace

    from lora_core.dataset import plan as plans
    from lora_core.training import trainer

    sizes = {0: (512, 512), 1: (768, 1024), 2: (512, 512), 3: (640, 640)}
    plan = SimpleNamespace(items={i: SimpleNamespace(bucket_reso=s) for i, s in sizes.items()})
    monkeypatch.setattr(plans, "epoch_batches", lambda plan, seed, epoch: [[0], [2], [1], [3]])
    monkeypatch.setattr(trainer, "epoch_batches", trainer.epoch_batches)  # restored after
    cal._largest_batch_first()
    assert trainer.epoch_batches(plan, 1, 0) == [[1], [0], [2], [3]]


def test_a_profile_that_compiles_is_measured_without_it_and_judged(monkeypatch, tmp_path):
    tried: list[list[str]] = []

    def measure(path, overrides, steps, warmup, timeout_s=None):
        tried.append(list(overrides))
        eager = overrides == ["training.torch_compile=false"]
        return cal.Measurement(seconds_per_step=1.0 if eager else 0.5, step_seconds=[1.0],
                               load_seconds=10.0 if eager else 110.0, device="cpu",
                               peak_memory_bytes=GIB)

    monkeypatch.setattr(cal, "measure_in_child", measure)
    monkeypatch.setattr(cal, "state_dir", lambda: tmp_path / "state")
    monkeypatch.setattr(cal, "kept_cache_is_warm", lambda: False)
    path = _tiny_profile(tmp_path, torch_compile=True, max_train_epochs=None,
                         max_train_steps=300)
    result = cal.calibrate(path, [], steps=2, again=True)
    assert tried == [[], ["training.torch_compile=false"]]
    verdict = result.compiling
    assert (verdict.compile_seconds, verdict.break_even_steps, verdict.planned_steps) == \
        (100.0, 200, 300)
    assert verdict.pays_off and not verdict.cache_was_warm
    assert result.as_json()["torch_compile"]["break_even_steps"] == 200
    text = cal.render(result)
    assert "compiling cost 100 s (the kept cache was cold" in text
    assert "pays off after 200 steps; this run has 300: keep it" in text
    # remembered with its verdict, measuring nothing more
    tried.clear()
    recalled = cal.recall(path, steps=2)
    assert recalled is not None and recalled.compiling.break_even_steps == 200
    assert cal.calibrate(path, [], steps=2).compiling.pays_off and tried == []
    # a shorter run: compiling does not pay off for it
    short = cal.calibrate(path, ["training.max_train_steps=100"], steps=2)
    assert short.compiling.planned_steps == 100 and not short.compiling.pays_off
    # one that does not compile is compared only when asked
    tried.clear()
    cal.calibrate(path, ["training.torch_compile=false"], steps=2, again=True)
    assert tried == [["training.torch_compile=false"]]


def test_the_pace_leaves_out_one_off_slow_steps_and_keeps_the_buckets_in_proportion():
    # a step that compiled bitsandbytes' kernels (15 s) is no pace; 2 s and 1 s buckets are
    assert cal.steady_seconds_per_step([15.0, 1.0, 1.0, 1.0, 1.0]) == 1.0
    assert cal.steady_seconds_per_step([2.0, 2.0, 1.0, 1.0, 1.0, 1.0]) == pytest.approx(8 / 6)
    assert cal.steady_seconds_per_step([0.5]) == 0.5


def test_a_comparison_the_checks_refuse_is_said_and_remembered(monkeypatch, tmp_path):
    tried: list[list[str]] = []

    def measure(path, overrides, steps, warmup, timeout_s=None):
        tried.append(list(overrides))
        return cal.Measurement(seconds_per_step=1.0, step_seconds=[1.0], device="cpu",
                               peak_memory_bytes=GIB)

    monkeypatch.setattr(cal, "measure_in_child", measure)
    monkeypatch.setattr(cal, "state_dir", lambda: tmp_path / "state")
    path = _tiny_profile(tmp_path, dynamo_backend="ofi")  # gone from torch: refused
    result = cal.calibrate(path, [], steps=2, again=True, compare_compile=True)
    assert tried == [[]] and result.compiling is None
    assert "not for this profile" in result.compile_note and "ofi" in result.compile_note
    assert "torch_compile: not compared: not for this profile" in cal.render(result)
    tried.clear()
    again = cal.calibrate(path, [], steps=2, compare_compile=True)
    assert tried == [] and again.compile_note == result.compile_note  # not measured anew


def test_a_measuring_child_tells_its_own_peak_where_wait4_is_missing(monkeypatch):
    """Windows has no os.wait4: the child's own peak stands (getrusage here, psapi's peak
    working set there; neither answering: None, not a traceback)."""
    import builtins
    import sys

    peak = cal.own_peak_rss()
    assert peak is not None and peak > 10 * 2**20  # this interpreter, torch-free, >10 MiB
    real_import = builtins.__import__

    def no_resource(name, *args, **kwargs):
        if name == "resource":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_resource)
    if sys.platform != "win32":
        assert cal.own_peak_rss() is None  # no ctypes.windll here
