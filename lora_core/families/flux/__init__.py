"""Flux.1 (dev, schnell) and Chroma as one family package.

The rest of the engine asks ``family.FAMILY`` (``FluxFamily``, the ``families.interface``
answers); it calls into the modules here, one per piece. Importing this package imports no
torch (``config``, ``files`` recognition, ``metadata``, ``lora_files``, ``checks`` and
``family`` are pure Python; the rest import torch when imported themselves).

The pieces, in the order a run needs them:

Recognise and size (no torch; for ``check`` and the wizard)
    ``files.inspect_flux_file(path, where=field) -> FluxFileInfo``: layout ("bfl" /
    "diffusers"), variant ("dev" / "schnell" / "chroma"), ``config: FluxConfig`` read from the
    tensors, ``weight_dtype`` / ``is_fp8``; ModelError naming ``where`` for a wrong file (an SD
    checkpoint, an ae/clip_l/t5xxl file, a LoRA, e5m2 fp8 ...).
    ``files.resolve_variant(info, model_type)`` checks sd-scripts' ``model_type``;
    ``files.check_variant_settings(variant, apply_t5_attn_mask)`` (Chroma needs the mask).
    Chroma: no CLIP-L (pass ``clip_model=None`` to ``text.encode_text``, ``y=None``).

Load
    ``files.load_flux_model(path, dtype=, fp8_base=) -> (Flux, info)`` (frozen, eval);
    ``latents.load_ae(path, dtype=)``; ``text.load_clip_l(path, dtype=)``,
    ``text.load_t5(path, dtype=, fp8=)``; tokenizer folders from
    ``tokenizers.find_clip_l_tokenizer(tokenizer_cache_dir, builtin_folder)`` and
    ``tokenizers.find_t5_tokenizer(...)`` (ModelError with the ``hf download`` line), then
    ``text.load_tokenizers(clip_dir, t5_dir, t5_max_length)``.
    ``Flux.enable_gradient_checkpointing()``; ``fp8.to_fp8(module, compute_dtype)`` for any
    module tree.

Per step (pure maths; ``objective.FlowSettings`` holds sd-scripts' argument values)
    cond = ``text.encode_text(captions, ..., t5_max_length=text.T5_MAX_LENGTH[variant],
    apply_t5_attn_mask=)`` (cacheable: pooled, t5_states, txt_ids, t5_mask)
    x0 = ``latents.encode(ae, pixels)`` (cacheable; 16 channels, scale/shift applied)
    σ = ``objective.draw_sigmas(settings, batch, packed_hw, generator)``
    x_t = ``objective.noisy_latents(x0, noise, σ)``
    pred = flux(``latents.pack_latents(x_t)``, ``latents.image_ids(b, h/2, w/2)``,
    cond.t5_states, cond.txt_ids, ``objective.model_timesteps(σ)``, cond.pooled (None for
    Chroma), ``objective.guidance_vector(settings.guidance_scale, b,
    config.takes_guidance)``, cond.t5_mask if apply_t5_attn_mask else None)
    pred, weight = ``objective.apply_prediction_type(settings,
    latents.unpack_latents(pred, h/2, w/2), x_t, σ)``;
    target = ``objective.flow_target(x0, noise)``; loss = weight · mse(pred, target).

LoRA
    ``naming.network_targets(flux, clip_l, t5, rank, alpha, FluxNetworkArgs(...),
    train_text_encoder=)`` -> ``FluxTarget``s (sd-scripts' ``networks.lora_flux`` names,
    ranks, ``split_dims`` and ``file_shapes()``).

Previews
    ``sampler.sample_latents(flux, width_px=, height_px=, num_steps=, t5_states=, txt_ids=,
    pooled=, guidance_scale=, seed=, negative=)`` then ``latents.decode(ae, x)``.

Files
    ``metadata.training_keys(variant, settings, apply_t5_attn_mask)`` and
    ``metadata.modelspec_keys(variant)``, merged over the common keys.

Built-in
    ``builtin.ensure_tiny_flux()`` -> a folder with ``DIT_FILE`` (dev), ``CHROMA_FILE``,
    ``AE_FILE``, ``CLIP_L_FILE``, ``T5_FILE`` and the two tokenizer folders.
"""
