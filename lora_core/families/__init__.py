"""Model families, each one home that owns everything that differs per family.

A family answers, for its own models (the questions are ``interface.ModelFamily``):
which files are its own and which variant (from headers, no torch), how to load them with
the architecture read from the tensors, how text becomes conditioning, the latent space
(channels, scale/shift, packing), the training objective (noise, timesteps, target, loss
weighting), the preview sampler, which modules get a LoRA and the sd-scripts names they are
saved under, its ``ss_*`` / ``modelspec.*`` metadata, what its LoRA files say, and its
checks. The trainer, the checks, the tools and the wizard find a family by name through
``lora_core.family_registry`` and ask it; none of them says ``if family == ...``
(``tests/core/test_families.py`` holds them to every comparison with a family's name; what
still knows a family's details outside its home is listed in issue 27's closing note).

Homes:

* ``sd/``: what Stable Diffusion 1.x, 2.x and SDXL share: the answers they give alike
  (``sd/family.py``), their checkpoint layouts and single-file loading (``checkpoint.py``,
  ``single_file.py``, ``unet_layout.py``, ``configs/``, ``loading.py``), the DDPM objective,
  the pipeline sampler and the tiny built-ins;
* ``sd1.py``, ``sd2.py``, ``sdxl.py``: each variant's own facts and text encoding;
* ``flux/``: Flux.1 dev / schnell and Chroma (``flux/family.py`` is its object).

The shared tools below them (``models/``: safetensors headers, tokenizers, fp8, bundles;
``network/``: LoRA modules and sd-scripts' naming rules, given the family's ``LoraNaming``;
``training/``: loss maths, noise, loops) take a family's answers as arguments and never
import a family. Adding a family: a home here whose module has a ``FAMILY`` object with the
interface, and one line in ``family_registry``.

Importing this package, ``interface`` or a family's object module imports no torch.
"""
