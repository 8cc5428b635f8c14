"""upfirdn2d: against scipy.signal.upfirdn (1-D) and a naive loop (2-D), helpers, gradients."""

import itertools

import numpy as np
import pytest
import scipy.signal
import torch
import torch.nn.functional as F

from torch_utils.ops.upfirdn2d import downsample2d, filter2d, setup_filter, upfirdn2d, upsample2d


def naive_upfirdn2d(x, f, up=(1, 1), down=(1, 1), pad=(0, 0, 0, 0), flip_filter=False, gain=1.0):
    """Literal definition with numpy loops. x [N,C,H,W] ndarray, f [fh,fw] ndarray (full 2-D)."""
    (upx, upy), (downx, downy), (px0, px1, py0, py1) = up, down, pad
    n, c, h, w = x.shape
    z = np.zeros((n, c, h * upy, w * upx))
    z[:, :, ::upy, ::upx] = x
    # Pad with zeros by a generous margin, then take the (possibly cropping) window.
    m = 32
    zp = np.zeros((n, c, z.shape[2] + 2 * m, z.shape[3] + 2 * m))
    zp[:, :, m:m + z.shape[2], m:m + z.shape[3]] = z
    zp = zp[:, :, m - py0:m + z.shape[2] + py1, m - px0:m + z.shape[3] + px1]
    fh, fw = f.shape
    g = f if flip_filter else f[::-1, ::-1]
    oh, ow = zp.shape[2] - fh + 1, zp.shape[3] - fw + 1
    out = np.zeros((n, c, oh, ow))
    for i in range(fh):
        for j in range(fw):
            out += g[i, j] * zp[:, :, i:i + oh, j:j + ow]
    return out[:, :, ::downy, ::downx] * gain


def autograd_upfirdn2d(x, f, up, down, pad, flip_filter, gain):
    """The same definition in differentiable torch ops (zero insertion, pad or crop, depthwise conv,
    decimation), for gradients by plain autograd. up, down: (x, y); pad: (x0, x1, y0, y1)."""
    (upx, upy), (downx, downy) = up, down
    if f.ndim == 1:
        f = torch.outer(f, f)
    n, c, h, w = x.shape
    z = F.pad(x.reshape(n, c, h, 1, w, 1), [0, upx - 1, 0, 0, 0, upy - 1]).reshape(n, c, h * upy, w * upx)
    z = F.pad(z, list(pad))  # negative entries crop
    g = f.to(x.dtype) * gain
    g = g if flip_filter else g.flip([0, 1])
    return F.conv2d(z, g[None, None].repeat(c, 1, 1, 1), groups=c)[:, :, ::downy, ::downx]


def full2d(f):
    f = f.double().numpy()
    return np.outer(f, f) if f.ndim == 1 else f


