"""training_stats: report anywhere, aggregate per tick."""

from __future__ import annotations

import math

import pytest
import torch

from torch_utils import training_stats


@pytest.fixture(autouse=True)
def fresh():
    training_stats.reset()
    yield
    training_stats.reset()


def test_collector_gives_mean_std_and_counts_per_tick():
    collector = training_stats.Collector(regex="Loss/.*")
    training_stats.report("Loss/a", torch.tensor([1.0, 2.0, 3.0]))
    training_stats.report("Loss/a", 6.0)
    training_stats.report("Other/b", 1.0)
    collector.update()
    assert collector.num("Loss/a") == 4
    assert collector.mean("Loss/a") == pytest.approx(3.0)
    assert collector.std("Loss/a") == pytest.approx(math.sqrt((4 + 1 + 0 + 9) / 4))
    assert "Other/b" not in collector.as_dict()
    training_stats.report("Loss/a", 10.0)
    collector.update()  # the next tick only sees what was reported since the last update
    assert collector.num("Loss/a") == 1 and collector.mean("Loss/a") == 10.0


def test_non_finite_values_are_not_counted():
    collector = training_stats.Collector()
    training_stats.report("x", torch.tensor([1.0, float("nan"), float("inf"), 3.0]))
    collector.update()
    assert collector.num("x") == 2 and collector.mean("x") == 2.0


def test_a_new_collector_ignores_earlier_reports():
    training_stats.report("x", 5.0)
    collector = training_stats.Collector()
    training_stats.report("x", 1.0)
    collector.update()
    assert collector.num("x") == 1 and collector.mean("x") == 1.0
