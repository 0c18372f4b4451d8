"""A real run with sd-scripts' no_metadata and metadata_* options writes a LoRA file holding
exactly sd-scripts' minimum ss_* keys, the modelspec keys (with the given author and title)
and the hashes (issue 25)."""

from __future__ import annotations

from safetensors import safe_open

from lora_core.saving.metadata import MINIMUM_KEYS
from tests.e2e.conftest import run_cli


def test_no_metadata_run_writes_the_minimum_set(tmp_path, tiny_profile, state_dir):
    path = tiny_profile("bare", saving={"no_metadata": True, "metadata_author": "me",
                                        "metadata_title": "Bare Cube",
                                        "metadata_tags": "cube"})
    result = run_cli("run", str(path), env={"LORA_TUI_STATE_DIR": str(state_dir)})
    assert result.returncode == 0, result.stderr
    with safe_open(str(tmp_path / "out" / "bare.safetensors"), "pt") as fh:
        meta = fh.metadata()
    ss = {k for k in meta if k.startswith("ss_")}
    assert ss == set(MINIMUM_KEYS) - {"ss_network_args"}  # plain LoRA: no network_args
    assert {k for k in meta if not k.startswith(("ss_", "modelspec."))} == \
        {"sshs_model_hash", "sshs_legacy_hash"}
    assert (meta["modelspec.title"], meta["modelspec.author"], meta["modelspec.tags"]) == \
        ("Bare Cube", "me", "cube")
