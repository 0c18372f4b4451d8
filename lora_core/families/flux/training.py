"""What the Flux family does with torch: loading the bundle, reading captions, the
flow-matching loss of one batch, the LoRA network, previews and the file's keys.

The trainer asks the bundle, never "is this Flux?": ``bundle.impl`` (``family.FluxFamily``,
which calls into this module) encodes text, gives the objective (:class:`FlowObjective`)
that turns a batch into its loss, and builds sd-scripts' ``networks.lora_flux`` modules.

The bundle's slots hold: ``unet`` the DiT, ``vae`` the autoencoder (latents are
``0.3611·(z − 0.1159)``: ``vae_scaling_factor`` / ``vae_shift_factor``), ``text_encoders``
[CLIP-L, T5] ([T5] for Chroma) and ``tokenizers`` the same way; ``noise_scheduler`` is None
(the flow objective draws its own noise levels).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lora_core.families.flux import latents as flux_latents
from lora_core.families.flux import objective as obj
from lora_core.families.flux.inputs import FluxInputs, resolve_inputs
from lora_core.families.flux.naming import FluxNetworkArgs, lora_flux_args
from lora_core.families.flux.text import CLIP_MAX_LENGTH
from lora_core.models.bundle import ModelBundle, TextConditioning, TextSettings
from lora_core.profile import Profile
from lora_core.saving.metadata import MINIMUM_KEYS

FAMILY = "flux"


@dataclass(frozen=True)
class FluxState:
    """What the family needs besides the models: the variant and the text settings."""

    inputs: FluxInputs
    variant: str
    t5_max_length: int
    apply_t5_attn_mask: bool
    settings: obj.FlowSettings
    network_args: FluxNetworkArgs = FluxNetworkArgs()  # networks.lora_flux's, from [flux]

    @property
    def has_clip(self) -> bool:
        return self.variant != "chroma"


# Preview steps when a prompt gives no --s: sd-scripts' Flux sampler's 20 (SD's is 30).
DEFAULT_SAMPLE_STEPS = 20
# The guidance value trained with when [flux] guidance_scale is unset: sd-scripts' 3.5,
# and 0.0 for Chroma (its docs: "--guidance_scale=0.0 is required" for Chroma).
DEFAULT_GUIDANCE = {"dev": 3.5, "schnell": 3.5, "chroma": 0.0}


def flow_settings(profile: Profile, variant: str = "dev") -> obj.FlowSettings:
    fx = profile.flux
    guidance = DEFAULT_GUIDANCE[variant] if fx.guidance_scale is None else fx.guidance_scale
    return obj.FlowSettings(
        timestep_sampling=fx.timestep_sampling, sigmoid_scale=fx.sigmoid_scale,
        discrete_flow_shift=fx.discrete_flow_shift,
        model_prediction_type=fx.model_prediction_type, weighting_scheme=fx.weighting_scheme,
        logit_mean=fx.logit_mean, logit_std=fx.logit_std, mode_scale=fx.mode_scale,
        guidance_scale=guidance)


def load_flux_bundle(profile: Profile, dtype: torch.dtype) -> ModelBundle:
    """The four files of a Flux profile, loaded in ``dtype`` (frozen, eval): what
    ``inputs.resolve_inputs`` found, the same resolution ``check`` made."""
    from lora_core.families.flux.builtin import ensure_tiny_flux
    from lora_core.families.flux.files import load_flux_model
    from lora_core.families.flux.inputs import is_flux_builtin
    from lora_core.families.flux.text import load_clip_l, load_t5, load_tokenizers

    builtin = is_flux_builtin(profile.model.pretrained_model_name_or_path)
    inputs = resolve_inputs(profile, ensure_tiny_flux() if builtin else None)
    dit, _ = load_flux_model(inputs.dit, dtype=dtype, info=inputs.info,
                             fp8_base=profile.training.fp8_base
                             or profile.training.fp8_base_unet)
    ae = flux_latents.load_ae(inputs.ae, dtype=dtype)
    # sd-scripts: with fp8_base an fp8 T5 file stays fp8 (each Linear computed in dtype);
    # a 16-bit one loads in the training dtype.
    t5 = load_t5(inputs.t5xxl, dtype=dtype,
                 fp8=profile.training.fp8_base and stores_fp8(inputs.t5xxl))
    assert inputs.t5_tokenizer is not None  # resolved with the folder built
    clip_tok, t5_tok = load_tokenizers(inputs.clip_tokenizer, inputs.t5_tokenizer,
                                       inputs.t5_max_length)
    encoders: list[Any] = [t5]
    tokenizers: list[Any] = [t5_tok]
    if inputs.clip_l is not None:
        encoders.insert(0, load_clip_l(inputs.clip_l, dtype=dtype))
        tokenizers.insert(0, clip_tok)
    state = FluxState(inputs, inputs.variant, inputs.t5_max_length,
                      profile.flux.apply_t5_attn_mask, flow_settings(profile, inputs.variant),
                      lora_flux_args(profile.flux))
    return ModelBundle(
        family=FAMILY, unet=dit, vae=ae, text_encoders=encoders, tokenizers=tokenizers,
        noise_scheduler=None, vae_scaling_factor=flux_latents.AE_SCALE,
        vae_shift_factor=flux_latents.AE_SHIFT, model_name=inputs.dit.name,
        model_file=None if builtin else Path(inputs.dit), prediction_type="flow",
        text=TextSettings(), family_state=state)


class FluxRuntime:
    """Captions to Flux's conditioning: T5 states (and mask) for the text stream, CLIP-L's
    pooled output for the modulation vector (none for Chroma), as sd-scripts'
    ``strategy_flux`` encodes them; the network, previews, placement and file keys."""

    @staticmethod
    def _state(bundle: ModelBundle) -> FluxState:
        return bundle.family_state

    def tokenize(self, bundle: ModelBundle, captions: list[str]) -> list[Tensor]:
        """[CLIP ids (B, 77) or an empty (B, 0) for Chroma, T5 ids (B, L), T5 mask (B, L)]."""
        state = self._state(bundle)
        if state.has_clip:
            clip_ids = bundle.tokenizers[0](
                captions, max_length=CLIP_MAX_LENGTH, padding="max_length", truncation=True,
                return_tensors="pt")["input_ids"]
        else:
            clip_ids = torch.zeros((len(captions), 0), dtype=torch.long)
        tokens = bundle.tokenizers[-1](captions, max_length=state.t5_max_length,
                                       padding="max_length", truncation=True,
                                       return_tensors="pt")
        return [clip_ids, tokens["input_ids"], tokens["attention_mask"]]

    def encode(self, bundle: ModelBundle, input_ids_list: list[Tensor]) -> TextConditioning:
        state = self._state(bundle)
        clip_ids, t5_ids, mask = input_ids_list
        pooled = None
        if state.has_clip:
            pooled = bundle.text_encoders[0](clip_ids).pooler_output
        t5 = bundle.text_encoders[-1]
        hidden = t5(t5_ids, attention_mask=mask if state.apply_t5_attn_mask else None
                    ).last_hidden_state
        return TextConditioning(hidden, pooled, mask)

    def encode_text(self, bundle: ModelBundle, input_ids_list: list[Tensor]) -> Tensor:
        return self.encode(bundle, input_ids_list).hidden

    def unet_extra_conditioning(self, bundle: ModelBundle, **kwargs: Any) -> dict[str, Any]:
        return {}

    def place_transformer(self, bundle: ModelBundle, training, device, dtype) -> bool:
        """With ``blocks_to_swap``: the transformer on ``device`` in ``dtype`` but for the
        swapped blocks, which stay in CPU memory (``offload.BlockSwapper``); False (nothing
        done) without it."""
        from lora_core.families.flux.config import split_blocks_to_swap
        from lora_core.families.flux.offload import BlockSwapper
        from lora_core.models.fp8 import move_keeping_fp8

        if not training.blocks_to_swap:
            return False
        dit = bundle.unet
        move_keeping_fp8(dit, "cpu", dtype)  # cast where it is; nothing wide reaches the GPU
        double, single = split_blocks_to_swap(training.blocks_to_swap)
        swapped = [*list(dit.double_blocks)[len(dit.double_blocks) - double:],
                   *list(dit.single_blocks)[len(dit.single_blocks) - single:]]
        dit.block_swapper = BlockSwapper(swapped, device)
        dit.to(device)  # the rest (a swapped block's weights are empty there)
        return True

    def sample_image(self, bundle: ModelBundle, prompt, seed: int, device) -> Any:
        """One preview as sd-scripts' Flux sampler makes it: the flow-matching Euler sampler
        with the resolution-dependent shift, ``--g`` the distilled guidance (3.5 unless
        given), true CFG with the negative prompt only when ``--l`` is given and not 1."""
        from PIL import Image

        from lora_core.families.flux.sampler import sample_latents

        state = self._state(bundle)
        dit = bundle.unet
        dtype = next(p for p in dit.parameters() if p.is_floating_point()).dtype
        dtype = dtype if dtype in (torch.float32, torch.float16, torch.bfloat16) \
            else torch.bfloat16  # fp8-stored weights compute in bf16

        def encode(text: str) -> TextConditioning:
            ids = [t.to(device) for t in self.tokenize(bundle, [text])]
            return self.encode(bundle, ids)

        cond = encode(prompt.prompt)
        mask = cond.mask.to(device) if state.apply_t5_attn_mask else None
        negative = None
        if prompt.scale_given and prompt.scale != 1.0:
            neg = encode(prompt.negative_prompt or "")
            negative = (prompt.scale, neg.hidden, neg.pooled,
                        neg.mask.to(device) if mask is not None else None)
        latents = sample_latents(
            dit, width_px=prompt.width, height_px=prompt.height,
            num_steps=prompt.sample_steps if prompt.steps_given else DEFAULT_SAMPLE_STEPS,
            t5_states=cond.hidden,
            txt_ids=flux_latents.text_ids(1, cond.hidden.shape[1]), pooled=cond.pooled,
            guidance_scale=(state.settings.guidance_scale if prompt.guidance_scale is None
                            else prompt.guidance_scale),
            t5_mask=mask, seed=seed, negative=negative, dtype=dtype, device=device)
        pixels = flux_latents.decode(bundle.vae, latents.to(device))[0]
        array = ((pixels.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return Image.fromarray(array.permute(1, 2, 0).cpu().numpy())

    def build_network(self, bundle: ModelBundle, net, lr_weights=None, shapes=None):
        """sd-scripts' ``networks.lora_flux``: LoRA modules on the DiT's block Linears and,
        unless ``network_train_unet_only``, CLIP-L's (and T5's with ``train_t5xxl``), as
        ``[flux]``'s network args select and rank them; ``split_qkv`` modules are
        :class:`~lora_core.families.flux.split_lora.SplitLoRAModule`."""
        from lora_core.families.flux.naming import network_targets
        from lora_core.families.flux.split_lora import SplitLoRAModule
        from lora_core.network.adapter import AdapterNetwork
        from lora_core.network.lora import LoRAModule

        state = self._state(bundle)
        clip = bundle.text_encoders[0] if state.has_clip else None
        targets = network_targets(bundle.unet, clip, bundle.text_encoders[-1],
                                  net.network_dim, net.network_alpha, state.network_args,
                                  train_text_encoder=not net.network_train_unet_only)
        network = AdapterNetwork(net.network_module)
        for target in targets:
            is_te = not target.lora_name.startswith("lora_unet")
            if net.network_train_text_encoder_only and not is_te:
                continue
            rank, alpha = target.rank, target.alpha
            if shapes is not None:
                if target.lora_name not in shapes:
                    continue
                rank, alpha = shapes[target.lora_name]
                if target.split_dims:  # the file's down has every piece's ranks
                    rank //= len(target.split_dims)
            dropouts = {"dropout": net.network_dropout, "rank_dropout": net.rank_dropout,
                        "module_dropout": net.module_dropout}
            if target.split_dims:
                module = SplitLoRAModule(target.lora_name, target.module, rank, alpha,
                                         target.split_dims, **dropouts)
            else:
                module = LoRAModule(target.lora_name, target.module, rank, alpha, **dropouts)
            network.add(module, text_encoder=is_te)
        return network


class FlowObjective:
    """One batch's loss under rectified flow, as sd-scripts' ``flux_train_network`` computes
    it: σ drawn per sample, x_t = (1 − σ)·x0 + σ·ε, the DiT's velocity against ε − x0."""

    def __init__(self, state: FluxState, dit, loss_type: str = "l2") -> None:
        self.state = state
        self.takes_guidance = dit.config.takes_guidance
        self.loss_type = loss_type  # l2 or l1 (the check refuses the Huber losses for Flux)

    def loss(self, batch: dict[str, Any], latents: Tensor, text: TextConditioning, dit,
             dtype: torch.dtype) -> Tensor:
        """The batch's mean loss, σ and ε drawn from the global RNG."""
        return self.batch_loss(latents, text, batch["loss_weights"], batch.get("masks"), dit,
                               dtype)

    def validation_losses(self, batch: dict[str, Any], latents: Tensor, text: TextConditioning,
                          dit, dtype: torch.dtype, timesteps: list[int],
                          generator: torch.Generator) -> list[float]:
        """The batch's loss at each fixed timestep t (σ = t / 1000), noise from
        ``generator``."""
        return [float(self.batch_loss(latents, text, batch["loss_weights"], batch.get("masks"),
                                      dit, dtype, sigma=t / 1000, generator=generator))
                for t in timesteps]

    def batch_loss(self, latents: Tensor, text: TextConditioning, loss_weights: Tensor,
                   masks: Tensor | None, dit, dtype: torch.dtype, *, sigma: float | None = None,
                   generator: torch.Generator | None = None) -> Tensor:
        """The batch's loss (float32 scalar). ``sigma`` (validation): every sample at that
        noise level, noise from ``generator``; otherwise σ and ε from the global RNG."""
        from lora_core.training.loss import element_loss, masked_mean

        settings = self.state.settings
        b, _, h, w = latents.shape
        packed_h, packed_w = h // flux_latents.PATCH, w // flux_latents.PATCH
        device = latents.device
        if sigma is None:
            noise = torch.randn_like(latents)
            sigmas = obj.draw_sigmas(settings, b, (packed_h, packed_w)).to(device)
        else:
            noise = torch.randn(latents.shape, generator=generator).to(device, latents.dtype)
            sigmas = torch.full((b,), float(sigma), device=device)
        noisy = obj.noisy_latents(latents, noise, sigmas)
        t5_states = text.hidden.to(device, dtype)
        pooled = text.pooled.to(device, dtype) if text.pooled is not None else None
        mask = text.mask.to(device) if (text.mask is not None
                                        and self.state.apply_t5_attn_mask) else None
        guidance = (obj.guidance_vector(settings.guidance_scale, b, True, device).to(dtype)
                    if self.takes_guidance else None)
        pred = dit(flux_latents.pack_latents(noisy.to(dtype)),
                   flux_latents.image_ids(b, packed_h, packed_w).to(device, dtype),
                   t5_states, flux_latents.text_ids(b, t5_states.shape[1]).to(device, dtype),
                   obj.model_timesteps(sigmas).to(dtype), pooled, guidance, mask)
        pred = flux_latents.unpack_latents(pred.float(), packed_h, packed_w)
        pred, weighting = obj.apply_prediction_type(settings, pred, noisy, sigmas)
        err = element_loss(pred, obj.flow_target(latents, noise), self.loss_type)
        if weighting is not None:
            err = err * weighting
        per_sample = masked_mean(err, masks)
        return (per_sample * loss_weights.to(per_sample.device, torch.float32)).mean()


