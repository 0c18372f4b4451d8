"""sd-scripts' --metadata_title/author/description/license/tags and --no_metadata at training
time (issue 25): the modelspec keys a LoRA file carries, and the minimum set sd-scripts keeps
with no_metadata."""

from __future__ import annotations

from lora_core.cli import main
from lora_core.saving.metadata import MINIMUM_KEYS, at_save
from tests.core.test_metadata import metadata_for


def test_metadata_options_are_written_as_sd_scripts_writes_them(tmp_path):
    meta = metadata_for(tmp_path, metadata_title="Blue Cube", metadata_author="me",
                        metadata_description="a cube, blue", metadata_license="CC-BY-4.0",
                        metadata_tags="cube, blue", training_comment="trigger: ohwx")
    assert {k: meta.get(k) for k in ("modelspec.title", "modelspec.author",
                                     "modelspec.description", "modelspec.license",
                                     "modelspec.tags")} == {
        "modelspec.title": "Blue Cube", "modelspec.author": "me",
        "modelspec.description": "a cube, blue", "modelspec.license": "CC-BY-4.0",
        "modelspec.tags": "cube, blue"}
    assert meta["ss_training_comment"] == "trigger: ohwx"  # the comment stays its own key
    assert meta["ss_output_name"] == "mylora"  # the title does not rename the file


def test_without_metadata_options_the_title_is_the_output_name_and_nothing_is_made_up(
        tmp_path):
    meta = metadata_for(tmp_path)
    assert meta["modelspec.title"] == "mylora"
    assert not {"modelspec.author", "modelspec.license", "modelspec.tags",
                "modelspec.description"} & set(meta)


def test_no_metadata_keeps_only_sd_scripts_minimum_keys_and_the_modelspec(tmp_path):
    meta = metadata_for(tmp_path, no_metadata=True, network_module="LoCon", conv_dim=4,
                        metadata_author="me")
    assert set(meta) - {k for k in meta if k.startswith("modelspec.")} == set(MINIMUM_KEYS)
    assert meta["ss_network_module"] == "networks.lora" and meta["ss_network_dim"] == "32"
    assert meta["modelspec.author"] == "me"
    assert "ss_tag_frequency" not in meta and "ss_dataset_dirs" not in meta
    # no progress keys either: sd-scripts sets ss_steps / ss_epoch on the full set only
    assert at_save(meta, 10, 1) == meta
    assert at_save(metadata_for(tmp_path / "full"), 10, 1)["ss_steps"] == "10"


def test_fields_documents_the_options(capsys):
    assert main(["fields"]) == 0
    out = capsys.readouterr().out
    for key in ("metadata_title", "metadata_author", "metadata_description",
                "metadata_license", "metadata_tags", "no_metadata"):
        assert key in out, key
    assert "modelspec.license" in out
