"""An ``accelerate launch train_network.py ...`` command, as the shell that runs it reads it.

A script (.sh, .bat, .ps1) or a pasted command is first cut into its commands: a line is a
command, ``\\`` / ``^`` / `````` at a line's end continues it on the next line, comment lines
(``#``, ``REM``, ``::``) and blank lines are skipped, and ``&&`` / ``;`` / ``|`` separate
commands on one line. Each command is split into words by its shell's rules: POSIX (quotes of
both kinds, backslash escapes, ``#`` comments to the line's end) or, for a Windows command
(``^`` continuations, ``D:\\`` paths, a .bat/.cmd file), cmd's: only double quotes group,
backslashes are kept. So ``pause`` after the command is a command of its own, and
``--train_data_dir="D:\\My Data\\img"`` is one value.

The command that runs a LoRA training script is the one imported; one that runs another
training script (``sdxl_train.py``, a full fine-tune) is refused by name. ``--config_file``
is followed as sd-scripts follows it: its TOML's options first, the command's own over them.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

from lora_core.errors import LoraError
from lora_core.importing.mapping import ACCELERATE, MAPPED, NO_EFFECT, UNKNOWN, Mapped

LORA_SCRIPTS = ("train_network.py", "sdxl_train_network.py", "flux_train_network.py")
OTHER_SCRIPTS = {"train_db.py": "DreamBooth (a full model)",
                 "sdxl_train.py": "SDXL fine-tuning (a full model)",
                 "fine_tune.py": "fine-tuning (a full model)",
                 "train_textual_inversion.py": "textual inversion (an embedding)",
                 "sdxl_train_textual_inversion.py": "textual inversion (an embedding)",
                 "train_textual_inversion_XTI.py": "textual inversion (an embedding)",
                 "sd3_train_network.py": "SD3 LoRAs",
                 "lumina_train_network.py": "Lumina LoRAs", "flux_train.py": "FLUX fine-tuning",
                 "sd3_train.py": "SD3 fine-tuning", "train_controlnet.py": "ControlNet",
                 "sdxl_train_control_net_lllite.py": "ControlNet-LLLite",
                 "sdxl_train_control_net.py": "ControlNet",
                 "hunyuan_image_train_network.py": "HunyuanImage LoRAs",
                 "anima_train_network.py": "Anima LoRAs", "train_leco.py": "LECO"}
# sd-scripts' options that take several values (nargs="*").
MANY = ("network_args", "optimizer_args", "lr_scheduler_args", "base_weights",
        "base_weights_multiplier", "text_encoder_lr", "block_lr", "network_module_args")
_SEPARATORS = ("&&", "||", ";", "&", "|")
Options = list[tuple[str, Any]]


def is_windows(text: str, suffix: str = "") -> bool:
    return suffix in (".bat", ".cmd") or bool(re.search(r"\^[ \t]*$", text, re.M)) \
        or bool(re.search(r"(?<![\w/])[A-Za-z]:\\", text))


def _is_comment(line: str, windows: bool) -> bool:
    lowered = line.lower()
    return line.startswith(("#", "::", "@::")) or (windows and (
        lowered in ("rem", "@rem") or lowered.startswith(("rem ", "@rem "))))


def logical_lines(text: str, windows: bool, cut: set[int] | None = None) -> list[str]:
    """Each command line of ``text`` as one line: continuations joined, comment and blank
    lines skipped. In a POSIX script a comment or blank line inside a ``\\``-continued
    command ENDS it, as bash reads it (the continuation joins the comment, which runs to the
    line's end): the lines after it are commands of their own, whose indexes go into
    ``cut``. (cmd joins a ``^`` line with the next whatever it is; its comment lines are
    skipped.)"""
    commands: list[str] = []
    current: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or _is_comment(line, windows):
            if current and not windows:
                commands.append(" ".join(current))
                current = []
                if cut is not None:
                    cut.add(len(commands))
            continue
        continued = line.endswith(("\\", "^", "`")) and not line.endswith(":\\")
        if continued:
            line = line[:-1].rstrip()
        current.append(line)
        if not continued:
            commands.append(" ".join(current))
            current = []
    if current:
        commands.append(" ".join(current))
    return commands


def split_cmd(line: str) -> list[str]:
    """Words by cmd's rules (as a program's arguments are read on Windows): whitespace
    separates words outside double quotes, the quotes are removed, backslashes kept."""
    words, current, quoted, started = [], [], False, False
    for char in line:
        if char == '"':
            quoted, started = not quoted, True
        elif char in " \t&|" and not quoted:
            if started:
                words.append("".join(current))
            current, started = [], False
            if char in "&|":  # cmd's command separators
                words.append(char)
        else:
            current.append(char)
            started = True
    if quoted:
        raise LoraError("the command cannot be split into words (a \" is not closed)",
                        "check its quotes: each \" needs its closing one")
    if started:
        words.append("".join(current))
    return words


def _without_comment(line: str) -> str:
    """A POSIX line without its comment: a ``#`` that starts a word, outside quotes."""
    quote, escaped = "", False
    for i, char in enumerate(line):
        if escaped:
            escaped = False
        elif char == "\\" and quote != "'":
            escaped = True
        elif quote:
            quote = "" if char == quote else quote
        elif char in "\"'":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1] in " \t"):
            return line[:i]
    return line


