"""Pieces every package CLI shares: a parser whose errors are one line, `--version`, `--allow-unloaded-frozen`.

Typed option values (finite numbers in range, seeds, devices, paths) live in `ftcore.options`.
"""

from __future__ import annotations

import argparse
from importlib import metadata


class ArgumentParser(argparse.ArgumentParser):
    """argparse with the toolkit's error shape: ONE line, `error: <prog>: <what>; see <prog> --help`, exit 2.

    (argparse prints the whole usage block first, which buries the cause.) Sub-commands made with
    `add_subparsers` inherit the class.
    """

    def error(self, message: str):  # noqa: D401 - argparse's hook
        message = " ".join(message.split())
        self.exit(2, f"error: {self.prog}: {message}; see {self.prog} --help\n")

    def _get_values(self, action, arg_strings):
        # `--lr=--`: argparse strips the '--' and stores [] without calling the type check, and the command
        # crashes later; the option's own type check gets to refuse it instead (found by var-st's fuzzing)
        if action.nargs is None and arg_strings == ["--"]:
            return self._get_value(action, "--")
        return super()._get_values(action, arg_strings)


def version_string(dist: str) -> str:
    """'var-st 0.1.0 (ftcore 0.1.0, torch 2.13.0, python 3.11.7)': what a bug report needs."""
    import platform

    def ver(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"

    return f"{dist} {ver(dist)} (ftcore {ver('ftcore')}, torch {ver('torch')}, python {platform.python_version()})"


def add_version(parser: argparse.ArgumentParser, dist: str) -> None:
    """`<prog> --version` prints the installed distribution's version and the core's, then exits 0."""
    parser.add_argument("--version", action="version", version=version_string(dist))


def add_allow_unloaded_frozen(parser) -> None:
    """`--allow-unloaded-frozen`: freeze tensors the checkpoint did not supply (ftcore.freezing), on purpose."""
    parser.add_argument("--allow-unloaded-frozen", dest="allow_unloaded_frozen", action="store_true",
                        help="freeze parameters even where the checkpoint supplied no weights for them (they stay "
                             "at random init for the whole run); without it such a run is refused")


def add_compile(parser, flag: str = "--compile", default: str = "auto", why: str = "") -> None:
    """`--compile auto|on|off|graphs`: torch.compile of the training step (TrainConfig.compile; auto = on CUDA only).

    `default` is the package's own default (written in the help), `why` a reason when it is not auto."""
    from ftcore.training import COMPILE_CHOICES

    said = {"graphs": "graphs (default: compiled with CUDA graphs on CUDA, off on CPU), auto (compiled on CUDA), on or off",
            "auto": "auto (default: on CUDA, off on CPU), on or off",
            "off": "off (default), on, or auto (on CUDA, off on CPU)",
            "on": "on (default), off, or auto (on CUDA, off on CPU)"}[default]
    parser.add_argument(flag, dest="compile", choices=list(COMPILE_CHOICES), default=None,
                        help=f"torch.compile the training step: {said}; graphs = auto with CUDA graphs (fewer "
                             f"kernel launches; helps steps of many small kernels); compiling takes up to a minute "
                             f"at the start, then each step runs faster (1.5-2x on an H200){why}")


def add_copy_config(sub, templates: dict[str, object], what: str) -> None:
    """`<prog> copy-config DIR [--overwrite]`: write the package's template files (name -> text or Path) to DIR.

    These are the files a user's workflow edits (a training YAML, a split TOML): copied out, edited, passed
    back with the command's config flag. `what` says what they are for, in the sub-command's help.
    """
    from ftcore.options import output_dir

    p = sub.add_parser("copy-config", help=f"write the editable templates ({', '.join(templates)}) to DIR: {what}")
    p.add_argument("dir", metavar="DIR", type=output_dir("DIR"), help="where to write them (created if missing)")
    p.add_argument("--overwrite", action="store_true", help="replace files of the same names already in DIR")
    p.set_defaults(copy_config_templates=templates)


def copy_config(args) -> list:
    """Run `copy-config` (see add_copy_config): every target checked first, then every file written, or none."""
    from pathlib import Path

    from ftcore.errors import UserError
    from ftcore.io import atomic_write_text, check_output_dir, claim_outputs

    dest = Path(args.dir)
    texts = {name: (src.read_text() if isinstance(src, Path) else str(src))
             for name, src in args.copy_config_templates.items()}
    existing = [name for name in texts if (dest / name).exists()]
    if existing and not args.overwrite:
        raise UserError(f"{dest} already has {', '.join(existing)}; pick another DIR, or pass --overwrite to "
                        "replace them")
    check_output_dir(dest, flag="DIR")
    targets = [dest / name for name in texts]
    claim_outputs(*targets)
    for target, text in zip(targets, texts.values()):
        atomic_write_text(target, text)
        print(f"wrote {target}")
    return targets
