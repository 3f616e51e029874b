"""ftcore: the shared core of the fine-tuning toolkit.

One place for what every model package needs: reading checkpoints of every format the
models meet, renaming and partially loading weights with a report, freezing strategies,
the training loop, the self-describing model file (ftcore.artefact), metrics, and user-facing
error handling.
"""

from ftcore.errors import UserError
from ftcore.checkpoint import read_checkpoint, read_state_dict
from ftcore.mapping import KeyMap, Rename, MINDSPORE_RENAMES
from ftcore.loading import LoadReport, load_partial
from ftcore.freezing import FreezeReport, apply_freezing
from ftcore.training import Trainer, TrainConfig
from ftcore.artefact import load_model, save_model

__all__ = [
    "UserError",
    "read_checkpoint",
    "read_state_dict",
    "KeyMap",
    "Rename",
    "MINDSPORE_RENAMES",
    "LoadReport",
    "load_partial",
    "FreezeReport",
    "apply_freezing",
    "Trainer",
    "TrainConfig",
    "save_model",
    "load_model",
]
__version__ = "0.1.0"
