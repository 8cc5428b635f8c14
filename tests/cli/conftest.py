"""Tiny trained snapshots shared by the CLI tests (trained once per test process, read-only)."""

from pathlib import Path

import pytest
from cli_support import RES, train_snapshot


@pytest.fixture(scope="session")
def spatial(tmp_path_factory) -> Path:
    """SpatialGAN (SEL_norm, hierarchical heatmaps) on shapes."""
    return train_snapshot(tmp_path_factory.mktemp("spatial"), "tiny-spatial", f"synthetic:shapes:{RES}")


@pytest.fixture(scope="session")
def indoor(tmp_path_factory) -> Path:
    """SpatialGAN (SEL_indoor, per-object heatmaps) on rooms."""
    return train_snapshot(tmp_path_factory.mktemp("indoor"), "tiny-spatial-indoor", f"synthetic:rooms:{RES}")


@pytest.fixture(scope="session")
def baseline(tmp_path_factory) -> Path:
    """StyleGAN2 without heatmaps on shapes."""
    return train_snapshot(tmp_path_factory.mktemp("baseline"), "tiny", f"synthetic:shapes:{RES}")
