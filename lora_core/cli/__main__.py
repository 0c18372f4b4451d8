"""``python -m lora_core.cli``: the same as the ``lora-train`` command."""

import sys

from lora_core.cli import main

sys.exit(main())
