"""The one CUDA out-of-memory translation: ftcore.errors.oom_advice / out_of_memory_message, also through
cli_main (one `error:` line naming the CLI's batch-size flag, nothing left behind)."""

from __future__ import annotations

import pytest
import torch

from ftcore.errors import UserError, cli_main, is_out_of_memory, oom_advice, out_of_memory_message


def _oom():
    raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


@pytest.fixture(autouse=True)
def no_traceback(monkeypatch):
    monkeypatch.delenv("FTCORE_TRACEBACK", raising=False)


def test_torch_oom_is_recognised():
    assert is_out_of_memory(torch.cuda.OutOfMemoryError("x"))
    assert not is_out_of_memory(RuntimeError("CUDA error: device-side assert triggered"))


@pytest.mark.parametrize("flag, size, line", [
    ("--batch-size", 16, "CUDA ran out of memory at batch size 16; lower --batch-size (e.g. 16 -> 8), "
                         "or run on a GPU with more memory"),
    ("--batch_size", 5, "CUDA ran out of memory at batch size 5; lower --batch_size (e.g. 5 -> 2), "
                        "or run on a GPU with more memory"),
    ("training.batch_size=N", None, "CUDA ran out of memory; lower training.batch_size=N (or the model size / "
                                    "sequence length), or run on a GPU with more memory"),
    ("--batch-size", 1, "CUDA ran out of memory at batch size 1; use a smaller model (or shorter sequences), "
                        "or run on a GPU with more memory"),
])
def test_message_names_the_flag_and_halves_the_size(flag, size, line):
    assert out_of_memory_message(flag, size) == line
    with pytest.raises(UserError) as caught:
        with oom_advice(flag, size):
            _oom()
    assert str(caught.value) == line
    assert caught.value.__suppress_context__  # no "During handling ..." chain behind the one line


def test_other_errors_pass_through():
    with pytest.raises(ZeroDivisionError):
        with oom_advice("--batch-size", 8):
            raise ZeroDivisionError("a real bug")
    with oom_advice("--batch-size", 8):
        pass  # nothing raised, nothing changed


def test_traceback_opt_in_keeps_the_original(monkeypatch):
    monkeypatch.setenv("FTCORE_TRACEBACK", "1")
    with pytest.raises(torch.cuda.OutOfMemoryError):
        with oom_advice("--batch-size", 8):
            _oom()


def test_through_cli_main_one_line_exit_2_nothing_left(tmp_path, capsys):
    from ftcore.io import claim_outputs

    out = tmp_path / "run"

    @cli_main
    def main(argv):
        claim_outputs(out)
        out.mkdir()
        (out / "half.pt").write_bytes(b"x")
        with oom_advice("--batch_size", int(argv[0])):
            _oom()

    assert main(["64"]) == 2
    err = capsys.readouterr().err
    assert err == ("error: CUDA ran out of memory at batch size 64; lower --batch_size (e.g. 64 -> 32), "
                   "or run on a GPU with more memory\n")
    assert not out.exists()


def test_cli_main_fallback_says_the_same(capsys):
    @cli_main(batch_size_hint="--batch_size")
    def main(argv):
        _oom()

    assert main([]) == 3
    assert capsys.readouterr().err == f"error: {out_of_memory_message('--batch_size')}\n"
