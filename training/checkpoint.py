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
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from dnnlib import util
from dnnlib.util import atomic_write

FORMAT = "spatialgan-snapshot"
VERSION = 1


_SNAPSHOT_NAME = re.compile(r"network-snapshot-(\d{6,})(?:\.(\d{3}))?\.pt")


def snapshot_filename(nimg: int) -> str:
    """`network-snapshot-<kimg>.pt`: whole kimg as 6 digits (StyleGAN2-ADA's names), and the images past
    the last whole kimg as 3 decimals when there are any (`network-snapshot-000000.008.pt`), so that
    snapshots less than 1 kimg apart (short ticks, a final tick) never overwrite each other."""
    whole, rest = divmod(int(nimg), 1000)
    return f"network-snapshot-{whole:06d}" + (f".{rest:03d}" if rest else "") + ".pt"


def list_snapshots(run_dir: str | os.PathLike) -> list[Path]:
    """The snapshots in a run directory, oldest (fewest images) first."""
    found = []
    for p in Path(run_dir).iterdir():
        m = _SNAPSHOT_NAME.fullmatch(p.name)
        if m and p.is_file():
            found.append((int(m.group(1)) * 1000 + int(m.group(2) or 0), p))
    return [p for _, p in sorted(found)]


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


def build_module(packed: dict[str, Any], device: torch.device | str = "cpu",
                 where: str = "the snapshot") -> torch.nn.Module:
    """Rebuild a network from `pack_module` output (eval mode, no gradients); SnapshotError naming
    `where` (the file) and the parameter when it cannot be."""
    classes = _network_classes()
    name = packed.get("class")
    if name not in classes:
        raise SnapshotError(f"{where}: unknown network class {name!r} (known: {sorted(classes)})")
    try:
        module = classes[name](**packed["init_kwargs"])
    except (TypeError, ValueError) as err:
        raise SnapshotError(f"{where}: its {name} cannot be rebuilt from its init_kwargs ({err})") from None
    try:
        missing, unexpected = module.load_state_dict(packed["state_dict"], strict=False)
    except (RuntimeError, TypeError, AttributeError) as err:  # wrong shapes, a non-tensor value
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        detail = "; ".join(lines[1:3]) or (lines[0] if lines else type(err).__name__)  # line 0: a heading
        raise SnapshotError(f"{where}: the weights of its {name} do not fit its architecture ({detail})") from None
    if missing or unexpected:
        raise SnapshotError(f"{where}: the state dict of its {name} does not match its architecture: "
                            f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    return module.eval().requires_grad_(False).to(device)


def save_snapshot(path: str | os.PathLike, snapshot: dict[str, Any]) -> None:
    """Write `snapshot` to `path` atomically (temp file, fsync, rename): a crash, even kill -9, at any
    moment leaves either the previous file or the complete new one."""
    try:
        with atomic_write(path) as f:
            torch.save({"format": FORMAT, "version": VERSION, **snapshot}, f)
    except (OSError, RuntimeError) as err:
        # torch.save reports a failed write (a full disk) as a RuntimeError from its zip writer, raised
        # while handling the OSError: name the file and the system's reason in one line.
        cause = err if isinstance(err, OSError) else err.__context__
        if not isinstance(cause, OSError):
            raise
        raise OSError(cause.errno, f"cannot write the snapshot {path}: {cause.strerror or cause}") from None


def resolve_snapshot(path: str | os.PathLike) -> str:
    """A snapshot file or URL as given; a run directory -> its newest snapshot. SnapshotError naming
    `path` when there is none."""
    if util.is_url(str(path)):
        return str(path)
    if os.path.isdir(path):
        snaps = list_snapshots(path)
        if not snaps:
            raise SnapshotError(f"{path}: the directory holds no network-snapshot-*.pt")
        return str(snaps[-1])
    if not os.path.isfile(path):
        raise SnapshotError(f"Snapshot not found: {path}")
    return str(path)


def local_path(path: str | os.PathLike) -> Path:
    """A snapshot path (a run directory: its newest snapshot), or an http(s)/file URL downloaded once
    into the cache (`dnnlib.util.open_url`)."""
    if util.is_url(str(path)):
        with util.open_url(str(path)) as f:
            return Path(f.name)
    return Path(resolve_snapshot(path))


def _pickle_hint(path: Path) -> str:
    """Why a file that torch cannot load may look like a snapshot: a bare pickle (StyleGAN2-ADA's .pkl)."""
    try:
        with open(path, "rb") as f:
            head = f.read(2)
    except OSError:
        return ""
    if len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return ("; it is a Python pickle (a StyleGAN2-ADA .pkl?) — SpatialGAN reads its own .pt snapshots, "
                "which never run code on load; official pickles cannot be converted yet")
    return ""


def load_snapshot(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and validate a snapshot (a path or URL); raises SnapshotError naming the file for anything else."""
    where = str(path)
    path = local_path(path)
    try:
        with warnings.catch_warnings():  # a foreign pickle's protocol warning would precede our one-line error
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            data = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, KeyError, RuntimeError, EOFError, zipfile.BadZipFile, OSError,
            ValueError) as err:
        raise SnapshotError(f"{where} is not a SpatialGAN snapshot (not a readable torch file, or truncated: "
                            f"{type(err).__name__}){_pickle_hint(path)}") from None
    except Exception as err:  # weights_only refuses pickles that reference code: report them as such
        raise SnapshotError(f"{where} is not a SpatialGAN snapshot: {type(err).__name__}: "
                            f"{str(err).splitlines()[0] if str(err) else ''}{_pickle_hint(path)}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise SnapshotError(f"{where} is not a SpatialGAN snapshot (no '{FORMAT}' marker)")
    version = data.get("version")
    if not isinstance(version, int) or not 1 <= version <= VERSION:
        raise SnapshotError(f"{where} has snapshot format version {version!r}; this SpatialGAN reads versions 1 "
                            f"to {VERSION}" + (". Upgrade SpatialGAN to load it." if isinstance(version, int)
                                               and version > VERSION else ""))
    nets = data.get("networks")
    if not isinstance(nets, dict) or not nets:
        raise SnapshotError(f"{where} holds no networks")
    for name, packed in nets.items():
        if not (isinstance(packed, dict) and isinstance(packed.get("init_kwargs"), dict)
                and isinstance(packed.get("state_dict"), dict)):
            raise SnapshotError(f"{where}: network {name!r} is damaged (needs 'class', 'init_kwargs' and 'state_dict')")
        for key, value in packed["state_dict"].items():
            # Training stops before it would save NaN/inf weights, so any in a file is damage.
            if isinstance(value, torch.Tensor) and value.is_floating_point() and not torch.isfinite(value).all():
                raise SnapshotError(f"{where}: {name}.{key} holds NaN/inf values; the file is damaged")
    return data


PROGRESS_KEYS = ("cur_nimg", "cur_tick", "batch_idx", "tick_start_nimg")


def check_training_state(state: Any, path: str | os.PathLike) -> None:
    """Raise SnapshotError unless `state` (a snapshot's 'state') has everything a resume restores."""
    missing = [k for k in ("optimizers", "loss", "progress", "rng") if not isinstance(state, dict) or k not in state]
    if not missing:
        opts = state["optimizers"] if isinstance(state["optimizers"], dict) else {}
        missing = [f"optimizers.{k}" for k in ("G", "D") if k not in opts]
        missing += [f"progress.{k}" for k in PROGRESS_KEYS
                    if not isinstance(state["progress"], dict) or not isinstance(state["progress"].get(k), int)]
    if missing:
        raise SnapshotError(f"{path}: the training state is damaged (missing or invalid: {', '.join(missing)}); "
                            f"its networks alone can still be used, e.g. by generate.py")


def load_network(path: str | os.PathLike, which: str = "G_ema",
                 device: str | torch.device = "cpu") -> torch.nn.Module:
    """Load one network (`G_ema`, `G` or `D`) from a snapshot (path or URL), ready for inference on `device`."""
    return network_of(load_snapshot(path), which, device, where=str(path))


def network_of(data: dict[str, Any], which: str = "G_ema", device: str | torch.device = "cpu",
               where: str = "the snapshot") -> torch.nn.Module:
    """Rebuild network `which` of loaded snapshot `data` (from `load_snapshot`) on `device`."""
    nets = data["networks"]
    if which not in nets:
        raise SnapshotError(f"{where} has no network {which!r} (has: {sorted(nets)})")
    return build_module(nets[which], device, where)
