"""Snapshot format: one `.pt` of plain containers, written atomically, loaded without executing code.

Layout of a snapshot (see docs/internals.md):
    {'format': 'spatialgan-snapshot', 'version': 1,
     'networks': {'G': {'class': 'Generator', 'init_kwargs': {...}, 'state_dict': {...}}, 'D': ..., 'G_ema': ...},
     'augment_pipe': {'init_kwargs': {...}, 'state_dict': {...}} | None,
     'state': {...}              # optimisers, ADA controller, loss state, counters, RNG states (resume)
     'training_options': {...}} # the fully resolved run configuration (JSON-able)

`torch.load(weights_only=True)` only accepts tensors and primitive containers, so a snapshot can never
run code on load — unlike pickled networks, which import and execute whatever the pickle names.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from dnnlib.util import atomic_write

FORMAT = "spatialgan-snapshot"
VERSION = 1


class SnapshotError(ValueError):
    """A file is not a SpatialGAN snapshot, is corrupt, or has an unsupported version."""


def _network_classes() -> dict[str, type]:
    # Imported lazily so that reading a snapshot's options does not need the network code.
    from training import networks

    return {"Generator": networks.Generator, "Discriminator": networks.Discriminator}


def pack_module(module: torch.nn.Module) -> dict[str, Any]:
    """Describe a network by its class name, constructor kwargs and CPU state dict."""
    init_kwargs = getattr(module, "init_kwargs", None)
    if init_kwargs is None:
        raise TypeError(f"{type(module).__name__} has no init_kwargs; it cannot be stored in a snapshot")
    state = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
    return {"class": type(module).__name__, "init_kwargs": init_kwargs, "state_dict": state}


def build_module(packed: dict[str, Any], device: torch.device | str = "cpu") -> torch.nn.Module:
    """Rebuild a network from `pack_module` output (eval mode, no gradients)."""
    classes = _network_classes()
    name = packed.get("class")
    if name not in classes:
        raise SnapshotError(f"Unknown network class {name!r} in snapshot (known: {sorted(classes)})")
    module = classes[name](**packed["init_kwargs"])
    missing, unexpected = module.load_state_dict(packed["state_dict"], strict=False)
    if missing or unexpected:
        raise SnapshotError(f"State dict of {name} does not match its architecture: "
                            f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    return module.eval().requires_grad_(False).to(device)


def save_snapshot(path: str | os.PathLike, snapshot: dict[str, Any]) -> None:
    """Write `snapshot` to `path` atomically (temp file, fsync, rename): a crash, even kill -9, at any
    moment leaves either the previous file or the complete new one."""
    with atomic_write(path) as f:
        torch.save({"format": FORMAT, "version": VERSION, **snapshot}, f)


def load_snapshot(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and validate a snapshot; raises SnapshotError naming the file for anything else."""
    path = Path(path)
    if not path.is_file():
        raise SnapshotError(f"Snapshot not found: {path}")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, KeyError, RuntimeError, EOFError, zipfile.BadZipFile, OSError,
            ValueError) as err:
        raise SnapshotError(f"{path} is not a SpatialGAN snapshot (not a readable torch file, or truncated: "
                            f"{type(err).__name__})") from None
    except Exception as err:  # weights_only refuses pickles that reference code: report them as such
        raise SnapshotError(f"{path} is not a SpatialGAN snapshot: {type(err).__name__}: "
                            f"{str(err).splitlines()[0] if str(err) else ''}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise SnapshotError(f"{path} is not a SpatialGAN snapshot (no '{FORMAT}' marker)")
    version = data.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise SnapshotError(f"{path} has snapshot format version {version!r}; this SpatialGAN reads up to "
                            f"version {VERSION}. Upgrade SpatialGAN to load it.")
    if "networks" not in data:
        raise SnapshotError(f"{path} holds no networks")
    return data


def load_network(path: str | os.PathLike, which: str = "G_ema",
                 device: str | torch.device = "cpu") -> torch.nn.Module:
    """Load one network (`G_ema`, `G` or `D`) from a snapshot, ready for inference on `device`."""
    data = load_snapshot(path)
    nets = data["networks"]
    if which not in nets:
        raise SnapshotError(f"{path} has no network {which!r} (has: {sorted(nets)})")
    return build_module(nets[which], device)
