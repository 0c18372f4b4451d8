"""Tools for LoRA files after training: inspect, edit the user fields, resize, merge.

``inspect`` and ``edit`` read and rewrite the safetensors header only (no torch, any
kohya-format file); ``factor`` (resize, merge) loads the tensors and re-factors the deltas.
The command line (`lora-train inspect|edit|resize|merge`) and the wizard's Files screen call
these functions.
"""
