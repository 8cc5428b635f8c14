"""Python API for seeded generation and heatmap editing (used by generate.py, the editor and drag tools).

    G = load_generator('network-snapshot-000200.pt', device)
    spec = spec_from_seed(G, 7)                      # the heatmaps of heatmap seed 7
    spec = edits.move(spec, level=0, index=0, dx=0.1, dy=0.0)
    img = synthesize(G, z_from_seed(G, 3), spec)    # [1, C, H, W], about [-1, 1] (not clamped)
    ws = map_ws(G, z_from_seed(G, 3), spec)          # or go through W (style mixing, projection)
    img = synthesize_ws(G, ws, spec)
    img, feats = synthesize_ws(G, ws.requires_grad_(), spec, return_features=True)  # drag / projection

Nothing here disables autograd: a loaded G has frozen weights, so no graph is built unless an input
(ws, z, the spec's centres) requires gradients — then gradients flow to it (DragGAN-style drags,
projection). Noise defaults to the stored constant (`noise_mode="const"`), so repeated calls agree.

Inputs are checked here, at the API boundary, with errors naming them: seeds must be integers (NumPy and
one-element tensor integers are fine), latents finite tensors or NumPy arrays, a spec must suit G
(`check_spec`), labels c must be [N, c_dim] (or [1, c_dim], broadcast), truncation_psi finite.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from torch_utils import misc
from training import checkpoint
from training.heatmaps import HeatmapSpec, as_int


def load_generator(path: str, device: torch.device | str = "cpu") -> torch.nn.Module:
    """G_ema of a snapshot, in eval mode, without gradients."""
    return checkpoint.load_network(path, "G_ema", device)


def z_from_seed(G, seed: int) -> torch.Tensor:
    """[1, z_dim] latent of `seed` (NumPy RandomState(seed).randn, the StyleGAN2-ADA convention);
    ValueError unless 0 <= seed < 2^32 is an integer."""
    seed = as_int("seed", seed, ValueError)
    if not 0 <= seed < 2**32:
        raise ValueError(f"seed={seed} out of range [0, 2^32) (NumPy RandomState seeds)")
    return torch.from_numpy(np.random.RandomState(seed).randn(1, G.z_dim).astype(np.float32))


def spec_from_seed(G, seed: int) -> HeatmapSpec:
    """The heatmap spec that `G.heatmap_sampler` draws for heatmap seed `seed` (batch 1); ValueError
    unless `seed` is an integer that torch.Generator accepts."""
    if G.heatmap_sampler is None:
        raise ValueError("This network has no heatmap encoding (a StyleGAN2 baseline): heatmaps do not apply")
    seed = as_int("seed", seed, ValueError)
    if not -2**63 <= seed < 2**64:
        raise ValueError(f"seed={seed} out of range [-2^63, 2^64) (torch.Generator seeds)")
    return G.heatmap_sampler(1, generator=torch.Generator().manual_seed(seed))


def class_label(G, class_idx: int | None) -> torch.Tensor:
    """[1, c_dim] one-hot label (zeros for unconditional networks, which take no class index)."""
    c = torch.zeros([1, G.c_dim])
    if G.c_dim == 0:
        if class_idx is not None:
            raise ValueError(f"this network is unconditional (no classes): class {class_idx!r} does not apply")
        return c
    if class_idx is None:
        raise ValueError(f"this network is conditional ({G.c_dim} classes): give a class index")
    class_idx = as_int("class_idx", class_idx, ValueError)
    if not 0 <= class_idx < G.c_dim:
        raise ValueError(f"class {class_idx} out of range 0..{G.c_dim - 1}")
    c[0, class_idx] = 1
    return c


def check_spec(G, spec: HeatmapSpec | None) -> None:
    """Raise unless `spec` can drive G: None for a StyleGAN2 baseline; otherwise a HeatmapSpec (TypeError)
    with G's centres per level, style seeds where G needs them and valid values (ValueError)."""
    if G.heatmap_sampler is None:
        if spec is not None:
            raise ValueError("this network has no heatmap encoding (a StyleGAN2 baseline): it cannot use a "
                             "heatmap spec; pass spec=None")
        return
    if spec is None:
        return  # The callers that need one say so (G.forward draws one itself).
    if not isinstance(spec, HeatmapSpec):
        raise TypeError(f"spec must be a HeatmapSpec, got {type(spec).__name__}")
    expected = list(G.spatial.level_sizes)
    if spec.centers_per_level != expected:
        raise ValueError(f"heatmap spec has centres per level {spec.centers_per_level}, this network was "
                         f"built for {expected}")
    if G.encoding == "sel_indoor" and spec.style_seeds is None:
        raise ValueError("heatmap spec has no style_seeds, but this indoor network needs one per object")
    spec.check_values()


