"""``[training] torch_compile``: the U-Net's / DiT's repeated blocks compiled with
torch.compile, one graph shared by every block of a type and width (regional compilation),
with the compiled code kept between runs.

Why regional: sd-scripts hands the whole model to accelerate, which compiles it as one graph;
its first step then compiles every block of the model in turn (many minutes on an SDXL U-Net).
The blocks of one type run the same code on the same kind of tensors, so compiling each block
module in place (``nn.Module.compile``) lets dynamo trace the code once and reuse the graph
for every block that matches its guards (torch >= 2.5 treats the parameters as graph inputs,
so the graph is not tied to one block's weights). Parameter shapes stay static, so each
width of a block type (an SD U-Net has three or four, and resnets that change width) is a
graph of its own; a new input size recompiles once with dynamic shapes. The tiny SD1 U-Net
makes 10 graphs of its 2 types; a full U-Net some tens, under :data:`RECOMPILE_LIMIT`:
PyTorch's recipe https://docs.pytorch.org/tutorials/recipes/regional_compilation.html and
diffusers' ``compile_repeated_blocks`` do the same. Which classes repeat is the family's
answer (``repeated_blocks``). The LoRA modules, hooked into the blocks' layers before
compiling, are traced with them; the module names in files are unchanged (compiling in
place adds no ``_orig_mod.`` prefix).

The kept cache: inductor's FX-graph and AOT-autograd caches (on by default) live under
``TORCHINDUCTOR_CACHE_DIR``, by default in /tmp, which a rented machine may wipe between
sessions; lora-train points it (and Triton's kernel cache) at its state folder unless the
user set them, so the second run of a profile reads its kernels instead of compiling them.

What this module must not do: decide whether compiling can work here (``checks.compiling``
says that before the run, by field) or compile the text encoders (they run once per caption
when cached, and their time is small).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch

from lora_core.errors import ProfileError
from lora_core.paths import compile_cache_dir

# sd-scripts' names where torch's differ ("tensort" is sd-scripts' spelling of TensorRT's).
TORCH_NAMES = {"tensort": "tensorrt"}
# A block type compiles once per width and again for a new resolution (then dynamic); a
# U-Net has some tens of those. torch's default limit (8 per code object) would make the
# later blocks fall back to eager without a word.
RECOMPILE_LIMIT = 64


def keep_compile_cache() -> Path:
    """Point inductor's and Triton's caches at the state folder (unless set by the user);
    returns inductor's. Read by torch when it compiles, so setting them now is in time."""
    try:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir
    except ImportError:  # an older torch: its default, as it names it
        import getpass
        import tempfile

        def default_cache_dir() -> str:
            return os.path.join(tempfile.gettempdir(), f"torchinductor_{getpass.getuser()}")

    root = compile_cache_dir()
    # torch writes its default into the environment the first time it asks (an import may
    # have asked already): that one is replaced, a folder the user chose is kept.
    current = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if current is None or os.path.abspath(current) == os.path.abspath(default_cache_dir()):
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(root / "inductor")
    os.environ.setdefault("TRITON_CACHE_DIR", str(root / "triton"))
    return Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])


def eagerly() -> contextlib.AbstractContextManager:
    """Compiled blocks run as plain Python inside: for previews, which run the blocks in
    eval mode without gradients, where each block would compile a second time (minutes,
    and against the recompile limit) for a few images. Nothing is compiled or not here."""
    stance = getattr(torch.compiler, "set_stance", None)  # torch >= 2.6
    return stance("force_eager") if stance is not None else contextlib.nullcontext()


def torch_backend(name: str) -> str:
    """The torch.compile backend for a ``dynamo_backend`` value; ProfileError when this
    torch has none by that name (checks.compiling says so before the run where it can)."""
    import importlib

    import torch._dynamo

    from lora_core.profile_keys import DYNAMO_BACKEND_PACKAGES

    if name in DYNAMO_BACKEND_PACKAGES:  # the package registers the backend when imported
        module, pip_name = DYNAMO_BACKEND_PACKAGES[name]
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ProfileError(f"`[training] dynamo_backend` = \"{name}\" comes with the "
                               f"{pip_name} package, which could not be imported: {exc}",
                               f"pip install {pip_name} into lora-train's environment, or "
                               "set dynamo_backend = \"inductor\"") from None
    backend = TORCH_NAMES.get(name, name)
    available = torch._dynamo.list_backends(exclude_tags=None)
    if backend not in available:
        raise ProfileError(
            f"`[training] dynamo_backend` = \"{name}\": torch {torch.__version__} has no "
            "torch.compile backend by that name (it has "
            f"{', '.join(sorted(torch._dynamo.list_backends()))}, and eager / aot_eager)",
            "set dynamo_backend = \"inductor\", or install the package that provides it")
    return backend


def compile_repeated_blocks(model: torch.nn.Module, block_classes: tuple[str, ...],
                            backend: str) -> int:
    """Compile, in place, every submodule of ``model`` whose class is named in
    ``block_classes``; returns how many. The compile itself happens at each block's first
    call (the first training step)."""
    import torch._dynamo

    torch_name = torch_backend(backend)
    config = torch._dynamo.config
    # recompile_limit (torch >= 2.7) was cache_size_limit before.
    limit_name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    setattr(config, limit_name, max(getattr(config, limit_name), RECOMPILE_LIMIT))
    if hasattr(config, "accumulated_recompile_limit"):
        config.accumulated_recompile_limit = max(config.accumulated_recompile_limit,
                                                 RECOMPILE_LIMIT * 16)
    if torch_name == "inductor":
        keep_compile_cache()
    count = 0
    for module in model.modules():
        if type(module).__name__ in block_classes:
            module.compile(backend=torch_name)
            count += 1
    if count == 0:  # a family's answer that no longer matches its model: a bug, say so
        raise AssertionError(f"no {' / '.join(block_classes)} block in "
                             f"{type(model).__name__} to compile")
    return count
