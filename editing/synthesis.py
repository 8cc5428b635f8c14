"""Python API for seeded generation and heatmap editing (used by generate.py, the editor and drag tools).

    G = load_generator('network-snapshot-000200.pt', device)
    spec = spec_from_seed(G, 7)                      # the heatmaps of heatmap seed 7
    spec = edits.move(spec, level=0, index=0, dx=0.1, dy=0.0)
    img = synthesize(G, z_from_seed(G, 3), spec)    # [1, C, H, W] in [-1, 1]
    ws = map_ws(G, z_from_seed(G, 3), spec)          # or go through W (style mixing, projection)
    img = synthesize_ws(G, ws, spec)
"""

from __future__ import annotations

import numpy as np
import torch

from training import checkpoint
from training.heatmaps import HeatmapSpec


def load_generator(path: str, device: torch.device | str = "cpu") -> torch.nn.Module:
    """G_ema of a snapshot, in eval mode, without gradients."""
    return checkpoint.load_network(path, "G_ema", device)


def z_from_seed(G, seed: int) -> torch.Tensor:
    """[1, z_dim] latent of `seed` (NumPy RandomState(seed).randn, the StyleGAN2-ADA convention)."""
    return torch.from_numpy(np.random.RandomState(seed).randn(1, G.z_dim).astype(np.float32))


def spec_from_seed(G, seed: int) -> HeatmapSpec:
    """The heatmap spec that `G.heatmap_sampler` draws for heatmap seed `seed` (batch 1)."""
    if G.heatmap_sampler is None:
        raise ValueError("This network has no heatmap encoding (a StyleGAN2 baseline): heatmaps do not apply")
    return G.heatmap_sampler(1, generator=torch.Generator().manual_seed(int(seed)))


def class_label(G, class_idx: int | None) -> torch.Tensor:
    """[1, c_dim] one-hot label (zeros for unconditional networks)."""
    c = torch.zeros([1, G.c_dim])
    if G.c_dim == 0:
        return c
    if class_idx is None:
        raise ValueError(f"This network is conditional ({G.c_dim} classes): give a class index")
    if not 0 <= class_idx < G.c_dim:
        raise ValueError(f"class {class_idx} out of range 0..{G.c_dim - 1}")
    c[0, class_idx] = 1
    return c


@torch.no_grad()
def synthesize(G, z: torch.Tensor, spec: HeatmapSpec | None = None, c: torch.Tensor | None = None,
               truncation_psi: float = 1.0, noise_mode: str = "const") -> torch.Tensor:
    """Image [N, C, H, W] in [-1, 1] for latents z [N, z_dim] and a spec of batch N (or 1, broadcast)."""
    device = next(G.parameters()).device
    n = z.shape[0]
    c = torch.zeros([n, G.c_dim]) if c is None else c
    spec = _broadcast(spec, n)
    spec = spec.to(device) if spec is not None else None
    return G(z.to(device), c.to(device), heatmaps=spec, truncation_psi=truncation_psi, noise_mode=noise_mode)


@torch.no_grad()
def map_ws(G, z: torch.Tensor, spec: HeatmapSpec | None = None, c: torch.Tensor | None = None,
           truncation_psi: float = 1.0) -> torch.Tensor:
    """ws [N, num_ws, w_dim] of latents z [N, z_dim], as `G.forward` computes them (the flatten encoding
    feeds the heatmaps to the mapping network, so it needs `spec`; batch 1 broadcasts)."""
    device = next(G.parameters()).device
    n = z.shape[0]
    c = torch.zeros([n, G.c_dim]) if c is None else c
    if spec is None and getattr(G, "encoding", None) == "flatten":
        raise ValueError("This network feeds its heatmaps to the mapping network (encoding 'flatten'): "
                         "give a heatmap spec")
    spec = _broadcast(spec, n)
    heatmap_vec = G.heatmap_vec(spec.to(device)) if spec is not None else None
    return G.mapping(z.to(device), c.to(device), truncation_psi=truncation_psi, heatmap_vec=heatmap_vec)


@torch.no_grad()
def synthesize_ws(G, ws: torch.Tensor, spec: HeatmapSpec | None = None, noise_mode: str = "const",
                  c: torch.Tensor | None = None, truncation_psi: float = 1.0) -> torch.Tensor:
    """Image from given ws [N, num_ws, w_dim] (e.g. a projected latent) and an optional spec.

    `c` and `truncation_psi` only matter for the per-object latents of indoor (sel_indoor) networks, which
    come from the spec's style seeds; pass the values used for `ws` to reproduce `synthesize` exactly."""
    device = next(G.parameters()).device
    if G.heatmap_sampler is not None and spec is None:
        raise ValueError("A spatial generator needs a heatmap spec to synthesise from ws")
    n = ws.shape[0]
    spec = _broadcast(spec, n)
    spec = spec.to(device) if spec is not None else None
    c = torch.zeros([n, G.c_dim]) if c is None else c
    object_ws = G.object_ws(spec, c.to(device), truncation_psi) if spec is not None else None
    return G.synthesis(ws.to(device), heatmaps=spec, object_ws=object_ws, noise_mode=noise_mode)


def _broadcast(spec: HeatmapSpec | None, n: int) -> HeatmapSpec | None:
    """`spec` with batch n: a batch-1 spec is repeated, a batch-n one kept, anything else is an error."""
    if spec is None or spec.batch_size == n:
        return spec
    if spec.batch_size != 1:
        raise ValueError(f"heatmap spec has batch {spec.batch_size}, latents have batch {n}")
    return spec.repeat(n)
