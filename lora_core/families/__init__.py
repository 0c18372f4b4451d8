"""Model families, each one package that owns everything that differs per family.

A family package answers, for its own models: which files are its own (and which variant),
how to load them with the architecture read from the tensors, how text becomes
conditioning, the latent space (channels, scale/shift, packing), the training objective
(noise, timesteps, target, loss weighting), the preview sampler, which modules get a LoRA
and the sd-scripts names they are saved under, and the ``ss_*`` / ``modelspec.*`` metadata.

The trainer, the checks, the tools and the wizard ask the family; none of them says
``if family == ...``. ``flux/`` is the first family written this way (see its docstring for
the interface); SD 1.x / 2.x / SDXL still live in ``models/``, ``network/`` and
``training/`` until they move here.

Importing this package (or a family's ``__init__``) must not import torch.
"""
