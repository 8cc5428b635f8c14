"""Sliced Wasserstein distance between Laplacian-pyramid patch descriptors (Karras et al. 2018, "ProGAN").

Protocol (needs no network), for real and generated uint8 images `[N, 3, R, R]`:
1. Gaussian pyramid with the 5-tap binomial filter [1, 4, 6, 4, 1] / 16 (separable, reflect padding),
   halving until 16 px; Laplacian level = level - upsample(next level); the coarsest (16 px) level is
   the low-pass image itself. Levels are reported by resolution: R, R/2, ..., 16 (one level if R <= 16).
2. Per image and level: 128 random 7x7 neighbourhoods -> descriptors of 3 x 7 x 7 = 147 values
   (pixel values scaled to [0, 1] before the pyramid).
3. Per set and level: each colour channel normalised to zero mean / unit std over all its descriptors.
4. SWD per level: 512 random unit directions; project both sets, sort each projection, mean absolute
   difference of the sorted values; repeated 4 times with new directions and averaged. Both sets are cut
   to the same number of descriptors (the smaller count).
5. Reported values are multiplied by 1e3 (the convention of the ProGAN tables): `swd_<res>` per level and
   `swd_avg` = mean over levels.
Memory: descriptors are kept as float16, N x 128 x 147 x 2 bytes per level per set (~0.6 GB per level
for 16k images), hence the modest default count of `swd` (16k images, ProGAN's setting).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from metrics import metric_utils

PATCH = 7
DESCRIPTORS_PER_IMAGE = 128
MIN_RES = 16
NUM_DIRECTIONS = 512
NUM_REPEATS = 4


def _blur(x: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
    k = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], device=x.device) / 16 * gain ** 0.5
    c = x.shape[1]
    x = F.conv2d(F.pad(x, [2, 2, 0, 0], mode="reflect"), k.view(1, 1, 1, 5).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(F.pad(x, [0, 0, 2, 2], mode="reflect"), k.view(1, 1, 5, 1).repeat(c, 1, 1, 1), groups=c)


def laplacian_pyramid(images: torch.Tensor, min_res: int = MIN_RES) -> list[torch.Tensor]:
    """float `[N, C, R, R]` -> list of levels `[N, C, r, r]`, r = R, R/2, ..., min_res (last = low-pass)."""
    levels, cur = [], images
    while cur.shape[-1] > min_res and cur.shape[-1] % 2 == 0:
        down = _blur(cur)[:, :, ::2, ::2]
        up = torch.zeros_like(cur)
        up[:, :, ::2, ::2] = down
        levels.append(cur - _blur(up, gain=4.0))
        cur = down
    levels.append(cur)
    return levels


def extract_descriptors(level: torch.Tensor, gen: torch.Generator, count: int = DESCRIPTORS_PER_IMAGE,
                        patch: int = PATCH) -> torch.Tensor:
    """`count` random patch x patch neighbourhoods per image: `[N, C, r, r]` -> `[N * count, C * patch^2]`.

    Patch positions are uniform over all fully inside positions."""
    n, c, h, w = level.shape
    if h < patch or w < patch:
        raise ValueError(f"pyramid level {h}x{w} is smaller than the {patch}x{patch} neighbourhood")
    ys = torch.randint(h - patch + 1, [n, count, 1, 1], generator=gen, device=gen.device).to(level.device)
    xs = torch.randint(w - patch + 1, [n, count, 1, 1], generator=gen, device=gen.device).to(level.device)
    off = torch.arange(patch, device=level.device)
    idx = (ys + off.view(patch, 1)) * w + (xs + off.view(1, patch))  # [n, count, patch, patch]
    flat = level.flatten(2)  # [n, c, h*w]
    vals = flat.gather(2, idx.view(n, 1, -1).expand(n, c, -1))  # [n, c, count*patch*patch]
    return vals.view(n, c, count, patch * patch).permute(0, 2, 1, 3).reshape(n * count, c * patch * patch)


def normalize_descriptors(desc: torch.Tensor, channels: int) -> torch.Tensor:
    """Per colour channel zero mean / unit std over all descriptors `[M, C*P]` -> float32 `[M, C*P]`."""
    d = desc.float().view(desc.shape[0], channels, -1)
    mean = d.mean(dim=(0, 2), keepdim=True)
    std = d.std(dim=(0, 2), keepdim=True).clamp_min(1e-8)
    return ((d - mean) / std).view(desc.shape[0], -1)


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, gen: torch.Generator,
                       num_directions: int = NUM_DIRECTIONS, num_repeats: int = NUM_REPEATS,
                       chunk: int = 64) -> float:
    """Mean over repeats of the mean |sorted(a.v) - sorted(b.v)| over random unit directions v."""
    m = min(a.shape[0], b.shape[0])
    a, b = a[:m], b[:m]
    results = []
    for _ in range(num_repeats):
        dirs = torch.randn([a.shape[1], num_directions], generator=gen, device=gen.device).to(a.device)
        dirs = dirs / dirs.norm(dim=0, keepdim=True)
        total = 0.0
        for i in range(0, num_directions, chunk):  # chunks bound the memory of the sorted projections
            d = dirs[:, i:i + chunk].T.contiguous()  # [chunk, D]; sorting along the last dim is the fast path
            pa = torch.sort(d @ a.T, dim=1).values
            pb = torch.sort(d @ b.T, dim=1).values
            total += float((pa - pb).abs().mean(dim=1).sum())
        results.append(total / num_directions)
    return float(np.mean(results))


def descriptors_for_images(images: torch.Tensor, gen: torch.Generator) -> list[torch.Tensor]:
    """uint8 `[N, 3, R, R]` -> per level float16 descriptors `[N * 128, 147]`."""
    pyramid = laplacian_pyramid(images.float() / 255)
    return [extract_descriptors(level, gen).half().cpu() for level in pyramid]


def swd_from_descriptors(real: list[torch.Tensor], fake: list[torch.Tensor], resolutions: list[int],
                         channels: int = 3, seed: int = 0) -> dict[str, float]:
    """Per-level SWD (x 1e3) and their average from per-level descriptor sets."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for res, dr, df in zip(resolutions, real, fake):
        out[f"swd_{res}"] = 1e3 * sliced_wasserstein(normalize_descriptors(dr, channels),
                                                     normalize_descriptors(df, channels), gen)
    out["swd_avg"] = float(np.mean(list(out.values())))
    return out


