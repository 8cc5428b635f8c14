"""conv2d_resample: every fast path equals the naive composition; gradients of order 2."""

import itertools

import pytest
import torch
import torch.nn.functional as F

from torch_utils.ops.conv2d_resample import conv2d_resample
from torch_utils.ops.upfirdn2d import setup_filter, upfirdn2d


def naive(x, w, f, up, down, padding, groups, flip_weight, flip_filter):
    """The documented definition: upsample+pad, valid conv, then filter+decimate."""
    fw, fh = (1, 1) if f is None else (f.shape[-1], f.shape[0])
    px0, px1, py0, py1 = padding
    if up > 1:
        px0 += (fw + up - 1) // 2
        px1 += (fw - up) // 2
        py0 += (fh + up - 1) // 2
        py1 += (fh - up) // 2
    if down > 1:
        px0 += (fw - down + 1) // 2
        px1 += (fw - down) // 2
        py0 += (fh - down + 1) // 2
        py1 += (fh - down) // 2
    y = upfirdn2d(x, f if up > 1 else None, up=up, padding=[px0, px1, py0, py1], gain=up**2,
                  flip_filter=flip_filter)
    y = F.conv2d(y, w if flip_weight else w.flip([2, 3]), groups=groups)
    if down > 1:
        y = upfirdn2d(y, f, down=down, flip_filter=flip_filter)
    return y


CASES = [c for c in itertools.product(
    [(1, 1), (2, 1), (1, 2), (4, 1), (1, 4), (2, 2)],  # (up, down)
    [1, 3, 4],                                         # kernel size
    [1, 2],                                            # groups
    [True, False],                                     # flip_weight
)]


@pytest.mark.parametrize("updown,k,groups,flip_weight", CASES)
def test_matches_naive_composition(updown, k, groups, flip_weight):
    up, down = updown
    torch.manual_seed(k * 10 + groups)
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    w = torch.randn(6, 4 // groups, k, k, dtype=torch.float64)
    for f, padding in [(setup_filter([1, 3, 3, 1]), [k // 2] * 4), (setup_filter([1, 2, 1], separable=True), [1, 0, 2, 1]),
                       (None, [0, 0, 0, 0])]:
        for flip_filter in (False, True):
            out = conv2d_resample(x, w, f=f, up=up, down=down, padding=padding, groups=groups,
                                  flip_weight=flip_weight, flip_filter=flip_filter)
            ref = naive(x, w, f, up, down, padding, groups, flip_weight, flip_filter)
            assert out.shape == ref.shape
            torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("up,down", [(1, 1), (2, 1), (1, 2)])
def test_stylegan_shapes(up, down):
    """3x3 conv with padding 1 maps H -> H * up / down (how the networks call it)."""
    f = setup_filter([1, 3, 3, 1])
    x = torch.randn(2, 8, 16, 16)
    w = torch.randn(4, 8, 3, 3)
    out = conv2d_resample(x, w, f=f, up=up, down=down, padding=1, flip_weight=(up == 1))
    assert out.shape == (2, 4, 16 * up // down, 16 * up // down)


def test_plain_conv_and_flip_weight():
    x = torch.randn(1, 3, 6, 6, dtype=torch.float64)
    w = torch.randn(2, 3, 3, 3, dtype=torch.float64)
    torch.testing.assert_close(conv2d_resample(x, w, padding=1), F.conv2d(x, w, padding=1))
    torch.testing.assert_close(conv2d_resample(x, w, padding=1, flip_weight=False),
                               F.conv2d(x, w.flip([2, 3]), padding=1))
    torch.testing.assert_close(conv2d_resample(x, w, padding=[1, 0, 2, 1]),
                               F.conv2d(F.pad(x, [1, 0, 2, 1]), w))


@pytest.mark.parametrize("up,down,k", [(2, 1, 3), (1, 2, 3), (2, 1, 1), (1, 2, 1), (1, 1, 3)])
def test_gradgradcheck(up, down, k):
    torch.manual_seed(0)
    f = setup_filter([1, 3, 3, 1])
    x = torch.randn(1, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 2, k, k, dtype=torch.float64, requires_grad=True)
    fn = lambda x, w: conv2d_resample(x, w, f=f, up=up, down=down, padding=k // 2)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, w))
    assert torch.autograd.gradgradcheck(fn, (x, w))


def test_invalid_arguments():
    x = torch.randn(1, 4, 8, 8)
    w = torch.randn(2, 4, 3, 3)
    with pytest.raises(ValueError, match="up"):
        conv2d_resample(x, w, up=0)
    with pytest.raises(ValueError, match="down"):
        conv2d_resample(x, w, down=1.5)
    with pytest.raises(ValueError, match="groups"):
        conv2d_resample(x, w, groups=3)
    with pytest.raises(ValueError, match="w"):
        conv2d_resample(x, torch.randn(2, 4, 3))
    with pytest.raises(ValueError, match="w"):
        conv2d_resample(x, w.double())
    with pytest.raises(ValueError, match="x"):
        conv2d_resample(torch.randn(4, 8, 8), w)
    with pytest.raises(ValueError, match="padding"):
        conv2d_resample(x, w, padding=[1, 2, 3])
