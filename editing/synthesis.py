"""Python API for seeded generation and heatmap editing (used by generate.py, the editor and drag tools).

    G = load_generator('network-snapshot-000200.pt', device)
    spec = spec_from_seed(G, 7)                      # the heatmaps of heatmap seed 7
    spec = edits.move(spec, level=0, index=0, dx=0.1, dy=0.0)
    img = synthesize(G, z_from_seed(G, 3), spec)    # [1, C, H, W] in [-1, 1]
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
    if spec is not None and spec.batch_size != n:
        if spec.batch_size != 1:
            raise ValueError(f"heatmap spec has batch {spec.batch_size}, latents have batch {n}")
        spec = spec.repeat(n)
    spec = spec.to(device) if spec is not None else None
    return G(z.to(device), c.to(device), heatmaps=spec, truncation_psi=truncation_psi, noise_mode=noise_mode)


@torch.no_grad()
def synthesize_ws(G, ws: torch.Tensor, spec: HeatmapSpec | None = None, noise_mode: str = "const") -> torch.Tensor:
    """Image from given ws [N, num_ws, w_dim] (e.g. a projected latent) and an optional spec."""
    device = next(G.parameters()).device
    if G.heatmap_sampler is not None and spec is None:
        raise ValueError("A spatial generator needs a heatmap spec to synthesise from ws")
    if spec is not None:
        spec = (spec.repeat(ws.shape[0]) if spec.batch_size == 1 else spec).to(device)
    object_ws = G.object_ws(spec, torch.zeros([ws.shape[0], G.c_dim], device=device)) if spec is not None else None
    return G.synthesis(ws.to(device), heatmaps=spec, object_ws=object_ws, noise_mode=noise_mode)
