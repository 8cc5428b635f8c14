"""Every CLI's --help: the example commands of its help text come out whole, one per line (click
rewraps paragraphs unless they are marked), so they can be copied."""

import importlib

import pytest
from click.testing import CliRunner


@pytest.mark.parametrize("script", ["train", "generate", "style_mixing", "calc_metrics", "dataset_tool"])
def test_examples_in_help_are_not_rewrapped(script):
    module = importlib.import_module(script)
    examples = [line.strip() for line in (module.main.help or "").splitlines()
                if line.strip().startswith(("python ", "torchrun "))]
    assert examples, f"{script}.py .main documents no example command"
    res = CliRunner().invoke(module.main, ["--help"], terminal_width=80)
    assert res.exit_code == 0, res.output
    shown = {line.strip() for line in res.output.splitlines()}
    assert [e for e in examples if e not in shown] == []
