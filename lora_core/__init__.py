"""lora_core: the LoRA training engine behind lora-train and lora-tui.

Importing this package imports no torch, diffusers or textual: the profile, the dataset
check and the event protocol are pure Python so that the wizard and `lora-train check`
start instantly. The heavy parts live in ``models``, ``network`` and ``training``.
"""

__version__ = "0.1.0"
