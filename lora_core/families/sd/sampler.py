"""Preview images of SD 1.x, SD 2.x and SDXL: a diffusers pipeline over the bundle's own
modules (no copies), the prompt's sampler as its scheduler, the family's text conditioning
handed in as embeddings (``training/sampling.py``'s docstring says why each choice)."""

from __future__ import annotations

from typing import Any

import torch

from lora_core.models.bundle import ModelBundle
from lora_core.training.sample_prompts import SamplePrompt
from lora_core.training.sampling import make_sampler_scheduler


class PipelineSampler:
    """One pipeline for all prompts of one sampling; dropped with this object."""

    def __init__(self, bundle: ModelBundle) -> None:
        self.bundle = bundle
        self.pipeline = _make_pipeline(bundle)
        self.pipeline.set_progress_bar_config(disable=True)

    def image(self, prompt: SamplePrompt, seed: int, device: torch.device) -> Any:
        """One image: embeddings from the family, latents from the pipeline, decode in the
        VAE's dtype. The seed seeds both a generator on the device and the global torch RNG
        (as sd-scripts does), so schedulers that draw from either are reproducible."""
        bundle, pipeline = self.bundle, self.pipeline
        pipeline.scheduler = make_sampler_scheduler(prompt.sampler,
                                                    bundle.noise_scheduler.config)
        torch.manual_seed(seed)
        generator = torch.Generator(device=device).manual_seed(seed)
        family = bundle.impl
        cond = family.encode(bundle, family.tokenize(bundle, [prompt.prompt]))
        # sd-scripts: no negative prompt means the empty prompt as the unconditional input.
        uncond = family.encode(bundle, family.tokenize(bundle, [prompt.negative_prompt or ""]))
        embeds: dict[str, Any] = {"prompt_embeds": cond.hidden,
                                  "negative_prompt_embeds": uncond.hidden}
        if cond.pooled is not None:
            embeds.update(pooled_prompt_embeds=cond.pooled,
                          negative_pooled_prompt_embeds=uncond.pooled)
        latents = pipeline(**embeds, height=prompt.height, width=prompt.width,
                           num_inference_steps=prompt.sample_steps, guidance_scale=prompt.scale,
                           generator=generator, output_type="latent").images
        vae = bundle.vae
        pixels = vae.decode(latents.to(vae.dtype) / bundle.vae_scaling_factor).sample
        return pipeline.image_processor.postprocess(pixels.float(), output_type="pil")[0]


def _make_pipeline(bundle: ModelBundle) -> Any:
    """A diffusers pipeline over the bundle's own modules (no copies), scheduler set later."""
    if len(bundle.text_encoders) == 2:  # SDXL
        from diffusers import StableDiffusionXLPipeline

        return StableDiffusionXLPipeline(
            vae=bundle.vae, text_encoder=bundle.text_encoders[0],
            text_encoder_2=bundle.text_encoders[1], tokenizer=bundle.tokenizers[0],
            tokenizer_2=bundle.tokenizers[1], unet=bundle.unet, scheduler=None,
            add_watermarker=False)
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(
        vae=bundle.vae, text_encoder=bundle.text_encoders[0],
        tokenizer=bundle.tokenizers[0], unet=bundle.unet, scheduler=None,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