def split_words(line: str, windows: bool, variables: dict[str, str] | None = None,
                missing: set[str] | None = None) -> list[str]:
    """Words as the shell would give them: POSIX rules, or cmd's for a Windows command
    (whose ``%NAME%`` are expanded before, by ``expand_cmd``)."""
    if windows:
        return split_cmd(line)
    return split_posix(_without_comment(line), variables, missing)


_POSIX_VARIABLE = re.compile(r"\$(?:\{([^}]*)\}|([A-Za-z_]\w*)|([0-9@*#?$!-]|\())")


def _expand_posix(line: str, at: int, variables: dict[str, str] | None,
                  missing: set[str] | None) -> tuple[str, int]:
    """The text of the ``$`` at ``at`` (``$NAME`` / ``${NAME}`` from ``variables``; a name
    the script does not set goes into ``missing``) and where the text after it starts."""
    match = _POSIX_VARIABLE.match(line, at)
    if variables is None or match is None:
        return "$", at + 1
    name = match.group(1) if match.group(1) is not None else match.group(2)
    if name is not None and name in variables:
        return variables[name], match.end()
    if missing is not None:
        missing.add("$(…)" if match.group(3) == "(" else match.group(0))
    return match.group(0), match.end()


def split_posix(line: str, variables: dict[str, str] | None = None,
                missing: set[str] | None = None) -> list[str]:
    """Words by POSIX shell rules: whitespace separates words outside quotes; '...' keeps
    everything; "..." keeps everything but a backslash before \\ " $ ` (which it escapes);
    a backslash outside quotes escapes the next character; ``;`` ``&`` ``|`` (runs of them)
    are words of their own; ``$NAME`` / ``${NAME}`` outside single quotes are the script's
    own ``variables`` (one the script does not set goes into ``missing``; its value is not
    split into words again). One pass, linear in the line's length (shlex is quadratic on a
    long word: a 1 MB word took 30 s)."""
    words: list[str] = []
    current: list[str] = []
    started = False
    i, n = 0, len(line)
    while i < n:
        char = line[i]
        if char in " \t\r\n":
            if started:
                words.append("".join(current))
            current, started = [], False
            i += 1
        elif char in ";&|":
            if started:
                words.append("".join(current))
            current, started = [], False
            j = i
            while j < n and line[j] in ";&|":
                j += 1
            words.append(line[i:j])
            i = j
        elif char == "$":
            text, i = _expand_posix(line, i, variables, missing)
            current.append(text)
            started = True
        elif char == "\\":
            if i + 1 < n:  # a backslash ending the line continued it: nothing left
                current.append(line[i + 1])
                started = True
            i += 2
        elif char == "'":
            end = line.find("'", i + 1)
            if end < 0:
                raise _unclosed("'")
            current.append(line[i + 1:end])
            started, i = True, end + 1
        elif char == '"':
            i += 1
            while True:
                j = i
                while j < n and line[j] not in '"\\$':
                    j += 1
                current.append(line[i:j])
                if j >= n:
                    raise _unclosed('"')
                if line[j] == '"':
                    i = j + 1
                    break
                if line[j] == "$":
                    text, i = _expand_posix(line, j, variables, missing)
                    current.append(text)
                    continue
                # a backslash in double quotes escapes only \\ " $ ` (else it stays)
                if j + 1 < n and line[j + 1] in '\\"$`':
                    current.append(line[j + 1])
                    i = j + 2
                else:
                    current.append("\\")
                    i = j + 1
            started = True
        else:
            j = i
            while j < n and line[j] not in " \t\r\n;&|\\'\"$":
                j += 1
            current.append(line[i:j])
            started, i = True, j
    if started:
        words.append("".join(current))
    return words


