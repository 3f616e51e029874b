"""The run configuration: every setting of a fine-tuning run (the seeds' names), its bounds, and the one
check of them."""

from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path

from ftcore import options as opt
from ftcore.errors import UserError
from ftcore.training import COMPILE_CHOICES, COMPILE_SAID

from cellfm_ft.data import INPUT_KINDS


@dataclass
class RunConfig:
    """One fine-tuning run. Numbers carry their bounds (checked for config files by ftcore.config, and for
    every caller by `check_settings`): a NaN or a 0 batch size is one line naming the key, never a crash."""

    data: str = ""
    label_key: str = "cell_type"
    checkpoint: str = ""
    output: str = "outputs/cellfm"
    donor_key: str | None = None  # hold out donors for the test set (else random cells per label)
    test_donors: list[str] = field(default_factory=list)
    test_size: float = field(default=0.2, metadata=opt.bounds(gt=0, lt=1))
    # of the training donors (or cells): the validation split that picks the best epoch
    val_fraction: float = field(default=0.1, metadata=opt.bounds(gt=0, lt=1))
    val_donors: list[str] = field(default_factory=list)
    gene_key: str | None = None  # var column holding gene symbols (default: var_names)
    layer: str | None = None  # X (default), a .layers key, or "raw"
    input_kind: str = "auto"  # auto | counts | log
    vocab: str | None = None  # restrict the genes to this list (one per line); default: every data gene
    checkpoint_vocab: bool = False  # restrict the genes to <checkpoint>.genes.txt (the checkpoint's vocabulary)
    config: str = "80m"  # named architecture the checkpoint must match (80m | tiny)
    trust_checkpoint: bool = False
    strategy: str = "cls_encoder"  # cls_encoder (the seed's rule) | cls_only | full
    allow_unloaded_frozen: bool = False  # freeze parameters the checkpoint did not supply (at their init) anyway
    # The same network (the checkpoint's architecture, strategy and head), its weights NOT loaded: every
    # parameter starts at its random initialisation. The yardstick for what the checkpoint's weights add.
    from_scratch: bool = False
    head: str = "tutorial"  # tutorial (the annotation tutorial's head) | mlp (CellFM-torch's cls + reconstruction)
    # --head mlp: weight of the masked-reconstruction term (CellFM-torch: 1)
    recon_weight: float = field(default=1.0, metadata=opt.bounds(ge=0))
    # --head mlp: share of a cell's genes hidden for the reconstruction (CellFM-torch: 0.5)
    mask_ratio: float = field(default=0.5, metadata=opt.bounds(gt=0, lt=1))
    mask_layers: str = "auto"  # auto (from the checkpoint) | upper (pretraining model) | all (tutorial Backbone)
    include: list[str] = field(default_factory=list)  # extra trainable patterns
    exclude: list[str] = field(default_factory=list)  # extra frozen patterns
    batch_size: int = field(default=16, metadata=opt.bounds(ge=1))  # per process (torchrun: x processes)
    epochs: int = field(default=10, metadata=opt.bounds(ge=0))  # 0: as many as max_steps needs
    max_steps: int | None = field(default=None, metadata=opt.bounds(ge=1))
    # AdamW: a rate above 1 is a typo (1e4 for 1e-4) and overflows the update; decay likewise
    lr: float = field(default=1e-4, metadata=opt.bounds(gt=0, le=1))
    weight_decay: float = field(default=0.01, metadata=opt.bounds(ge=0, le=1))
    warmup_steps: int = field(default=0, metadata=opt.bounds(ge=0))
    nonz_len: int | None = field(default=None, metadata=opt.bounds(ge=1))  # default: the config's
    seed: int = field(default=0, metadata=opt.bounds(ge=0, lt=opt.SEED_LIMIT))
    device: str = "auto"
    compile: str = "auto"  # torch.compile of the training step: auto (default: on CUDA, off on CPU) | on | off | graphs
    ckpt_every_steps: int | None = field(default=None, metadata=opt.bounds(ge=1))
    baseline: bool = False  # also fit a logistic regression on the same split
    progress: bool = True
    # --output holds a run of other settings: delete its files and start fresh (ftcore.rundir; else refused)
    overwrite: bool = False


