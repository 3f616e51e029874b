"""Pieces every package CLI shares: a parser whose errors are one line, `--version`, `--allow-unloaded-frozen`,
`--trust-checkpoint`, `--seed`, `--device` (spelled in the CLI's style: `add_trust_checkpoint(p, SNAKE)`).

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


# --- shared argument groups ------------------------------------------------------------------------
# A CLI spells its flags in one style: KEBAB (`--batch-size`, most CLIs) or SNAKE (`--batch_size`, as the
# user's guide for var-st does). The groups below take the style, so each flag is written once here and
# reads like its neighbours in every CLI.
KEBAB, SNAKE = "kebab", "snake"

TRUST_CHECKPOINT_HELP = ("allow torch files that need full unpickling, which can run code: only for files you trust "
                         "(safetensors, MindSpore files and torch files of tensors, numbers and argparse / omegaconf "
                         "configs load without it)")


def flag_names(words: str, style: str = KEBAB) -> list[str]:
    """'trust checkpoint' -> ['--trust-checkpoint'] (KEBAB) or ['--trust_checkpoint', '--trust-checkpoint'] (SNAKE).

    A SNAKE CLI accepts the toolkit's kebab spelling too: it is the one every other CLI and README uses."""
    if style not in (KEBAB, SNAKE):
        raise ValueError(f"style {style!r}: use ftcore.cli.KEBAB or ftcore.cli.SNAKE")
    parts = words.split()
    kebab = "--" + "-".join(parts)
    return [kebab] if style == KEBAB or len(parts) == 1 else ["--" + "_".join(parts), kebab]


def add_trust_checkpoint(parser, style: str = KEBAB, *, default: bool | None = False) -> None:
    """`--trust-checkpoint`: read checkpoints that need full unpickling (ftcore.checkpoint's trust_pickle).

    `default=None` leaves "not given" distinguishable (a config file may set it; the flag then stores True)."""
    names = flag_names("trust checkpoint", style)
    if default is False:
        parser.add_argument(*names, dest="trust_checkpoint", action="store_true", help=TRUST_CHECKPOINT_HELP)
    else:
        parser.add_argument(*names, dest="trust_checkpoint", action="store_const", const=True, default=default,
                            help=TRUST_CHECKPOINT_HELP)


def add_seed(parser, what: str, *, default: int | None = None, said: str | None = None, style: str = KEBAB) -> None:
    """`--seed N` (0 <= N < 2**32, checked by ftcore.options.seed); `what` it seeds, in the help.

    `default` is argparse's (None: not given, so a config file's seed applies); `said` is the default the
    help states when it is not argparse's (the config's, e.g. "42" or "experiment.seed of the config")."""
    from ftcore import options as opt

    shown = said if said is not None else default
    help = f"seed of {what}" + (f" (default {shown}; 0 <= seed < 2**32)" if shown is not None else " (0 <= seed < 2**32)")
    (name,) = flag_names("seed", style)
    parser.add_argument(name, dest="seed", type=opt.seed(name), default=default, help=help)


def add_device(parser, *, default: str | None = "auto", said: str | None = None, style: str = KEBAB) -> None:
    """`--device auto|cpu|cuda|cuda:N|mps` (checked by ftcore.options.device, with a did-you-mean).

    `default` / `said` as in add_seed: None leaves the config file's device in force."""
    from ftcore import options as opt

    shown = said if said is not None else default
    (name,) = flag_names("device", style)
    parser.add_argument(name, dest="device", type=opt.device(name), default=default,
                        help="where to run: auto (CUDA when present, else CPU), cpu, cuda, cuda:N or mps"
                             + (f" (default {shown})" if shown is not None else ""))
