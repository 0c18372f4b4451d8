"""An optimizer named by its import path is judged from its source, never imported."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from lora_core.checks.optimizer import installed_optimizer_problems
from lora_core.profile import OptimizerSection

_MODULE = '''
import torch
from torch.optim import SGD


class Good(torch.optim.Optimizer):
    def __init__(self, params, lr=1e-3, gamma=0.5):
        super().__init__(params, {"lr": lr})


class Derived(SGD):
    pass


class Plain:
    def __init__(self, params, lr=1e-3):
        pass


def make(params, lr=1e-3):
    return SGD(params, lr)
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "user_opt_26.py").write_text(_MODULE, encoding="utf-8")
    (tmp_path / "user_star_26.py").write_text("from user_opt_26 import *\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def _messages(path: str, *args: str) -> list[str]:
    opt = OptimizerSection(optimizer_type=path, optimizer_args=list(args))
    return [p.message for p in installed_optimizer_problems(opt)]


def test_what_the_source_shows_is_judged_as_the_run_would(user_module):
    assert _messages("user_opt_26.Good", "gamma=0.9") == []
    assert "takes no argument 'momentun'" in _messages("user_opt_26.Good", "momentun=1")[0]
    # SGD's own signature, inherited through torch.optim's re-export
    assert _messages("user_opt_26.Derived", "momentum=0.9") == []
    assert "takes no argument 'betas'" in _messages("user_opt_26.Derived", "betas=0.9,0.99")[0]
    assert "user_opt_26.Plain is a class, not a torch optimizer class" \
        in _messages("user_opt_26.Plain")[0]
    assert "is a function, not a torch optimizer" in _messages("user_opt_26.make")[0]
    assert "is nothing, not a torch optimizer" in _messages("user_opt_26.Missing")[0]


def test_what_the_source_cannot_tell_is_left_to_the_run(user_module):
    """A star import may bind anything: no verdict here (the run imports the class before
    any model loads and says the same words)."""
    assert _messages("user_star_26.Missing") == []
    assert _messages("user_star_26.Good", "nonsense=1") == []


def test_the_import_path_check_imports_nothing(user_module):
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(user_module)!r})
        from lora_core.checks.optimizer import installed_optimizer_problems
        from lora_core.profile import OptimizerSection
        for path in ("user_opt_26.Good", "user_opt_26.Plain", "torch.optim.RAdam"):
            installed_optimizer_problems(OptimizerSection(optimizer_type=path))
        print([m for m in ("torch", "user_opt_26") if m in sys.modules])
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120)
    assert out.stdout.strip() == "[]"