CONFIG_ONLY = ("weight_decay", "warmup_steps", "nonz_len")  # RunConfig keys `cellfm-ft train` has no flag for


def _flag(name: str) -> str:
    """How a message names a setting: its flag, or its config-file key where it has no flag."""
    return repr(name) if name in CONFIG_ONLY else f"--{name.replace('_', '-')}"


def check_settings(cfg: RunConfig) -> RunConfig:
    """Every number, choice and path of a run, checked before anything is read or written (one line naming the
    flag); paths come back with `~` and $VARS expanded."""
    hints = typing.get_type_hints(RunConfig)
    for f in dataclasses.fields(RunConfig):
        limits = f.metadata.get("ftcore_bounds")
        value = getattr(cfg, f.name)
        if limits and value is not None:
            kind = int if int in (typing.get_args(hints[f.name]) or (hints[f.name],)) else float
            opt.check_number(_flag(f.name), value, kind, **limits)
    if cfg.epochs == 0 and cfg.max_steps is None:
        raise UserError("--epochs is 0 and --max-steps is not set: nothing would train; give --epochs 1 or more, "
                        "or --max-steps N")
    opt.device("--device")(cfg.device)
    if cfg.compile not in COMPILE_CHOICES:
        raise UserError(f"unknown --compile {cfg.compile!r}; choose {COMPILE_SAID}")
    if cfg.input_kind not in INPUT_KINDS:
        raise UserError(f"unknown --input-kind {cfg.input_kind!r}; choose one of: {', '.join(INPUT_KINDS)}")
    if not cfg.data:
        raise UserError("no data file given; pass --data FILE.h5ad (or a preset such as --testcase)")
    if not cfg.checkpoint:
        raise UserError("no checkpoint given; pass --checkpoint CellFM_80M_weight.ckpt (MindSpore, safetensors or .pth)")
    if not str(cfg.label_key).strip():
        raise UserError("--label-key is empty; name the obs column with the cell labels")
    for key in ("donor_key", "gene_key", "layer"):
        if getattr(cfg, key) is not None and not str(getattr(cfg, key)).strip():
            raise UserError(f"{_flag(key)} is empty; leave it out or name an obs/var column")
    data = opt.check_input_file("--data", cfg.data, ".h5ad file")
    checkpoint = _checkpoint_path("--checkpoint", cfg.checkpoint)
    vocab = opt.check_input_file("--vocab", cfg.vocab, "gene list") if cfg.vocab else None
    output = opt.check_output_dir("--output", cfg.output)  # an input file named as the run dir is refused here too
    overlap = sorted(set(cfg.test_donors) & set(cfg.val_donors))
    if overlap:
        raise UserError(f"donor(s) {', '.join(map(repr, overlap))} are in both --test-donors and --val-donors; a donor "
                        "tests or validates, not both")
    return dataclasses.replace(cfg, data=str(data), checkpoint=str(checkpoint), output=str(output),
                               vocab=str(vocab) if vocab else cfg.vocab)


def _checkpoint_path(flag: str, path: str) -> Path:
    """A checkpoint to read: exists and is a file (an empty file is left to the reader, which says so)."""
    expanded = Path(os.path.expandvars(str(path).strip())).expanduser()
    if not expanded.is_file():
        return opt.check_input_file(flag, path, "checkpoint")
    with open(expanded, "rb") as fh:
        head = fh.read(8)
    if head == b"\x89HDF\r\n\x1a\n":  # an .h5ad: the data given where the weights go
        raise UserError(f"{flag} {expanded} is an HDF5 file (an .h5ad data set), not a checkpoint; were the data and the "
                        "checkpoint swapped? (--data takes the .h5ad)")
    if head[:1] in (b"{", b"["):
        raise UserError(f"{flag} {expanded} is a JSON text file (a convert report?), not a checkpoint; pass the "
                        ".safetensors file `cellfm-ft convert` wrote beside it")
    return expanded
