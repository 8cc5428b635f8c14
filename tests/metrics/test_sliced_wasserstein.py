import numpy as np
import pytest
import torch

from metrics import sliced_wasserstein as swd


def _images(seed, n=8, res=32, shift=0):
    rng = np.random.RandomState(seed)
    base = rng.randint(0, 200, size=[n, 3, res, res]) + shift
    return torch.as_tensor(np.clip(base, 0, 255).astype(np.uint8))


def test_pyramid_levels_and_reconstruction():
    x = torch.rand(2, 3, 64, 64)
    levels = swd.laplacian_pyramid(x)
    assert [lvl.shape[-1] for lvl in levels] == [64, 32, 16]
    # Collapsing the pyramid (upsample by zero insertion + the 4x-gain blur, add the band) gives x back.
    cur = levels[-1]
    for band in reversed(levels[:-1]):
        up = torch.zeros_like(band)
        up[:, :, ::2, ::2] = cur
        cur = band + swd._blur(up, gain=4.0)
    torch.testing.assert_close(cur, x)
    # The blur keeps constants (reflect padding, unit DC gain): a flat image has empty bands.
    flat = swd.laplacian_pyramid(torch.full([1, 3, 64, 64], 0.3))
    assert all(band.abs().max() < 1e-6 for band in flat[:-1])
    torch.testing.assert_close(flat[-1], torch.full([1, 3, 16, 16], 0.3))


@pytest.mark.slow
def test_identical_sets_give_zero_and_shifted_sets_positive():
    a = _images(0)
    same = swd.swd_from_images(a, a.clone(), seed=3)
    assert set(same) == {"swd_32", "swd_16", "swd_avg"}
    assert same["swd_avg"] < 1e-6
    # Blurred copies: different texture statistics.
    smooth = torch.nn.functional.avg_pool2d(a.float(), 3, 1, 1).to(torch.uint8)
    other = swd.swd_from_images(a, smooth, seed=3)
    assert other["swd_32"] > 10 * max(same["swd_32"], 1e-3)


def test_descriptor_shape_and_normalisation():
    gen = torch.Generator().manual_seed(0)
    d = swd.extract_descriptors(torch.rand(3, 3, 16, 16), gen)
    assert d.shape == (3 * 128, 147)
    n = swd.normalize_descriptors(d, 3).view(-1, 3, 49)
    assert torch.allclose(n.mean(dim=(0, 2)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(n.std(dim=(0, 2)), torch.ones(3), atol=1e-3)


def test_sliced_wasserstein_of_shifted_1d_gaussians():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4000, 1, generator=g)
    # In 1-D every direction is +-1, so SWD = W1 between N(0,1) and N(2,1) = 2.
    assert abs(swd.sliced_wasserstein(a, a + 2, g, num_directions=4, num_repeats=1) - 2) < 1e-4