def swd_from_images(real: torch.Tensor, fake: torch.Tensor, seed: int = 0) -> dict[str, float]:
    """SWD between two uint8 image sets `[N, 3, R, R]` (convenience for small sets and tests)."""
    # Same patch positions for both sets, so identical sets give exactly 0.
    dr = descriptors_for_images(real, torch.Generator().manual_seed(seed))
    df = descriptors_for_images(fake, torch.Generator().manual_seed(seed))
    res = [lvl.shape[-1] for lvl in laplacian_pyramid(real[:1].float())]
    return swd_from_descriptors(dr, df, res, real.shape[1], seed)


def pyramid_resolutions(resolution: int, min_res: int = MIN_RES) -> list[int]:
    """Level resolutions of `laplacian_pyramid` for `resolution` x `resolution` images."""
    out = [resolution]
    while out[-1] > min_res and out[-1] % 2 == 0:
        out.append(out[-1] // 2)
    return out


def _collect(opts: metric_utils.MetricOptions, batches, num_levels: int, salt: int) -> list[torch.Tensor]:
    """Per-level descriptors of all ranks' batches `(b, uint8 images)`, in batch order.

    Patch positions come from the batch's own generator, and every rank makes the same gather calls
    (empty tensors when it has no batch), so the result equals one process."""
    per_level: list[list[torch.Tensor]] = [[] for _ in range(num_levels)]
    keys = []
    for b, images in batches:
        if images.shape[1] == 1:
            images = images.repeat(1, 3, 1, 1)
        descs = descriptors_for_images(images.to(opts.device), metric_utils.batch_generator(opts, b, salt))
        if len(descs) != num_levels:
            raise ValueError(f"images of {images.shape[-1]} px give {len(descs)} pyramid levels, "
                             f"expected {num_levels}")
        for lst, d in zip(per_level, descs):
            lst.append(d)
        keys.append(torch.full([descs[0].shape[0]], b, dtype=torch.int64))
    width = 3 * PATCH * PATCH
    order = torch.argsort(opts.gather(metric_utils.cat_rows(keys, [], torch.int64)), stable=True)
    return [opts.gather(metric_utils.cat_rows(lst, [width], torch.float16))[order] for lst in per_level]


def _resolution(dataset) -> int:
    res = getattr(dataset, "resolution", None)
    return int(res) if res else int(np.asarray(dataset[0][0]).shape[-1])


def compute_swd(opts: metric_utils.MetricOptions, num_images: int) -> dict[str, float]:
    """SWD of `num_images` generated vs the first `num_images` real images (dataset without x-flip).

    Every rank must call it; only rank 0 gets the values (the others get {})."""
    dataset = metric_utils.get_dataset(opts, xflip=False, max_size=None)
    resolution = _resolution(dataset)
    if int(getattr(opts.G, "img_resolution", resolution)) != resolution:
        raise ValueError(f"G makes {opts.G.img_resolution} px images, the dataset has {resolution} px")
    resolutions = pyramid_resolutions(resolution)
    real = _collect(opts, metric_utils.iterate_real_images(opts, dataset, num_images), len(resolutions), 1)
    fake = _collect(opts, metric_utils.iterate_generated_images(opts, num_images), len(resolutions), 2)
    if opts.rank != 0:
        return {}
    return swd_from_descriptors(real, fake, resolutions, 3, opts.seed)
