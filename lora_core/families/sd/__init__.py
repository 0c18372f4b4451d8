"""What Stable Diffusion 1.x, 2.x and SDXL share, used by their three family modules
(``families/sd1.py``, ``sd2.py``, ``sdxl.py``): the answers they give alike
(:mod:`.family`), the DDPM objective (:mod:`.objective`) and the pipeline that makes their
previews (:mod:`.sampler`). The U-Net, VAE and CLIP machinery they load with (single-file
conversion, diffusers folders, tokenizers) are model-part tools in ``models/``, which these
modules drive with their own facts.

Importing this package imports no torch.
"""