def _unclosed(quote: str) -> LoraError:
    return LoraError(f"the command cannot be split into words (a {quote} is not closed)",
                     "check its quotes: each \" or ' needs its closing one")


def commands_of(text: str, windows: bool, cut_off: list[list[str]] | None = None,
                unset: list[set[str]] | None = None) -> list[list[str]]:
    """The commands of a script, each as its words, with the script's own variables
    expanded (``NAME=value`` / ``export NAME=value``, cmd's ``set NAME=value`` before their
    use; never the environment of the machine importing it). ``unset`` gets, for each
    command, the variables it uses that the script does not set; ``cut_off`` the commands
    that follow a comment or blank line inside a continued POSIX command (bash ran them as
    commands of their own)."""
    found: list[list[str]] = []
    variables: dict[str, str] = {}
    cut: set[int] = set()
    for index, line in enumerate(logical_lines(text, windows, cut)):
        missing: set[str] = set()
        if windows:
            line = expand_cmd(line, variables, missing)
            _set_cmd(line, variables)
        if index in cut and cut_off is not None:
            cut_off.append(split_words(line, windows, variables, set()))
        # A command pasted into one line keeps its continuation marks between the words.
        line = re.sub(r"(?<=\s)[\\^`](?=\s)", " ", line)
        words: list[str] = []
        for word in split_words(line, windows, variables, missing) + [";"]:
            if word in _SEPARATORS:
                if words:
                    found.append(words)
                    if unset is not None:
                        unset.append(missing)
                    if not windows:
                        _set_posix(words, variables)
                words = []
            else:
                words.append(word)
    return found


_NAME = re.compile(r"[A-Za-z_]\w*$")


def _set_posix(words: list[str], variables: dict[str, str]) -> None:
    """``NAME=value`` words (alone, after ``export``, or before a command) into
    ``variables``."""
    for word in words[1:] if words[0] in ("export", "declare", "readonly") else words:
        name, eq, value = word.partition("=")
        if not eq or not _NAME.match(name):
            break
        variables[name] = value


_CMD_SET = re.compile(r'@?set\s+(?:"([^="]+)=(.*)"|([^="/\s][^=]*)=(.*))$', re.I)
_CMD_VARIABLE = re.compile(r"%%|%([^%\s]+)%|%~?[0-9*]|%~[a-z]+[0-9]", re.I)


def _set_cmd(line: str, variables: dict[str, str]) -> None:
    """cmd's ``set NAME=value`` / ``set "NAME=value"`` (already expanded) into
    ``variables`` (cmd's names are case-insensitive: kept upper-case)."""
    match = _CMD_SET.match(line.strip())
    if match:
        name = match.group(1) or match.group(3)
        value = match.group(2) if match.group(1) else match.group(4)
        variables[name.strip().upper()] = value


