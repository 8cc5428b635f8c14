"""dnnlib/cli.py: one-line user errors and --device selection."""

from __future__ import annotations

import click
import pytest
import torch
from click.testing import CliRunner

from dnnlib.cli import FiniteFloatRange, pick_device, user_errors


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


def test_user_errors_keep_quotes_inside_messages(monkeypatch):
    monkeypatch.delenv("SPATIALGAN_DEBUG", raising=False)

    @click.command()
    @click.argument("kind")
    @user_errors(ValueError, OSError, KeyError)
    def cmd(kind):
        if kind == "value":
            raise ValueError("--move must be 'DX,DY'")
        if kind == "os":
            open("/nonexistent/layout.json")
        raise KeyError("G_ema")

    assert CliRunner().invoke(cmd, ["value"]).output.strip() == "Error: --move must be 'DX,DY'"
    assert CliRunner().invoke(cmd, ["os"]).output.strip().endswith("'/nonexistent/layout.json'")
    assert CliRunner().invoke(cmd, ["key"]).output.strip() == "Error: G_ema"  # the key, not its repr


def test_finite_float_range_refuses_nan_and_inf():
    @click.command()
    @click.option("--x", type=FiniteFloatRange())
    @click.option("--y", type=FiniteFloatRange(max=10), default=0)
    def cmd(x, y):
        click.echo(f"x={x}")

    assert CliRunner().invoke(cmd, ["--x=2.5"]).output.strip() == "x=2.5"
    for bad in ("nan", "inf", "-inf"):
        res = CliRunner().invoke(cmd, [f"--x={bad}"])
        assert res.exit_code == 2 and "not a finite number" in res.output, bad
    assert CliRunner().invoke(cmd, ["--x=1", "--y=11"]).exit_code == 2  # a range still applies


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