def synthesize(G, z: torch.Tensor | np.ndarray, spec: HeatmapSpec | None = None, *, c: torch.Tensor | None = None,
               truncation_psi: float = 1.0, noise_mode: str = "const") -> torch.Tensor:
    """Image [N, C, H, W], about [-1, 1] (not clamped), for latents z [N, z_dim] (tensor or NumPy array)
    and a spec of batch N (or 1, broadcast); c [N, c_dim] (or [1, c_dim]), default zeros. A spatial
    network needs its spec (`spec_from_seed`): G's own draw would come from the global random state."""
    device = next(G.parameters()).device
    z = _latents("z", z, [None, G.z_dim])
    n = z.shape[0]
    if G.heatmap_sampler is not None and spec is None:
        raise ValueError("A spatial generator needs a heatmap spec: pass spec_from_seed(G, seed) or a saved layout")
    spec = _spec_for(G, spec, n, device)
    return G(z.to(device), _labels(G, c, n).to(device), heatmaps=spec,
             truncation_psi=_psi(truncation_psi), noise_mode=noise_mode)


def map_ws(G, z: torch.Tensor | np.ndarray, spec: HeatmapSpec | None = None, *, c: torch.Tensor | None = None,
           truncation_psi: float = 1.0) -> torch.Tensor:
    """ws [N, num_ws, w_dim] of latents z [N, z_dim], as `G.forward` computes them (the flatten encoding
    feeds the heatmaps to the mapping network, so it needs `spec`; batch 1 broadcasts)."""
    device = next(G.parameters()).device
    z = _latents("z", z, [None, G.z_dim])
    n = z.shape[0]
    if spec is None and getattr(G, "encoding", None) == "flatten":
        raise ValueError("This network feeds its heatmaps to the mapping network (encoding 'flatten'): "
                         "give a heatmap spec")
    spec = _spec_for(G, spec, n, device)
    heatmap_vec = G.heatmap_vec(spec) if spec is not None else None
    return G.mapping(z.to(device), _labels(G, c, n).to(device), truncation_psi=_psi(truncation_psi),
                     heatmap_vec=heatmap_vec)


