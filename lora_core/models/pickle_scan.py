"""What a pickled checkpoint (``.ckpt``, ``.pt``, ``.bin``) is, told without unpickling it.

A pickle is a small program: it may name any importable function (``os.system``) and call
it. The loader reads checkpoints with ``torch.load(weights_only=True)``, which refuses every
function outside torch's short list of tensor rebuilders, storages and dtypes. This module
reads the pickle's opcodes (``pickletools.genops``: parsing, never executing) and lists the
globals it names, so ``lora-train check`` reports a checkpoint the loader would refuse, with
the loader's own message, before any of it runs, and without importing torch.

:data:`ALLOWED` describes torch's list by pattern; a test holds it against the installed
torch's ``_weights_only_unpickler._get_allowed_globals()``, so nothing torch would load is
refused here.
"""

from __future__ import annotations

import io
import pickletools
import re
import zipfile
from pathlib import Path

from lora_core.errors import ModelError
from lora_core.models.files import DAMAGED_HINT

CODE_HINT = ("use a .safetensors version of this model; convert the .ckpt only on a machine "
             "and with a tool you trust")
# torch's weights-only allow list, as patterns of "module.name".
ALLOWED = re.compile(r"""^(?:
    _codecs\.encode
  | builtins\.(?:bytearray|complex|set)
  | collections\.(?:Counter|OrderedDict)
  | torch(?:\.cuda)?(?:\.sparse)?\.\w+(?:Storage|Tensor)
  | torch\.storage\.(?:Typed|Untyped)Storage
  | torch\.(?:Size|Tensor|device)
  | torch\._utils\._rebuild_\w+
  | torch\._tensor\._rebuild_from_type_v2
  | torch\.nn\.parameter\.Parameter
  | torch\.serialization\._get_layout
  | torch\.per_\w+
  | torch\.(?:u?int\d+|float\d+\w*|bfloat16|bool|complex\d+|bits\w+|q?u?int\d+\w*)
)$""", re.VERBOSE)
_MAX_PICKLE_BYTES = 64 * 2**20  # the object pickle of a checkpoint is small; tensors are not in it


def check_pickle_checkpoint(path: Path) -> None:
    """ModelError unless ``path`` is a PyTorch checkpoint the weights-only loader accepts:
    a zip archive (torch.save since 1.6) or a legacy pickle stream, naming only the globals
    torch allows. The message is the one the loader gives."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(2)
    except OSError as exc:
        raise ModelError(f"cannot read {path}: {exc.strerror}",
                         "check that the file exists and is readable") from None
    if size == 0:
        raise ModelError(f"{path} is empty (0 bytes)", DAMAGED_HINT)
    is_zip = zipfile.is_zipfile(path)
    if not is_zip and not (head[:1] == b"\x80" and head[1:2] in b"\x02\x03\x04\x05"):
        raise ModelError(f"{path} is not a PyTorch checkpoint (neither a zip archive nor a "
                         f"pickle; it starts with {head!r})",
                         f"{DAMAGED_HINT}; a download that failed is often a saved HTML page")
    for name in pickle_globals(path, is_zip):
        if not ALLOWED.match(name):
            raise code_error(path, name)


def code_error(path: Path, name: str) -> ModelError:
    return ModelError(f"{path} contains pickled code (it would call {name}) and was not "
                      "loaded; none of its code was executed", CODE_HINT)


def pickle_globals(path: Path, is_zip: bool) -> list[str]:
    """The ``module.name`` of every global the checkpoint's pickles name, in order."""
    try:
        if is_zip:
            with zipfile.ZipFile(path) as archive:
                member = next((n for n in archive.namelist() if n.endswith("data.pkl")), None)
                if member is None:
                    raise ModelError(f"{path} is a zip archive without data.pkl, not a "
                                     "PyTorch checkpoint", DAMAGED_HINT)
                data = archive.read(member)
        else:
            with open(path, "rb") as fh:
                data = fh.read(_MAX_PICKLE_BYTES)
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise ModelError(f"cannot read {path} as a PyTorch checkpoint: {exc}",
                         DAMAGED_HINT) from None
    try:
        return _globals_in(data, stop_at_tensor_data=not is_zip)
    except ValueError:
        raise ModelError(f"cannot read {path} as a PyTorch checkpoint: the pickle inside is "
                         "damaged or not a checkpoint", DAMAGED_HINT) from None


def _globals_in(data: bytes, stop_at_tensor_data: bool) -> list[str]:
    """Globals of the pickles at the start of ``data``: one in a zip's data.pkl; in the
    legacy format a magic number, protocol, system info and the object, then raw tensor
    bytes (where parsing stops). ValueError for a damaged pickle."""
    stream = io.BytesIO(data)
    names: list[str] = []
    pickles = 0
    while stream.tell() < len(data):
        # Enough of the stack to resolve STACK_GLOBAL: the strings pushed, directly or
        # through the memo.
        strings: list[str] = []
        memo: dict[int, str] = {}
        try:
            for opcode, arg, _ in pickletools.genops(stream):
                name = opcode.name
                if name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8"):
                    strings.append(str(arg))
                elif name in ("BINPUT", "LONG_BINPUT", "PUT") and strings:
                    memo[int(arg)] = strings[-1]
                elif name == "MEMOIZE" and strings:
                    memo[len(memo)] = strings[-1]
                elif name in ("BINGET", "LONG_BINGET", "GET") and int(arg) in memo:
                    strings.append(memo[int(arg)])
                elif name == "GLOBAL":
                    names.append(str(arg).replace(" ", ".", 1))
                elif name == "STACK_GLOBAL":
                    names.append(f"{strings[-2]}.{strings[-1]}" if len(strings) >= 2
                                 else "an unknown function")
        except (ValueError, EOFError):
            if pickles and stop_at_tensor_data:
                break  # past the object pickle: tensor bytes follow
            raise ValueError("damaged pickle") from None
        pickles += 1
        if not stop_at_tensor_data or pickles >= 5:
            break
    return names
