"""Perceptual path length (Karras et al. 2019) with VGG16 LPIPS features.

For pairs of latents (z0, z1) and t ~ U[0, 1) (`full`) or t = 0 (`end`): interpolate in W (lerp) or Z
(slerp) at t and t + eps (eps = 1e-4), synthesise both with the same constant noise (the `noise_const`
buffers are re-randomised per batch) and `noise_mode='const'`, optionally crop (rows 3/8-7/8, columns
2/8-6/8, the legacy `ppl_*` metrics; `ppl2_*` uses the full image), box-downsample to 256 px when larger,
scale to [0, 255] and take dist = ||lpips(img0) - lpips(img1)||^2 / eps^2. Values outside the 1st..99th
percentile are dropped; the mean of the rest is the PPL.

Spatial generators: one heatmap spec is sampled per pair from `G.heatmap_sampler` and used for both
endpoints, so the path only moves in the latent, not in the layout.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F

from metrics import metric_utils


def slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation of `[N, D]` vectors (normalised), t `[N, 1]`."""
    a = a / a.norm(dim=-1, keepdim=True)
    b = b / b.norm(dim=-1, keepdim=True)
    d = (a * b).sum(dim=-1, keepdim=True).clamp(-1, 1)
    p = t * torch.acos(d)
    c = b - d * a
    c = c / c.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    out = a * torch.cos(p) + c * torch.sin(p)
    return out / out.norm(dim=-1, keepdim=True)


def _randomize_noise(G, gen: torch.Generator) -> None:
    noise_buffers = getattr(G.synthesis, "noise_buffers", None)  # a stand-in generator may have none
    for buf in (noise_buffers() if noise_buffers is not None else {}).values():
        buf.copy_(torch.randn(buf.shape, generator=gen, device=gen.device).to(buf.device))


def _endpoints(opts: metric_utils.MetricOptions, n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """z `[2n, z_dim]` (rows i and n + i are one pair's ends) and labels c `[2n, c_dim]` (shared by a pair)."""
    z = metric_utils.randn([n * 2, opts.G.z_dim], gen, opts.device)
    c = metric_utils.sample_labels(opts, n, metric_utils.numpy_rng(gen))
    return z, torch.cat([c, c])


def _latents(G, z: torch.Tensor, c2: torch.Tensor, space: str, t: torch.Tensor, eps: float,
             heatmap_vec: torch.Tensor | None) -> torch.Tensor:
    """ws `[2n, num_ws, w_dim]`: rows 0..n-1 at t, rows n..2n-1 at t + eps along each pair's path (lerp
    in W, slerp in Z). `heatmap_vec` [2n, D]: the flattened heatmaps that the flatten encoding feeds to
    the mapping network (None otherwise)."""
    n = z.shape[0] // 2
    kw = {} if heatmap_vec is None else {"heatmap_vec": heatmap_vec}  # plain StyleGAN2 mappings lack it
    if space == "w":
        w = G.mapping(z, c2, **kw)
        w0, w1 = w[:n], w[n:]
        tt = t.view(n, 1, 1)
        return torch.cat([torch.lerp(w0, w1, tt), torch.lerp(w0, w1, tt + eps)])
    z0, z1 = z[:n], z[n:]
    zt = torch.cat([slerp(z0, z1, t.view(n, 1)), slerp(z0, z1, t.view(n, 1) + eps)])
    return G.mapping(zt, c2, **kw)


def _prepare(img: torch.Tensor, crop: bool) -> torch.Tensor:
    """Synthesis output in [-1, 1] -> float [0, 255], cropped / box-downsampled as the protocol says: the
    down-sampling factor is the full image's side / 256 (StyleGAN2-ADA), so a cropped 1024² or 512² image
    becomes 128², not 256²."""
    factor = img.shape[-1] // 256
    if crop:
        r = img.shape[-1] // 8
        img = img[:, :, r * 3: r * 7, r * 2: r * 6]
    if factor > 1:
        img = F.avg_pool2d(img, factor)
    if img.shape[1] == 1:
        img = img.repeat(1, 3, 1, 1)
    return (img + 1) * (255 / 2)


@torch.no_grad()
def _batch_distances(opts, vgg, space: str, sampling: str, crop: bool, eps: float, n: int,
                     batch_idx: int) -> torch.Tensor:
    G = opts.G
    gen = metric_utils.batch_generator(opts, batch_idx, salt=17)
    t = torch.rand([n], generator=gen).to(opts.device) * (sampling == "full")
    z, c2 = _endpoints(opts, n, gen)
    _randomize_noise(G, gen)
    # Both ends of a pair share one heatmap spec (and, for indoor networks, its objects' latents).
    spec = None
    if getattr(G, "heatmap_sampler", None) is not None:
        spec = G.heatmap_sampler(n, generator=gen, device=opts.device).repeat(2)
    heatmap_vec = G.heatmap_vec(spec) if spec is not None else None
    ws = _latents(G, z, c2, space, t, eps, heatmap_vec)
    kwargs = {}
    if spec is not None:
        kwargs = dict(heatmaps=spec, object_ws=G.object_ws(spec, c2))
    img = G.synthesis(ws, noise_mode="const", force_fp32=True, **kwargs)
    feats = vgg.lpips(_prepare(img.float(), crop))
    return (feats[:n] - feats[n:]).square().sum(dim=1) / eps ** 2


def filtered_mean(dist: np.ndarray) -> float:
    """Mean of the values between the 1st and 99th percentile (inclusive)."""
    lo = np.percentile(dist, 1, method="lower")
    hi = np.percentile(dist, 99, method="higher")
    return float(np.extract(np.logical_and(dist >= lo, dist <= hi), dist).mean())


def compute_ppl(opts: metric_utils.MetricOptions, num_samples: int, space: str, sampling: str, crop: bool,
                eps: float = 1e-4, batch_size: int = 2) -> float:
    if space not in ("z", "w") or sampling not in ("full", "end"):
        raise ValueError(f"space={space!r} must be 'z'|'w' and sampling={sampling!r} 'full'|'end'")
    vgg = opts.detector("vgg16")
    # A private copy: re-randomising the noise buffers must not touch the caller's G (e.g. G_ema in training).
    opts = metric_utils.copy_options(opts, G=copy.deepcopy(opts.G))
    dists, keys = [], []
    with metric_utils.progress_bar(opts, num_samples, "ppl") as bar:
        for b, n in metric_utils.rank_batches(opts, num_samples, batch_size):
            dists.append(_batch_distances(opts, vgg, space, sampling, crop, eps, n, b).cpu().float())
            keys.append(torch.full([n], b, dtype=torch.int64))
            bar.update(n * opts.num_gpus)
    # Same gather calls on every rank (empty tensors when it got no batch), rows back in batch order.
    dist = metric_utils.gather_rows(opts, metric_utils.cat_rows(dists, [], torch.float32),
                                    metric_utils.cat_rows(keys, [], torch.int64)).numpy()
    return filtered_mean(dist) if opts.rank == 0 else float("nan")