@pytest.mark.parametrize("up,down", [(1, 1), (2, 1), (3, 1), (1, 2), (1, 3), (2, 2), (3, 2)])
@pytest.mark.parametrize("taps", [[1.0, 2.0, 5.0, 3.0], [2.0, -1.0, 4.0]])
def test_matches_scipy_upfirdn_1d(up, down, taps):
    """Rows and columns separately, with padding taps-1 on both sides (scipy's 'full' output)."""
    rng = np.random.default_rng(0)
    sig = rng.standard_normal(13)
    k = len(taps)
    ref = scipy.signal.upfirdn(np.array(taps), sig, up=up, down=down)
    f = torch.tensor(taps, dtype=torch.float64)
    f2 = torch.outer(torch.tensor([1.0], dtype=torch.float64), f)  # [1, k] filter along width
    x = torch.tensor(sig).reshape(1, 1, 1, -1)
    row = upfirdn2d(x, f2, up=[up, 1], down=[down, 1], padding=[k - 1, k - 1, 0, 0])[0, 0, 0].numpy()
    col = upfirdn2d(x.transpose(2, 3), f2.T.contiguous(), up=[1, up], down=[1, down],
                    padding=[0, 0, k - 1, k - 1])[0, 0, :, 0].numpy()
    # scipy drops the trailing samples that only the inserted trailing zeros feed; compare its length.
    assert len(row) >= len(ref) and len(row) - len(ref) <= (up - 1) // down + 1
    np.testing.assert_allclose(row[:len(ref)], ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(col[:len(ref)], ref, rtol=1e-12, atol=1e-12)


def test_flip_filter_is_correlation():
    sig = np.arange(7.0) ** 2
    taps = np.array([1.0, 2.0, 0.5])
    x = torch.tensor(sig).reshape(1, 1, 1, -1)
    f = torch.tensor(taps).reshape(1, -1)
    conv = upfirdn2d(x, f, padding=[2, 2, 0, 0])[0, 0, 0].numpy()
    corr = upfirdn2d(x, f, padding=[2, 2, 0, 0], flip_filter=True)[0, 0, 0].numpy()
    np.testing.assert_allclose(conv, np.convolve(sig, taps, mode="full"))
    np.testing.assert_allclose(corr, np.correlate(sig, taps, mode="full"))


CASES = list(itertools.product(
    [(1, 1), (2, 2), (2, 1), (3, 2)],          # up (x, y)
    [(1, 1), (2, 2), (1, 3)],                  # down (x, y)
    [(0, 0, 0, 0), (2, 1, 1, 2), (-1, 2, 3, -2), (1, -3, -1, 0)],
    [False, True],
))


@pytest.mark.parametrize("up,down,pad,flip", CASES)
def test_separable_and_2d_filters_match_naive(up, down, pad, flip):
    rng = np.random.default_rng(1)
    x = torch.tensor(rng.standard_normal((2, 3, 7, 9)))
    filters = [
        setup_filter([1, 2, 1], separable=True).double(),           # 1-D separable
        setup_filter([1, 3, 3, 1]).double(),                        # 2-D outer product (rank 1)
        torch.tensor(rng.standard_normal((3, 4))),                  # random, not separable
        torch.tensor(rng.standard_normal((1, 5))),                  # single row
    ]
    for f in filters:
        out = upfirdn2d(x, f, up=list(up), down=list(down), padding=list(pad), flip_filter=flip, gain=1.7)
        ref = naive_upfirdn2d(x.numpy(), full2d(f), up, down, pad, flip, 1.7)
        assert out.shape == ref.shape
        np.testing.assert_allclose(out.numpy(), ref, rtol=1e-10, atol=1e-10)


def test_float32_rank1_factorisation_stays_accurate():
    """2-D float32 filters from setup_filter run as two 1-D passes; results stay at fp32 accuracy."""
    x = torch.randn(2, 4, 16, 16)
    f = setup_filter([1, 3, 3, 1])
    assert f.ndim == 2
    for kw in [dict(up=2, padding=[2, 1, 2, 1]), dict(down=2, padding=1), dict(padding=[2, 1, 2, 1])]:
        out = upfirdn2d(x, f, **kw, gain=4 if "up" in kw else 1)
        ref = naive_upfirdn2d(x.double().numpy(), full2d(f), (kw.get("up", 1),) * 2, (kw.get("down", 1),) * 2,
                              tuple(kw["padding"]) if isinstance(kw["padding"], list) else (1, 1, 1, 1),
                              gain=4 if "up" in kw else 1)
        np.testing.assert_allclose(out.numpy(), ref, rtol=1e-5, atol=1e-5)


def test_filter_none_is_identity_and_int_args():
    x = torch.randn(1, 2, 5, 6, dtype=torch.float64)
    torch.testing.assert_close(upfirdn2d(x, None), x)
    out = upfirdn2d(x, None, up=2)
    assert out.shape == (1, 2, 10, 12)
    torch.testing.assert_close(out[:, :, ::2, ::2], x)
    assert out[:, :, 1::2].abs().max() == 0
    torch.testing.assert_close(upfirdn2d(x, None, down=2), x[:, :, ::2, ::2])
    torch.testing.assert_close(upfirdn2d(x, None, padding=-1), x[:, :, 1:-1, 1:-1])


def test_setup_filter():
    f = setup_filter([1, 3, 3, 1])
    assert f.dtype == torch.float32 and f.shape == (4, 4) and not f.requires_grad
    torch.testing.assert_close(f.sum(), torch.tensor(1.0))
    torch.testing.assert_close(f, torch.outer(torch.tensor([1.0, 3, 3, 1]), torch.tensor([1.0, 3, 3, 1])) / 64)
    g = setup_filter(np.ones(8))  # >= 8 taps: kept separable by default
    assert g.shape == (8,)
    torch.testing.assert_close(torch.outer(g, g).sum(), torch.tensor(1.0))
    s = setup_filter([1, 2, 1], separable=True, gain=4)
    assert s.shape == (3,)
    torch.testing.assert_close(torch.outer(s, s).sum(), torch.tensor(4.0))
    torch.testing.assert_close(setup_filter([1, 2, 1], gain=4).sum(), torch.tensor(4.0))
    torch.testing.assert_close(setup_filter([1, 2], flip_filter=True, normalize=False),
                               torch.tensor([[4.0, 2.0], [2.0, 1.0]]))
    assert setup_filter(None).shape == (1, 1)
    assert setup_filter(torch.tensor([[1.0, 2.0]])).shape == (1, 2)
    with pytest.raises(ValueError):
        setup_filter(torch.zeros(2, 2, 2))
    with pytest.raises(ValueError):
        setup_filter([])
    with pytest.raises(ValueError):
        setup_filter([[1.0, 2.0]], separable=True)


@pytest.mark.parametrize("taps", [[1, 1], [1, 3, 3, 1], [1, 2, 1], [1, 3, 5, 7, 7, 5, 3, 1]])
@pytest.mark.parametrize("factor", [2, 4])
def test_helpers_sizes_and_dc_gain(taps, factor):
    f = setup_filter(taps)
    x = torch.full([1, 2, 32, 24], 0.75)
    up = upsample2d(x, f, up=factor)
    assert up.shape == (1, 2, 32 * factor, 24 * factor)
    down = downsample2d(x, f, down=factor)
    assert down.shape == (1, 2, 32 // factor, 24 // factor)
    flt = filter2d(x, f)
    assert flt.shape == x.shape
    # Away from the zero-padded borders the DC gain is 1: exactly per pixel for filtering and
    # downsampling, on average over every `factor` x `factor` phase block for upsampling (short
    # filters are not interpolators for factor 4, so single phases may differ).
    m = len(taps)
    mu, md = -(-m // factor) * factor, -(-m // factor)
    inner = up[:, :, mu:-mu, mu:-mu]
    torch.testing.assert_close(inner.mean(), torch.tensor(0.75))
    if factor == 2:
        torch.testing.assert_close(inner, torch.full_like(inner, 0.75))
    torch.testing.assert_close(down[:, :, md:-md, md:-md], torch.full_like(down[:, :, md:-md, md:-md], 0.75))
    torch.testing.assert_close(flt[:, :, m:-m, m:-m], torch.full_like(flt[:, :, m:-m, m:-m], 0.75))
    assert upsample2d(x, f, up=factor, padding=1).shape == (1, 2, 32 * factor + 2, 24 * factor + 2)


def test_upsample_then_downsample_is_centred():
    """A symmetric filter must not shift the image: up then down returns a smoothed, unshifted copy."""
    f = setup_filter([1, 3, 3, 1])
    x = torch.zeros(1, 1, 16, 16, dtype=torch.float64)
    x[0, 0, 7:9, 7:9] = 1
    y = downsample2d(upsample2d(x, f), f)
    assert y.shape == x.shape
    torch.testing.assert_close(y, y.flip([2, 3]))  # still symmetric about 7.5
    torch.testing.assert_close(y.sum(), x.sum())


@pytest.mark.parametrize("kw", [dict(up=2, padding=[2, 1, 1, 2]), dict(down=2, padding=1),
                                dict(up=[1, 2], down=[3, 1], padding=[0, 2, -1, 1]), dict(padding=[1, -1, 2, 0])])
@pytest.mark.parametrize("fkind", ["sep", "rank1", "2d"])
def test_gradcheck_and_gradgradcheck(kw, fkind):
    torch.manual_seed(0)
    x = torch.randn(1, 2, 5, 6, dtype=torch.float64, requires_grad=True)
    f = {"sep": setup_filter([1, 2, 1], separable=True), "rank1": setup_filter([1, 3, 3, 1]),
         "2d": torch.rand(3, 2)}[fkind]
    fn = lambda x: upfirdn2d(x, f, gain=1.3, **kw)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))


def test_channels_and_dtypes():
    f = setup_filter([1, 3, 3, 1])
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        x = torch.randn(2, 5, 8, 8, dtype=dtype)
        assert upsample2d(x, f).dtype == dtype
        assert downsample2d(x, f).shape == (2, 5, 4, 4)
    x = torch.randn(2, 5, 8, 8).to(memory_format=torch.channels_last)
    torch.testing.assert_close(upsample2d(x, f), upsample2d(x.contiguous(), f))


def test_filter_cache_notices_in_place_edits():
    f = setup_filter([1, 3, 3, 1])
    x = torch.randn(1, 1, 8, 8, dtype=torch.float64)
    upfirdn2d(x, f, padding=2)  # caches the rank-1 factorisation
    with torch.no_grad():
        f.copy_(torch.rand(4, 4))
    ref = naive_upfirdn2d(x.numpy(), f.double().numpy(), pad=(2, 2, 2, 2))
    np.testing.assert_allclose(upfirdn2d(x, f, padding=2).numpy(), ref, rtol=1e-10, atol=1e-10)


def test_invalid_arguments():
    x = torch.randn(1, 2, 8, 8)
    f = setup_filter([1, 3, 3, 1])
    with pytest.raises(ValueError, match="x must"):
        upfirdn2d(torch.randn(2, 8, 8), f)
    with pytest.raises(ValueError, match="up"):
        upfirdn2d(x, f, up=0)
    with pytest.raises(ValueError, match="down"):
        upfirdn2d(x, f, down=[2, 2, 2])
    with pytest.raises(ValueError, match="padding"):
        upfirdn2d(x, f, padding=[1, 2, 3])
    with pytest.raises(ValueError, match="padding"):
        upfirdn2d(x, f, padding=1.5)
    with pytest.raises(ValueError, match="f must"):
        upfirdn2d(x, torch.ones(2, 2, 2))
    with pytest.raises(ValueError, match="empty"):
        upfirdn2d(x, f, padding=-4)
    with pytest.raises(ValueError, match="impl"):
        upfirdn2d(x, f, impl="bogus")


@pytest.mark.parametrize("seed", range(6))
def test_values_and_gradients_match_the_literal_implementation(seed):
    """Random configurations: every fast route (elementwise, polyphase, strided, separable) and the
    custom backward against zero-insertion + pad + 2-D conv + decimation differentiated by autograd."""
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    up = [int(v) for v in rng.integers(1, 4, 2)]
    down = [int(v) for v in rng.integers(1, 3, 2)]
    taps = int(rng.integers(1, 7))
    f = setup_filter(rng.random(taps) + 0.1, separable=bool(seed % 2)).double()
    pad = [int(v) for v in rng.integers(-1, taps + 1, 4)]
    x = torch.randn(2, 3, 6, 7, dtype=torch.float64, generator=gen, requires_grad=True)
    flip = bool(seed % 3 == 0)
    out = upfirdn2d(x, f, up=up, down=down, padding=pad, flip_filter=flip, gain=1.5)
    ref = autograd_upfirdn2d(x, f, up, down, pad, flip, 1.5)
    torch.testing.assert_close(out, ref)
    dy = torch.randn(out.shape, dtype=torch.float64, generator=gen)
    (g_out,) = torch.autograd.grad(out, x, dy)
    (g_ref,) = torch.autograd.grad(ref, x, dy)
    torch.testing.assert_close(g_out, g_ref)


def test_gradient_wrt_filter():
    """A filter that requires grad takes the plain-autograd route and gets a gradient."""
    x = torch.randn(1, 2, 5, 5, dtype=torch.float64)
    f = torch.rand(3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda f: upfirdn2d(x, f, up=2, padding=1), (f,))
    fs = torch.rand(4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda f: upfirdn2d(x, f, down=2, padding=1), (fs,))


def test_outputs_allow_in_place_updates():
    """Networks do `img = upsample2d(img, f); img.add_(y)`: outputs must not be custom-Function views."""
    f = setup_filter([1, 3, 3, 1])
    x = torch.randn(1, 2, 6, 6, requires_grad=True)
    for y in (upsample2d(x, f), downsample2d(x, f), filter2d(x, f), upfirdn2d(x, f, up=2, down=2, padding=[1, 2, 0, 3])):
        y.add_(1).mul_(2).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_no_grad_and_inference_mode():
    f = setup_filter([1, 3, 3, 1])
    x = torch.randn(1, 2, 6, 6)
    ref = upsample2d(x, f)
    with torch.no_grad():
        torch.testing.assert_close(upsample2d(x, f), ref)
    with torch.inference_mode():
        torch.testing.assert_close(upsample2d(x, f), ref)
    # Downsampling in inference mode agrees with the same call under autograd.
    down = downsample2d(x, f)
    with torch.inference_mode():
        torch.testing.assert_close(downsample2d(x, f), down)


def test_filter_made_in_inference_mode():
    with torch.inference_mode():
        f = setup_filter([1, 3, 3, 1])
        x = torch.randn(1, 2, 6, 6)
        y = upsample2d(x, f)
    torch.testing.assert_close(y, upsample2d(x.clone(), setup_filter([1, 3, 3, 1])))