def synthesize_ws(G, ws: torch.Tensor | np.ndarray, spec: HeatmapSpec | None = None, *, noise_mode: str = "const",
                  c: torch.Tensor | None = None, truncation_psi: float = 1.0, return_features: bool = False,
                  object_ws: torch.Tensor | None = None):
    """Image [N, C, H, W] from given ws [N, num_ws, w_dim] (e.g. a projected latent) and a spec.

    ws row i drives synthesis layer i (two convs and a ToRGB per resolution from 8² up; see
    `SynthesisNetwork`). `return_features=True` also returns {resolution: block output [N, C, r, r]}
    (before ToRGB; fp16 and channels-last in a GPU's fp16 blocks — use `.float()` for a loss).
    `c` and `truncation_psi` only matter for the per-object latents of indoor (sel_indoor) networks, which
    come from the spec's style seeds; pass the values used for `ws` to reproduce `synthesize` exactly.
    Or pass those latents themselves, `object_ws` [N, K, num_ws, w_dim] (from `G.object_ws(spec, c, psi)`,
    batch 1 broadcasts): computed once, they can be optimised (projection, drags) or reused between frames.
    A `flatten` network takes its heatmaps in the mapping network, so its ws already carry them: pass
    spec=None (edit the spec before `map_ws` instead)."""
    device = next(G.parameters()).device
    if isinstance(ws, (torch.Tensor, np.ndarray)) and tuple(ws.shape[1:]) != (G.num_ws, G.w_dim):
        # A [N, w_dim] w is the usual slip: say how to get the per-layer ws.
        raise ValueError(f"ws has shape {list(ws.shape)}, this network takes [N, num_ws={G.num_ws}, "
                         f"w_dim={G.w_dim}]: one w per synthesis layer, as map_ws returns (repeat a single w "
                         f"[N, {G.w_dim}] with w[:, None].repeat(1, {G.num_ws}, 1))")
    ws = _latents("ws", ws, [None, G.num_ws, G.w_dim])
    if getattr(G, "encoding", None) == "flatten":
        if spec is not None:
            raise ValueError("this network feeds its heatmaps to the mapping network (encoding 'flatten'): ws "
                             "already carry them and a spec here would be ignored; edit the spec before map_ws "
                             "and pass spec=None")
    elif G.heatmap_sampler is not None and spec is None:
        raise ValueError("A spatial generator needs a heatmap spec to synthesise from ws")
    n = ws.shape[0]
    spec = _spec_for(G, spec, n, device)
    c = _labels(G, c, n).to(device)
    if object_ws is None:
        object_ws = G.object_ws(spec, c, _psi(truncation_psi)) if spec is not None else None
    elif getattr(G, "encoding", None) != "sel_indoor":
        raise ValueError("object_ws are the per-object latents of an indoor (sel_indoor) network; this one has none")
    else:
        object_ws = _latents("object_ws", object_ws, [None, spec.centers_per_level[0], G.num_ws, G.w_dim]).to(device)
        if object_ws.shape[0] not in (1, n):
            raise ValueError(f"object_ws has batch {object_ws.shape[0]}, ws have batch {n}")
        object_ws = object_ws.expand(n, -1, -1, -1)
    return G.synthesis(ws.to(device), heatmaps=spec, object_ws=object_ws, noise_mode=noise_mode,
                       return_features=return_features)


def _latents(name: str, x, shape: list[int | None]) -> torch.Tensor:
    """`x` (tensor or NumPy array) as a float tensor of `shape`, all finite; errors name `name`."""
    if isinstance(x, np.ndarray):
        if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
            raise TypeError(f"{name} must hold numbers, got a NumPy array of dtype {x.dtype}")
        x = torch.from_numpy(np.asarray(x, dtype=np.float32))
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a tensor or NumPy array {_shape_text(shape)}, got {type(x).__name__}")
    misc.assert_shape(x, shape, name)
    if not x.is_floating_point():
        x = x.to(torch.float32)
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or infinite values")
    return x


def _labels(G, c, n: int) -> torch.Tensor:
    """c [n, c_dim] (zeros when None; a batch-1 label is repeated); ValueError for any other shape, also
    on an unconditional network, which would otherwise ignore c."""
    if c is None:
        return torch.zeros([n, G.c_dim])
    c = _latents("c", c, [None, None])
    if c.shape[1] != G.c_dim:
        what = "is unconditional (c_dim=0)" if G.c_dim == 0 else f"takes labels of width c_dim={G.c_dim}"
        raise ValueError(f"c has shape {list(c.shape)}, but this network {what}")
    if c.shape[0] == 1 and n != 1:
        return c.expand(n, -1)
    if c.shape[0] != n:
        raise ValueError(f"c has batch {c.shape[0]}, latents have batch {n}")
    return c


def _psi(truncation_psi) -> float:
    psi = float(truncation_psi)
    if not math.isfinite(psi):
        raise ValueError(f"truncation_psi must be finite, got {truncation_psi!r}")
    return psi


def _shape_text(shape: list[int | None]) -> str:
    return "[" + ", ".join("N" if s is None else str(s) for s in shape) + "]"


def _spec_for(G, spec: HeatmapSpec | None, n: int, device) -> HeatmapSpec | None:
    """`spec` checked against G (`check_spec`), broadcast to batch n and moved to `device`."""
    check_spec(G, spec)
    spec = _broadcast(spec, n)
    return spec.to(device) if spec is not None else None


def _broadcast(spec: HeatmapSpec | None, n: int) -> HeatmapSpec | None:
    """`spec` with batch n: a batch-1 spec is repeated, a batch-n one kept, anything else is an error."""
    if spec is None or spec.batch_size == n:
        return spec
    if spec.batch_size != 1:
        raise ValueError(f"heatmap spec has batch {spec.batch_size}, latents have batch {n}")
    return spec.repeat(n)
