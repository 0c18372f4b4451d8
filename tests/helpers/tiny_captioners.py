"""Tiny random captioners built from config, saved in transformers' format (no download):
BLIP (a WordPiece tokenizer from a word list), Florence-2 (a byte-level BART tokenizer
with no merges, the bytes of lora_core.models.tokenizer_gen) and a LLaVA-style chat model
(the same bytes as GPT-2 tokens, a minimal chat template). Widths of 8-32 so building,
saving and loading take well under a second after the imports.

``make_florence(..., shape="base")`` builds the Florence-2-base shape instead (DaViT
128-1024 with depths 1-1-9-1, a 6+6-layer BART of width 768, the real 51,289-token vocabulary
size, 768-px pictures): bench/captioner_speed.py times it.
"""

from __future__ import annotations

from pathlib import Path

WORDS = ("the", "image", "shows", "a", "woman", "cat", "red", "blue", "picture", "of",
         "photograph", "in", "this", "standing", "coat")


def make_blip(folder: Path, seed: int = 0) -> Path:
    import torch
    from transformers import (
        BertTokenizer,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessorPil,
        BlipProcessor,
        BlipTextConfig,
        BlipVisionConfig,
    )

    folder.mkdir(parents=True, exist_ok=True)
    vocab = list(dict.fromkeys(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]",
                                *WORDS, *"abcdefghijklmnopqrstuvwxyz"]))
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = BertTokenizer.from_pretrained(folder, bos_token="[DEC]")
    processor = BlipProcessor(image_processor=BlipImageProcessorPil(
        size={"height": 32, "width": 32}), tokenizer=tokenizer)
    vision = BlipVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                              num_attention_heads=2, image_size=32, patch_size=8,
                              projection_dim=16)
    text = BlipTextConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32,
                          num_hidden_layers=1, num_attention_heads=2, encoder_hidden_size=16,
                          max_position_embeddings=128, bos_token_id=tokenizer.bos_token_id,
                          pad_token_id=0, sep_token_id=3, eos_token_id=3)
    torch.manual_seed(seed)
    config = BlipConfig(text_config=text.to_dict(), vision_config=vision.to_dict(),
                        projection_dim=16)
    BlipForConditionalGeneration(config).eval().save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def _bart_tokenizer(vocab_size: int = 0):
    """Byte-level BART tokens, padded with unused ones up to ``vocab_size``."""
    from transformers import BartTokenizer

    from lora_core.models.tokenizer_gen import bytes_to_unicode

    tokens = ["<s>", "<pad>", "</s>", "<unk>", *bytes_to_unicode().values()]
    tokens += [f"<unused_{i}>" for i in range(vocab_size - len(tokens) - 2)]
    tokens += ["<mask>", "<image>"]
    return BartTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=[],
                         extra_special_tokens={"image_token": "<image>"})


def make_florence(folder: Path, seed: int = 0, shape: str = "tiny") -> Path:
    import torch
    from transformers import (
        BartConfig,
        CLIPImageProcessorPil,
        Florence2Config,
        Florence2ForConditionalGeneration,
        Florence2Processor,
        Florence2VisionConfig,
    )

    tokenizer = _bart_tokenizer(51289 if shape == "base" else 0)
    if shape == "base":
        size_px, tokens = 768, 577  # (768 / 32)^2 patches + 1 pooled
        vision = Florence2VisionConfig(projection_dim=768)
        text = BartConfig(vocab_size=len(tokenizer), d_model=768, encoder_layers=6,
                          decoder_layers=6, encoder_attention_heads=12, decoder_attention_heads=12,
                          encoder_ffn_dim=3072, decoder_ffn_dim=3072,
                          max_position_embeddings=1024)
    else:
        size_px, tokens = 64, 5
        vision = Florence2VisionConfig(depths=(1, 1, 1, 1), embed_dim=(8, 16, 32, 32),
                                       num_heads=(1, 1, 2, 2), num_groups=(1, 1, 2, 2),
                                       window_size=2, projection_dim=16, drop_path_rate=0.0)
        text = BartConfig(vocab_size=len(tokenizer), d_model=16, encoder_layers=1,
                          decoder_layers=1, encoder_attention_heads=2,
                          decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
                          max_position_embeddings=128)
    for name, value in (("bos_token_id", 0), ("pad_token_id", 1), ("eos_token_id", 2),
                        ("decoder_start_token_id", 2), ("forced_bos_token_id", 0),
                        ("forced_eos_token_id", 2)):
        setattr(text, name, value)
    image_processor = CLIPImageProcessorPil(
        size={"height": size_px, "width": size_px}, do_center_crop=False,
        crop_size={"height": size_px, "width": size_px}, image_seq_length=tokens)
    processor = Florence2Processor(image_processor=image_processor, tokenizer=tokenizer)
    torch.manual_seed(seed)
    config = Florence2Config(vision_config=vision, text_config=text,
                             image_token_id=tokenizer.image_token_id,
                             tie_word_embeddings=shape != "tiny")
    model = Florence2ForConditionalGeneration(config).eval()
    if shape == "tiny":
        # Random weights stop at once (an empty caption): the decoder's last layer norm
        # gives a constant, and only the letter "x" reads it, so every step says "x".
        last = model.model.language_model.decoder.layers[-1].final_layer_norm
        with torch.no_grad():
            last.weight.zero_()
            last.bias.fill_(1.0)
            model.lm_head.weight.zero_()
            model.lm_head.weight[tokenizer.convert_tokens_to_ids("x")] = 1.0
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


# A chat template of the simplest form: the user's turn (picture, then question), then the
# assistant's cue; the caption is what the model says after it.
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<image>{% else %}{{ c['text'] }}{% endif %}{% endfor %}\n"
    "{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}")


def make_llava(folder: Path, seed: int = 0) -> Path:
    """A LLaVA-style chat captioner: a CLIP vision tower, a Llama text model, byte-level
    GPT-2 tokens with no merges, and the chat template above."""
    import torch
    from transformers import (
        CLIPImageProcessorPil,
        CLIPVisionConfig,
        GPT2Tokenizer,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    from lora_core.models.tokenizer_gen import bytes_to_unicode

    tokens = ["<|endoftext|>", *bytes_to_unicode().values(), "<image>"]
    tokenizer = GPT2Tokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=[],
                              extra_special_tokens={"image_token": "<image>"})
    tokenizer.pad_token = "<|endoftext|>"
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessorPil(size={"shortest_edge": 32},
                                              crop_size={"height": 32, "width": 32}),
        tokenizer=tokenizer, patch_size=8, vision_feature_select_strategy="default",
        num_additional_image_tokens=1, chat_template=CHAT_TEMPLATE)
    vision = CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                              num_attention_heads=2, image_size=32, patch_size=8)
    text = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32,
                       num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                       max_position_embeddings=256, bos_token_id=0, eos_token_id=0,
                       pad_token_id=0)
    torch.manual_seed(seed)
    config = LlavaConfig(vision_config=vision, text_config=text, vision_feature_layer=-1,
                         image_token_index=tokenizer.convert_tokens_to_ids("<image>"))
    LlavaForConditionalGeneration(config).eval().save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
