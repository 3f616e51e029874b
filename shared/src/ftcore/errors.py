"""User-facing errors: one line that names the problem and the fix, and a CLI wrapper."""

from __future__ import annotations

import contextlib
import functools
import sys
from typing import Callable, Iterator


class UserError(Exception):
    """A problem with the user's input or environment that the user can fix.

    The message is one line: what is wrong, where, and what to do about it. CLIs print it
    without a traceback and exit non-zero (see `cli_main`).
    """


def cli_main(fn: Callable[..., int | None] | None = None, *, batch_size_hint: str = "--batch-size"):
    """Wrap a CLI entry point: UserError becomes one line on stderr, exit 2; a CUDA OOM that no `oom_advice`
    translated first, the same kind of line (`out_of_memory_message`), exit 3.

    Whatever the command claimed with `ftcore.io.claim_outputs` and created is removed again when it
    fails, so a failed run leaves nothing half-written behind.

    `batch_size_hint` is how this CLI sets the batch size, named in the OOM advice: a flag
    (`@cli_main(batch_size_hint="--batch_size")`) or a config key. Plain `@cli_main` means
    `--batch-size`. Set FTCORE_TRACEBACK=1 to see the full traceback instead (for bug reports).
    """
    if fn is None:
        return functools.partial(cli_main, batch_size_hint=batch_size_hint)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs) -> int:
        import os

        from ftcore.io import output_guard

        previous = _raise_on_sigterm()
        try:
            # a failure removes what the command created (ftcore.io.claim_outputs); Ctrl-C and SIGTERM keep
            # the complete checkpoints, for resuming
            with output_guard(keep_on=(KeyboardInterrupt, Terminated, SystemExit)):
                code = fn(*args, **kwargs)
            return 0 if code is None else int(code)
        except UserError as err:
            if os.environ.get("FTCORE_TRACEBACK"):
                raise
            print(f"error: {err}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
        except Terminated:
            print("terminated (SIGTERM): stopped before finishing; complete checkpoints are kept", file=sys.stderr)
            return 143
        except Exception as err:  # noqa: BLE001 - only CUDA OOM is translated, the rest re-raised
            if is_out_of_memory(err) and not os.environ.get("FTCORE_TRACEBACK"):
                print(f"error: {out_of_memory_message(batch_size_hint)}", file=sys.stderr)
                return 3
            raise
        finally:
            if previous is not None:  # called in-process (tests, a demo calling train): the caller's handler again
                import signal

                signal.signal(signal.SIGTERM, previous)

    return wrapper


def is_out_of_memory(err: BaseException) -> bool:
    """torch.cuda.OutOfMemoryError (matched by name: this module does not import torch)."""
    return type(err).__name__ == "OutOfMemoryError"


def out_of_memory_message(batch_size_flag: str = "--batch-size", batch_size: int | None = None) -> str:
    """THE one line a CUDA out-of-memory error becomes: what happened and the flag to lower.

    `batch_size_flag` is how the CLI sets the batch size (its own spelling: `--batch-size`, the guides'
    `--batch_size`, or a config key); `batch_size`, when known, is the size that ran out, and the advice
    halves it.
    """
    if batch_size and batch_size > 1:
        return (f"CUDA ran out of memory at batch size {batch_size}; lower {batch_size_flag} "
                f"(e.g. {batch_size} -> {batch_size // 2}), or run on a GPU with more memory")
    if batch_size == 1:
        return ("CUDA ran out of memory at batch size 1; use a smaller model (or shorter sequences), "
                "or run on a GPU with more memory")
    return (f"CUDA ran out of memory; lower {batch_size_flag} (or the model size / sequence length), "
            "or run on a GPU with more memory")


@contextlib.contextmanager
def oom_advice(batch_size_flag: str = "--batch-size", batch_size: int | None = None) -> Iterator[None]:
    """Around a CLI command: a CUDA out-of-memory error becomes a UserError (one `error:` line, exit 2 under
    `cli_main`) naming the batch-size flag to lower and, when known, the batch size that ran out.

        with oom_advice("--batch_size", args.batch_size):
            run(args)

    FTCORE_TRACEBACK=1 lets the original error through, for bug reports.
    """
    import os

    try:
        yield
    except Exception as err:  # noqa: BLE001 - only CUDA OOM is translated, the rest re-raised
        if not is_out_of_memory(err) or os.environ.get("FTCORE_TRACEBACK"):
            raise
        raise UserError(out_of_memory_message(batch_size_flag, batch_size)) from None


class Terminated(BaseException):
    """SIGTERM arrived (`docker stop`, a batch scheduler): unwinds like Ctrl-C, so files are closed."""


def _raise_on_sigterm():
    """Turn SIGTERM into `Terminated` in the main thread.

    Python's default for SIGTERM is to die at once without unwinding; as a container's PID 1 it
    is ignored altogether, so `docker stop` waits out its timeout and kills (exit 137).
    """
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):  # noqa: ARG001 - signal handler signature
        raise Terminated()

    return signal.signal(signal.SIGTERM, handler)
