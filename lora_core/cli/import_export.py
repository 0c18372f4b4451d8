"""Settings from and for other tools: ``import`` makes a profile from an sd-scripts command
or TOML, a LoRA Easy Training Scripts or kohya_ss file or a LoRA's metadata; ``export``
writes what sd-scripts runs for a profile."""

from __future__ import annotations

import sys
from pathlib import Path

from lora_core.errors import LoraError


def cmd_import(source: str, output: Path | None) -> int:
    from lora_core.importing import import_source
    from lora_core.profile_io import save_profile_data

    if source == "-":
        from lora_core.importing import MAX_SOURCE_BYTES

        # read one character past the limit, so a huge paste is refused at once
        result = import_source("standard input", sys.stdin.read(MAX_SOURCE_BYTES + 1))
    else:
        result = import_source(Path(source))
    report = result.render()
    if output is None:
        import tomli_w

        sys.stdout.write(tomli_w.dumps(result.data))
        sys.stderr.write("\n" + report)
        return 0
    if Path(output).exists():
        raise LoraError(f"{output} exists already", "choose another name; an import never "
                        "replaces a file")
    written = result.write_beside(Path(output))  # the dataset_config LETS subsets need
    save_profile_data(result.data, Path(output))
    report = result.render()
    print(report + "".join(f"\nWrote {path}." for path in written)
          + f"\nWrote {output}; `lora-train check {output}` checks it, `lora-tui "
          f"{output}` opens it.")
    return 0


def cmd_export(profile_path: Path, folder: Path) -> int:
    from lora_core.importing.export import export_sd_scripts, family_script
    from lora_core.profile_load import load_profile

    profile = load_profile(profile_path)
    written = export_sd_scripts(profile, folder)
    script, note = family_script(profile)
    print("Wrote:\n" + "".join(f"  {path}\n" for path in written) + (f"Note: {note}\n" if note
                                                                     else "")
          + f"Run it with: bash {folder / 'command.sh'} (or command.bat on Windows) in "
          f"sd-scripts' folder, or: accelerate launch {script} --config_file "
          f"{folder / 'config.toml'}")
    return 0


def add_parsers(sub) -> None:
    imported = sub.add_parser("import", help="make a profile from an sd-scripts command line "
                              "or TOML, a LoRA Easy Training Scripts or kohya_ss file, or a "
                              "LoRA's metadata")
    imported.add_argument("source", metavar="SOURCE", help="a file, or - for standard input "
                          "(a pasted command)")
    imported.add_argument("-o", "--output", type=Path, metavar="PROFILE.toml",
                          help="write the profile here (default: print it)")
    imported.set_defaults(handler=lambda args: cmd_import(args.source, args.output))
    export = sub.add_parser("export", help="write what sd-scripts runs for a profile: config "
                            "and dataset TOMLs and the command line")
    export.add_argument("profile", type=Path)
    export.add_argument("--sd-scripts", dest="folder", type=Path, required=True,
                        metavar="DIR", help="the folder to write into")
    export.set_defaults(handler=lambda args: cmd_export(args.profile, args.folder))