def stores_fp8(path: Path) -> bool:
    """Whether a T5 file keeps its attention weights as float8 e4m3fn (from its header)."""
    from lora_core.models.headers import read_entries

    _, entries, _ = read_entries(Path(path))
    return any(key.endswith("SelfAttention.q.weight") and entry[0] == "F8_E4M3"
               for key, entry in entries.items())


def file_metadata(bundle: ModelBundle, metadata: dict[str, str], no_metadata: bool = False
                  ) -> dict[str, str]:
    """The run's metadata with Flux's keys as ``flux_train_network.py`` writes them
    (``ss_base_model_version`` flux1 / chroma, the flow settings, ``networks.lora_flux``, the
    modelspec architecture); with ``no_metadata`` only the keys the file keeps are updated."""
    from lora_core.families.flux import metadata as flux_metadata

    state: FluxState = bundle.family_state
    keys = {**flux_metadata.training_keys(state.variant, state.settings,
                                           state.apply_t5_attn_mask),
            "ss_network_module": flux_metadata.NETWORK_MODULE, "ss_v2": "False",
            "ss_t5xxl_max_token_length": str(state.t5_max_length),
            **flux_metadata.modelspec_keys(state.variant)}
    full = not no_metadata
    for drop in ("ss_v_parameterization", "ss_scale_v_pred_loss_like_noise_pred",
                 "modelspec.prediction_type"):
        metadata.pop(drop, None)
    return {**metadata, **{k: v for k, v in keys.items()
                           if full or k.startswith("modelspec.") or k in MINIMUM_KEYS}}
