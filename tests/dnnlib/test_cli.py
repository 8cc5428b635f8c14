"""dnnlib/cli.py: one-line user errors and --device selection."""

from __future__ import annotations

import click
import pytest
import torch
from click.testing import CliRunner

from dnnlib.cli import pick_device, user_errors


def test_user_errors_prints_one_line_without_traceback(monkeypatch):
    @click.command()
    @user_errors()
    def cmd():
        raise ValueError("--thing='x' is bad\nsecond line")

    monkeypatch.delenv("SPATIALGAN_DEBUG", raising=False)
    result = CliRunner().invoke(cmd, [])
    assert result.exit_code == 1
    assert result.output.strip() == "Error: --thing='x' is bad"
    monkeypatch.setenv("SPATIALGAN_DEBUG", "1")
    assert isinstance(CliRunner().invoke(cmd, []).exception, ValueError)


def test_user_errors_passes_other_exceptions_and_names_empty_ones(monkeypatch):
    monkeypatch.delenv("SPATIALGAN_DEBUG", raising=False)

    @click.command()
    @click.argument("kind")
    @user_errors(KeyError)
    def cmd(kind):
        raise KeyError("") if kind == "key" else ValueError("not listed")

    assert CliRunner().invoke(cmd, ["key"]).output.strip() == "Error: KeyError"  # no message: its type
    assert isinstance(CliRunner().invoke(cmd, ["value"]).exception, ValueError)  # not in the list: raised


def test_pick_device_auto_follows_cuda_availability(monkeypatch):
    assert pick_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device("auto") == torch.device("cpu")
    with pytest.raises(click.ClickException, match="--device=cuda but no CUDA device"):
        pick_device("cuda")
    bound = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", bound.append)
    assert pick_device("auto", local_rank=3) == torch.device("cuda", 3)
    assert bound == [3]  # the process is bound to torchrun's LOCAL_RANK