def expand_cmd(line: str, variables: dict[str, str], missing: set[str]) -> str:
    """``%NAME%`` from the script's own ``set``s, as cmd expands a line before reading it;
    ``%%`` is ``%``; a name the script does not set (``%~dp0``, ``%1`` too) goes into
    ``missing``."""
    def one(match: re.Match) -> str:
        if match.group(0) == "%%":
            return "%"
        name = match.group(1)
        if name is not None and name.upper() in variables:
            return variables[name.upper()]
        missing.add(match.group(0))
        return match.group(0)

    return _CMD_VARIABLE.sub(one, line)


def script_name(word: str) -> str:
    return word.replace("\\", "/").rsplit("/", 1)[-1]


def _script_at(words: list[str]) -> int | None:
    return next((i for i, w in enumerate(words) if script_name(w).lower().endswith(".py")),
                None)


def read_command_line(text: str, mapped: Mapped, base: Path | None = None,
                      suffix: str = "") -> Options:
    """The training script's options (accelerate's are accounted for in ``mapped``);
    LoraError for a script that runs another trainer or none. ``base``: the script's folder
    (``--config_file`` is looked for there first, then in the current folder)."""
    windows = is_windows(text, suffix)
    cut_off: list[list[str]] = []
    unset: list[set[str]] = []
    commands = commands_of(text, windows, cut_off, unset)
    lora, others = [], []
    for words in commands:
        at = _script_at(words)
        if at is None:
            continue
        name = script_name(words[at])
        (lora if name in LORA_SCRIPTS else others).append((words, at, name))
    if not lora:
        trainers = [name for _, _, name in others if name in OTHER_SCRIPTS]
        if trainers:
            name = trainers[0]
            raise LoraError(f"this is a command for {name}, which trains "
                            f"{OTHER_SCRIPTS[name]}, not a LoRA",
                            "lora-train imports LoRA training commands: train_network.py, "
                            "sdxl_train_network.py or flux_train_network.py")
        if others:
            raise LoraError(f"this command runs {others[0][2]}, which is no sd-scripts "
                            "training script", "give a command with train_network.py, "
                            "sdxl_train_network.py or flux_train_network.py")
        words = [w for command in commands for w in command]
        if any(w.startswith("--") for w in words):  # bare options (kohya_ss' extra field)
            _refuse_unset(set().union(*unset))
            return parse_options(words, mapped, "sdxl_train_network.py")
        raise LoraError("this command runs no sd-scripts training script",
                        "give a command with train_network.py, sdxl_train_network.py or "
                        "flux_train_network.py")
    if len(lora) > 1:
        raise LoraError(f"this script runs {len(lora)} LoRA trainings "
                        f"({', '.join(name for _, _, name in lora)})",
                        "import one at a time: copy the command of the one you want into a "
                        "file of its own")
    for _, _, name in others:
        mapped.note(name, NO_EFFECT, "another command of the script, not the training: "
                    "run it yourself if it prepares something the training needs")
    words, at, script = lora[0]
    _refuse_unset(unset[next(i for i, c in enumerate(commands) if c is words)])
    for orphan in cut_off:
        if orphan and orphan[0].startswith("--"):
            mapped.note(" ".join(orphan)[:200], NO_EFFECT, "after a comment or blank line "
                        "inside the continued command: bash ends the command at that line, "
                        "so these options were not part of it (bash ran them as a command of "
                        "their own, which fails); move them above the comment to use them")
    if script.startswith(("sdxl", "flux")):
        family = "SDXL" if script.startswith("sdxl") else "Flux.1 / Chroma"
        mapped.note(script, NO_EFFECT, f"the model family ({family}) is read from the model "
                    "file")
    launcher = parse_options(words[:at], None)
    options = parse_options(words[at + 1:], mapped, script)
    options = follow_config_file(options, mapped, base)
    for name, value in launcher:
        if name in ("num_processes", "gpu_ids"):
            # lora-train launches the processes itself ([training] num_processes / gpu_ids).
            options.insert(0, (name, value))
        else:
            mapped.note(f"accelerate --{name}", NO_EFFECT, ACCELERATE.get(name) or
                        "an option of accelerate itself", value)
    return options


