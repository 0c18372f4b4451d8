"""Sentence captions (issue 30): the clean-up as pure text, bad input refused by name before
a model loads (no torch needed), and ``lora-train caption --captioner`` end to end on a
tiny random BLIP and a tiny random Florence-2 built from config (tests/helpers/
tiny_captioners.py; no download).

The tiny BLIP says random words, the same for every picture (its pictures carry little
signal at width 16); the tiny Florence-2 is made to say "x" at every step.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from lora_core.captioning.sentences import (
    BOILERPLATE_OPENINGS,
    appended,
    clean_sentence,
    parse_sentence_replacements,
    replace_words,
    with_prefix,
)
from lora_core.cli import main
from lora_core.errors import LoraError


def picture(path: Path, rgb=(200, 30, 30), size=(40, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, rgb).save(path)
    return path


def texts(folder: Path) -> dict[str, str]:
    return {p.name: p.read_bytes().decode("utf-8", "replace")
            for p in sorted(folder.rglob("*.txt"))}


# --- the clean-up, pure text ---------------------------------------------------------------

@pytest.mark.parametrize(("raw", "clean"), [
    ("The image shows a woman in a red coat.", "a woman in a red coat."),
    ("In this image, a cat sits on a sofa", "a cat sits on a sofa"),
    ("This is a picture of a a dog  running", "a dog running"),
    ("In this image, the image shows that a man is standing", "a man is standing"),
    ("THE IMAGE DEPICTS: A house", "A house"),
    ("a woman woman Woman smiling , outdoors", "a woman smiling, outdoors"),
    ("The imagery is bold", "The imagery is bold"),  # not an opening: a word starts so
    ("there is", "there is"),  # nothing would be left: kept as said
])
def test_clean_up(raw, clean):
    assert clean_sentence(raw) == clean


def test_every_documented_opening_is_stripped():
    for opening in BOILERPLATE_OPENINGS:
        assert clean_sentence(f"{opening.capitalize()} a red cube") == "a red cube", opening


def test_replace_prefix_and_append():
    pairs = parse_sentence_replacements(["a woman=ohwx woman", "coat=jacket"])
    assert replace_words("A woman in a coat; a womanly coats", pairs) == \
        "ohwx woman in a jacket; a womanly coats"  # whole words, any case
    with pytest.raises(LoraError, match="not old=new"):
        parse_sentence_replacements(["a woman"])
    assert with_prefix("a woman", "ohwx, ") == "ohwx, a woman"
    assert with_prefix("ohwx woman in red", "ohwx woman") == "ohwx woman in red"  # once
    assert appended("ohwx, red coat,\nalt, line", "a woman") == \
        "ohwx, red coat, a woman\nalt, line, a woman"
    assert appended("red coat, a woman", "a woman") == "red coat, a woman"
    assert appended(None, "a woman") == "a woman"


# --- bad input, refused before a model loads ------------------------------------------------

@pytest.fixture
def dataset(tmp_path) -> Path:
    data = tmp_path / "data"
    picture(data / "red.png")
    picture(data / "blue.png", (20, 20, 200))
    (data / "blue.txt").write_text("blue, cube", encoding="utf-8")
    return data


def fake_model(folder: Path, **config) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "blip", **config}))
    return folder


@pytest.mark.parametrize(("setup", "args", "says"), [
    (lambda t: (t / "empty").mkdir(), ["--captioner", "{t}/empty"],
     "{t}/empty is not a transformers model folder (no config.json)"),
    (lambda t: None, ["--captioner", "{t}/nowhere"], "captioner model folder not found"),
    (lambda t: fake_model(t / "remote", auto_map={"AutoConfig": "x.Y"}),
     ["--captioner", "{t}/remote"], "{t}/remote needs remote code (auto_map in config.json"),
    (lambda t: (t / "model" / "tokenizer_config.json").write_text(
        '{"auto_map": {"AutoTokenizer": ["x.T", null]}}'), ["--captioner", "{t}/model"],
     "{t}/model needs remote code (auto_map in tokenizer_config.json"),
    (lambda t: fake_model(t / "flo", model_type="florence2"),
     ["--captioner", "{t}/flo", "--prompt", "<OD>"],
     "--prompt '<OD>' is not a Florence-2 caption task"),
    (lambda t: None, ["--captioner", "{t}/model", "--prompt", "<CAPTION>"],
     "--prompt <CAPTION> is a Florence-2 task, and this captioner is blip"),
    (lambda t: (t / "data" / "red.png").write_bytes(b"not a png"),
     ["--captioner", "{t}/model"], "{t}/data/red.png cannot be read as a picture"),
    (lambda t: (t / "data" / "blue.txt").write_bytes("blé".encode("latin-1")),
     ["--captioner", "{t}/model", "--overwrite"], "{t}/data/blue.txt is not UTF-8 text"),
    (lambda t: None, ["--captioner", "{t}/model", "--general-threshold", "0.5"],
     "--general-threshold do(es) not apply to --captioner"),
    (lambda t: None, ["--tagger", "{t}/model", "--prompt", "hi", "--raw"],
     "--prompt, --raw do(es) not apply to --tagger"),
    (lambda t: None, ["--tagger", "{t}/model", "--captioner", "{t}/model"],
     "caption needs --tagger MODEL or --captioner MODEL (one of them)"),
    (lambda t: None, ["--captioner", "{t}/model", "--max-length", "0"],
     "--max-length must be 1 or more, not 0"),
    (lambda t: None, ["--captioner", "{t}/model", "--replace", "woman"],
     "--replace 'woman' is not old=new"),
])
def test_bad_input_is_named_and_nothing_is_written(dataset, tmp_path, state_dir, capsys,
                                                   setup, args, says):
    fake_model(tmp_path / "model")
    setup(tmp_path)
    before = texts(dataset)
    code = main(["caption", str(dataset), *[a.format(t=tmp_path) for a in args]])
    err = capsys.readouterr().err
    assert code != 0 and says.format(t=tmp_path) in err, err
    assert "Traceback" not in err and "internal error" not in err
    assert texts(dataset) == before


def test_a_repo_id_not_in_the_cache_gives_the_download_line(dataset, tmp_path, state_dir,
                                                            capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    assert main(["caption", str(dataset), "--captioner", "someone/Florence-2-base"]) != 0
    err = capsys.readouterr().err
    assert "someone/Florence-2-base is not in the local Hugging Face cache" in err
    assert "hf download someone/Florence-2-base --local-dir Florence-2-base" in err


# --- end to end on tiny random models -------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_blip(tmp_path_factory) -> Path:
    pytest.importorskip("transformers")
    from tests.helpers.tiny_captioners import make_blip

    return make_blip(tmp_path_factory.mktemp("blip") / "model")


@pytest.fixture(scope="module")
def tiny_florence(tmp_path_factory) -> Path:
    pytest.importorskip("transformers")
    from tests.helpers.tiny_captioners import make_florence

    return make_florence(tmp_path_factory.mktemp("florence") / "model")


def test_blip_captions_missing_cleans_replaces_appends_and_undoes(dataset, tiny_blip,
                                                                  state_dir, capsys):
    caption = ["caption", str(dataset), "--captioner", str(tiny_blip), "--prompt",
               "the image shows", "--max-length", "8", "--prefix", "ohwx woman"]
    assert main([*caption, "--dry-run", "--raw"]) == 0
    out = capsys.readouterr().out
    assert texts(dataset) == {"blue.txt": "blue, cube"}  # the dry run wrote nothing
    said = out.split("red.txt: ")[1].splitlines()[0]
    assert said.startswith("ohwx woman, the image shows ")  # raw: the prompt is the start
    sentence = said.removeprefix("ohwx woman, the image shows ")
    word = sentence.split()[0]
    assert main([*caption, "--replace", f"{word}=ohwx"]) == 0
    written = texts(dataset)
    assert written["blue.txt"] == "blue, cube"  # only the pictures without a caption
    expected = "ohwx woman, " + replace_words(clean_sentence(sentence),
                                              parse_sentence_replacements([f"{word}=ohwx"]))
    assert written["red.txt"] == expected + "\n"
    assert "the image shows" not in written["red.txt"]
    assert main([*caption, "--append", "--batch-size", "1"]) == 0  # tags, then the sentence
    appended_to = texts(dataset)["blue.txt"]
    assert appended_to.startswith("blue, cube, ohwx woman, ") and "image shows" not in \
        appended_to
    assert main(["caption", str(dataset), "--undo"]) == 0
    assert texts(dataset)["blue.txt"] == "blue, cube"
    assert main(["caption", str(dataset), "--undo"]) == 0
    assert texts(dataset) == {"blue.txt": "blue, cube"}


def test_florence_task_prompts_events_and_refusals(dataset, tiny_florence, state_dir,
                                                   capsys, tmp_path):
    from lora_core.events import CaptionsTagged, ImagesTagged, read_events

    events = tmp_path / "events.jsonl"
    assert main(["caption", str(dataset), "--captioner", str(tiny_florence), "--overwrite",
                 "--prompt", "<CAPTION>", "--max-length", "6", "--prefix", "ohwx cube",
                 "--events", str(events)]) == 0
    assert texts(dataset) == {"blue.txt": "ohwx cube, xxxx\n", "red.txt": "ohwx cube, xxxx\n"}
    stream = list(read_events(events))
    assert [(e.done, e.total) for e in stream if isinstance(e, ImagesTagged)] == [(2, 2)]
    done = [e for e in stream if isinstance(e, CaptionsTagged)][-1]
    assert done.captions == ["ohwx cube, xxxx"] * 2 and not done.dry_run
    capsys.readouterr()
    for prompt, says in (("<OD>", "--prompt '<OD>' is not a Florence-2 caption task"),
                         ("describe it", "is not a Florence-2 caption task")):
        assert main(["caption", str(dataset), "--captioner", str(tiny_florence),
                     "--overwrite", "--prompt", prompt]) != 0
        assert says in capsys.readouterr().err
    assert texts(dataset)["red.txt"] == "ohwx cube, xxxx\n"


def test_a_chat_model_is_asked_and_its_answer_alone_is_the_caption(dataset, tmp_path,
                                                                   state_dir, capsys):
    """LLaVA-style: the prompt goes in a user turn of the chat template; the caption is what
    follows "assistant:", never the template or the question."""
    pytest.importorskip("transformers")
    from tests.helpers.tiny_captioners import make_llava

    model = make_llava(tmp_path / "llava")
    assert main(["caption", str(dataset), "--captioner", str(model), "--raw", "--prompt",
                 "Say what you see", "--max-length", "6", "--batch-size", "2",
                 "--overwrite"]) == 0
    written = texts(dataset)
    assert set(written) == {"blue.txt", "red.txt"}
    for text in written.values():
        assert text.strip() and "\n" not in text.strip()  # one line, however it is decoded
        assert "Say what you see" not in text and "assistant:" not in text and \
            "user:" not in text


def test_a_repo_id_in_the_cache_is_its_snapshot(tmp_path, monkeypatch):
    from lora_core.captioning.captioner import find_captioner

    hub = tmp_path / "hub"
    snapshot = hub / "models--someone--tiny-blip" / "snapshots" / ("a" * 40)
    fake_model(snapshot)
    (hub / "models--someone--tiny-blip" / "refs").mkdir()
    (hub / "models--someone--tiny-blip" / "refs" / "main").write_text("a" * 40)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(hub))
    assert find_captioner("someone/tiny-blip") == snapshot