def _refuse_unset(missing: set[str]) -> None:
    if missing:
        raise LoraError(f"the training command uses {', '.join(sorted(missing))}, which "
                        "the script does not set (a variable of the shell it ran in, which "
                        "lora-train cannot see)", "write the value into the command, or set the "
                        "variable in the script before the command (NAME=value, or "
                        "set NAME=value in a .bat), and import it again")


def parse_options(words: list[str], mapped: Mapped | None, script: str = "") -> Options:
    """``--key=value``, ``--key value``, ``--flag`` (True) and several values after the
    options that take several. A word that is no option's value is noted in ``mapped``
    (sd-scripts stops at it: "unrecognized arguments"); None: ignored (``launch``).
    With ``script``, each name is read as that script's parser reads it: an abbreviation
    of one of its options is that option; of several, LoraError naming them."""
    from lora_core.importing.sd_scripts_args import resolve

    options: Options = []
    i = 0
    while i < len(words):
        word = words[i]
        i += 1
        if not word.startswith("--"):
            if mapped is not None:
                mapped.note(word, UNKNOWN, "a word that is no option's value: sd-scripts "
                            "stops at it (unrecognized arguments)")
            continue
        name, eq, value = word[2:].partition("=")
        name = name.replace("-", "_")
        if script:
            name, candidates = resolve(name, script)
            if candidates:
                raise LoraError(f"--{name} is ambiguous in {script}: it could be "
                                + ", ".join(f"--{c}" for c in candidates) + " (sd-scripts "
                                "stops: \"ambiguous option\")",
                                "write the option's full name")
        if eq:
            options.append((name, value))
            continue
        values = []
        while i < len(words) and not words[i].startswith("--"):
            values.append(words[i])
            i += 1
            if name not in MANY:
                break
        if name in MANY:
            options.append((name, values))
        else:
            options.append((name, values[0] if values else True))
    return options


def follow_config_file(options: Options, mapped: Mapped, base: Path | None) -> Options:
    """sd-scripts' ``--config_file``: the TOML's options (its tables' names mean nothing),
    then the command's own, which win. The file is looked for in the script's folder, then
    the current one; LoraError when it is in neither."""
    from lora_core.importing.sources import flatten

    given = [value for name, value in options if name == "config_file"]
    if not given:
        return options
    written = str(given[-1])
    tried = []
    for folder in ([base] if base is not None else []) + [Path.cwd()]:
        path = Path(written) if Path(written).is_absolute() else folder / written
        if path.suffix == "" and not path.is_file():
            path = path.with_suffix(".toml")  # sd-scripts adds .toml when it is left out
        tried.append(str(path))
        if path.is_file():
            break
    else:
        raise LoraError(f"the command's --config_file {written} was not found (looked for "
                        f"{' and '.join(tried)})", "import the script from its own folder, "
                        "or import the TOML itself: it holds the training's settings")
    # The import's own guards: its size cap, its decoding (Shift-JIS, UTF-16...), nesting.
    from lora_core.importing import _refuse_size, decode

    try:
        _refuse_size(f"the command's --config_file {path}", path.stat().st_size)
        data = tomllib.loads(decode(path.read_bytes(), f"the command's --config_file {path}"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise LoraError(f"the command's --config_file {path} cannot be read ({exc})",
                        "check the file") from None
    except RecursionError:
        raise LoraError(f"the command's --config_file {path} is nested too deeply to be a "
                        "settings file", "give sd-scripts' --config_file TOML") from None
    mapped.note("config_file", MAPPED, f"read {path}; the command's own options win over "
                "the file's, as in sd-scripts", written)
    mapped.lines[-1].where = "the file's options, each listed here"
    return flatten(data) + [(n, v) for n, v in options if n != "config_file"]
