"""Tests for training/augment.py: the ADA pipe, presets, controller and mode factory."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torch.utils._python_dispatch

from training import augment
from training.augment import AdaController, AugmentPipe, augpipe_specs, build_augment_pipe, make_augment

PRESETS = ["blit", "geom", "color", "filter", "noise", "cutout", "bg", "bgc", "bgcf", "bgcfn", "bgcfnc"]


def _pipe(p: float = 1.0, **kwargs) -> AugmentPipe:
    pipe = AugmentPipe(**kwargs)
    pipe.p.fill_(p)
    return pipe


def _smooth_images(n: int = 4, c: int = 3, size: int = 16, seed: int = 0) -> torch.Tensor:
    """Low-frequency images in about [-1, 1] (natural-image-like, so resampling is benign)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand([n, c, 4, 4], generator=g) * 1.6 - 0.8
    return F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)


# ---------------------------------------------------------------------------------------------------
# Presets and construction.


def test_presets_match_the_documented_letters():
    assert sorted(augpipe_specs) == sorted(PRESETS)
    assert len(augpipe_specs["bgc"]) == 12 and len(augpipe_specs["bgcfnc"]) == 15
    assert set(augpipe_specs["bg"]) == set(augpipe_specs["blit"]) | set(augpipe_specs["geom"])
    assert all(v == 1 for spec in augpipe_specs.values() for v in spec.values())
    for name in PRESETS:
        assert build_augment_pipe(name).p.item() == 0


def test_unknown_preset_raises_naming_it():
    with pytest.raises(ValueError, match="bgcx"):
        build_augment_pipe("bgcx")


@pytest.mark.parametrize("kwargs", [{"xflip": -1}, {"scale_std": float("nan")}, {"imgfilter_bands": [1, 1]},
                                    {"hue": "1"}])
def test_bad_constructor_arguments_raise(kwargs):
    with pytest.raises(ValueError):
        AugmentPipe(**kwargs)


def test_init_kwargs_rebuild_and_state_dict():
    pipe = build_augment_pipe("bgcfnc")
    pipe.p.fill_(0.3)
    kwargs = json.loads(json.dumps(pipe.init_kwargs))
    clone = AugmentPipe(**kwargs)
    assert clone.init_kwargs == pipe.init_kwargs
    assert list(pipe.state_dict()) == ["p"]
    clone.load_state_dict(pipe.state_dict())
    assert clone.p.item() == pytest.approx(0.3)
    x = _smooth_images()
    torch.manual_seed(5)
    a = pipe(x)
    torch.manual_seed(5)
    b = clone(x)
    assert torch.equal(a, b)  # same global RNG state -> same augmentation
    assert not torch.equal(a, x)


# ---------------------------------------------------------------------------------------------------
# Identity at p = 0 and for samples no op hits.


@pytest.mark.parametrize("name", PRESETS)
def test_p0_is_bitwise_identity(name):
    pipe = build_augment_pipe(name)
    x = torch.randn(4, 3, 16, 16)
    state = torch.get_rng_state()
    y = pipe(x)
    assert y is x
    assert torch.equal(torch.get_rng_state(), state)  # nothing drawn: resume-safe


class _OpCounter(torch.utils._python_dispatch.TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops: dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        self.ops[name] = self.ops.get(name, 0) + 1
        return func(*args, **(kwargs or {}))


def test_pipe_syncs_with_the_device_only_when_p_changed():
    """On a GPU, reading p and copying host numbers to the device both wait for the GPU to catch up (a
    host sync). A call with an unchanged p does neither (reading p: `_local_scalar_dense`; host data
    made a tensor: `lift_fresh`), and every in-place change of p is still seen."""
    pipe = build_augment_pipe("bgcfnc")
    x = _smooth_images()
    assert pipe(x) is x
    pipe.p.fill_(0.5)
    assert not torch.equal(pipe(x), x)
    with _OpCounter() as counter:
        pipe(x)
        AdaController(pipe, batch_size=4).accumulate(torch.randn(4, 1))
    assert counter.ops.get("_local_scalar_dense", 0) == 0 and counter.ops.get("lift_fresh", 0) == 0
    pipe.load_state_dict({"p": torch.tensor(0.0)})
    assert pipe(x) is x
    pipe.p.add_(0.25)
    assert pipe.p_value() == 0.25 and not torch.equal(pipe(x), x)


def test_pipe_made_under_inference_mode_still_runs():
    """Its p is then an inference tensor, which has no version counter to cache p's value by."""
    with torch.inference_mode():
        pipe = build_augment_pipe("bgc")
        x = _smooth_images()
        assert pipe(x) is x
        pipe.p.fill_(0.5)
        assert pipe.p_value() == 0.5 and not torch.equal(pipe(x), x)


def test_untouched_samples_are_bitwise_unchanged():
    # p so small that no op fires: every stage runs, yet each sample must come out bit for bit.
    pipe = build_augment_pipe("bgcfnc")
    pipe.p.fill_(1e-7)
    x = torch.randn(4, 3, 16, 16)
    x[0, 0, 0, 0] = -0.0
    torch.manual_seed(0)
    y = pipe(x)
    assert torch.equal(y, x) and torch.equal(y.view(torch.int32), x.view(torch.int32))


def test_uses_global_rng_and_differs_per_sample():
    pipe = _pipe(scale=1, rotate=1, brightness=1)
    x = _smooth_images(n=1).expand(4, -1, -1, -1).contiguous()
    torch.manual_seed(1)
    a = pipe(x)
    torch.manual_seed(1)
    assert torch.equal(a, pipe(x))
    assert not torch.allclose(a[0], a[1])


@pytest.mark.parametrize("name, shape, dtype", [
    ("bgcfnc", (4, 1, 16, 16), torch.float32),  # grey images
    ("bgcfnc", (4, 3, 16, 16), torch.float16),  # half in, half out (computed in float32)
    ("geom", (4, 3, 16, 8), torch.float32),  # non-square
])
def test_full_pipe_on_other_inputs(name, shape, dtype):
    pipe = build_augment_pipe(name)
    pipe.p.fill_(1)
    x = (torch.rand(shape) * 2 - 1).to(dtype)
    torch.manual_seed(0)
    y = pipe(x)
    assert y.shape == x.shape and y.dtype == dtype and torch.isfinite(y).all()
    assert not torch.equal(y, x)


# ---------------------------------------------------------------------------------------------------
# Pixel blitting.


def test_xflip_gives_flipped_or_original_samples():
    x = torch.arange(8 * 3 * 16 * 16, dtype=torch.float32).reshape(8, 3, 16, 16)
    torch.manual_seed(0)
    y = _pipe(xflip=1)(x)
    flipped = [torch.equal(y[i], torch.flip(x[i], dims=[2])) for i in range(8)]
    same = [torch.equal(y[i], x[i]) for i in range(8)]
    assert all(f != s for f, s in zip(flipped, same))
    assert any(flipped) and any(same)


def test_rotate90_gives_one_of_four_rotations():
    x = torch.arange(8 * 16 * 16, dtype=torch.float32).reshape(8, 1, 16, 16)
    torch.manual_seed(0)
    y = _pipe(rotate90=1)(x)
    seen = set()
    for i in range(8):
        ks = [k for k in range(4) if torch.equal(y[i], torch.rot90(x[i], k, dims=[1, 2]))]
        assert len(ks) == 1
        seen.add(ks[0])
    assert len(seen) >= 3


def test_rotate90_needs_square_images():
    with pytest.raises(ValueError, match="square"):
        _pipe(rotate90=1)(torch.zeros(2, 3, 16, 8))


def test_xint_is_an_integer_shift_with_reflection():
    x = torch.randn(8, 3, 16, 16)
    torch.manual_seed(0)
    y = _pipe(xint=1)(x)
    shifts = set()
    for i in range(8):
        found = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                 if torch.equal(y[i, :, 2:-2, 2:-2], torch.roll(x[i], (dy, dx), dims=(1, 2))[:, 2:-2, 2:-2])]
        assert len(found) == 1
        (dy, dx), = found
        shifts.add((dy, dx))
        # The borders are mirrored about the edge pixels (numpy's 'reflect').
        padded = np.pad(x[i].numpy(), ((0, 0), (2, 2), (2, 2)), mode="reflect")
        assert np.array_equal(y[i].numpy(), padded[:, 2 - dy:18 - dy, 2 - dx:18 - dx])
    assert len(shifts) > 1


# ---------------------------------------------------------------------------------------------------
# General geometry.


def test_geometric_resampling_is_aligned():
    # Replace the random matrix by a translation of exactly one pixel: must equal a roll.
    pipe = _pipe(xfrac=1)
    pipe._geometric_matrix = lambda n, w, h, p, dev: augment._translate2d(-1.0, 0.0, n, dev)
    x = _smooth_images(n=2)
    y = pipe(x)
    assert torch.allclose(y[..., 1:-1, 2:-2], torch.roll(x, 1, dims=3)[..., 1:-1, 2:-2], atol=1e-4)
    # A near-identity matrix goes through the whole up/sample/down chain and gives the input back.
    pipe._geometric_matrix = lambda n, w, h, p, dev: augment._scale2d(1 + 1e-7, 1.0, n, dev)
    assert torch.allclose(pipe(x), x, atol=1e-4)


def test_static_padding_samples_the_same_images_without_reading_the_device(monkeypatch):
    """static_padding (for CUDA graphs) pads to the largest possible reach: the same augmented images and
    gradients up to rounding, untransformed samples bit for bit, and no host read (the dynamic padding
    reads the batch's reach back with one `tolist()`)."""
    reads = []
    tolist = torch.Tensor.tolist
    monkeypatch.setattr(torch.Tensor, "tolist", lambda t: reads.append(1) or tolist(t))
    x = _smooth_images(n=8, size=16).requires_grad_(True)
    results = []
    for static in (False, True):
        pipe = build_augment_pipe("geom")
        pipe.p.fill_(0.2)
        pipe.static_padding = static
        pipe.p_value()  # p read once (its value is then cached until p changes)
        torch.manual_seed(1)
        reads.clear()
        with _OpCounter() as counter:
            y = pipe(x)
        (grad,) = torch.autograd.grad(y.square().sum(), x)
        results.append((y.detach(), grad, len(reads) + counter.ops.get("_local_scalar_dense", 0)))
    (y0, g0, reads0), (y1, g1, reads1) = results
    assert (reads0, reads1) == (1, 0)
    moved = (y0 - x).detach().flatten(1).abs().amax(dim=1) > 1e-3
    assert 0 < moved.sum() < 8
    torch.testing.assert_close(y1, y0, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(g1, g0, atol=1e-4, rtol=1e-4)
    assert torch.equal(y1[~moved], y0[~moved])


def test_geom_changes_images_but_keeps_mean():
    x = _smooth_images(n=8, size=32) + 0.2
    torch.manual_seed(0)
    y = build_augment_pipe("geom").requires_grad_(False)
    y.p.fill_(1)
    out = y(x)
    assert out.shape == x.shape
    changed = (out - x).flatten(1).abs().amax(dim=1) > 0.05
    assert changed.sum() >= 6
    assert abs(out.mean().item() - x.mean().item()) < 0.05


def test_geom_of_constant_image_stays_constant():
    x = torch.full([4, 3, 16, 16], 0.5)
    torch.manual_seed(3)
    pipe = _pipe(scale=1, aniso=1, xfrac=1, scale_std=0.1, aniso_std=0.1, xfrac_std=0.05)
    assert torch.allclose(pipe(x), x, atol=1e-4)  # reflect padding: no dark borders


# ---------------------------------------------------------------------------------------------------
# Colour.


def _grey(n: int = 8, size: int = 16) -> torch.Tensor:
    return _smooth_images(n=n, c=1, size=size).expand(-1, 3, -1, -1).contiguous()


def test_lumaflip_keeps_grey_images_grey():
    x = _grey()
    torch.manual_seed(0)
    y = _pipe(lumaflip=1)(x)
    assert torch.allclose(y[:, 0], y[:, 1], atol=1e-6) and torch.allclose(y[:, 0], y[:, 2], atol=1e-6)
    negated = [torch.allclose(y[i], -x[i], atol=1e-5) for i in range(8)]
    kept = [torch.equal(y[i], x[i]) for i in range(8)]
    assert all(a != b for a, b in zip(negated, kept)) and any(negated) and any(kept)


def test_brightness_shifts_every_pixel_equally():
    x = _grey()
    torch.manual_seed(0)
    y = _pipe(brightness=1)(x)
    shift = (y - x).flatten(1)
    assert torch.allclose(shift, shift[:, :1].expand_as(shift), atol=1e-6)
    assert shift[:, 0].abs().max() > 0.05
    assert torch.allclose(y.mean(dim=(1, 2, 3)) - x.mean(dim=(1, 2, 3)), shift[:, 0], atol=1e-6)


def test_hue_and_saturation_leave_grey_alone_and_change_colour():
    pipe = _pipe(hue=1, saturation=1)
    torch.manual_seed(0)
    assert torch.allclose(pipe(_grey()), _grey(), atol=1e-5)
    coloured = _smooth_images(n=8)
    torch.manual_seed(0)
    y = pipe(coloured)
    # Both ops keep the luma (channel mean) and change the chroma.
    assert torch.allclose(y.mean(dim=1), coloured.mean(dim=1), atol=1e-5)
    assert (y - coloured).abs().max() > 0.05


def test_colour_on_single_channel_images():
    x = _smooth_images(n=8, c=1)
    torch.manual_seed(0)
    y = _pipe(lumaflip=1, hue=1, saturation=1)(x)  # hue/saturation skipped for grey
    assert all(torch.equal(y[i], x[i]) or torch.allclose(y[i], -x[i], atol=1e-6) for i in range(8))
    with pytest.raises(ValueError, match="channels"):
        _pipe(contrast=1)(torch.zeros(2, 4, 8, 8))


# ---------------------------------------------------------------------------------------------------
# Filter, noise, cutout.


def test_filter_bank_partitions_the_spectrum():
    bank = augment._filter_bank(augment.SYM2_LO)
    taps = bank.shape[1]
    impulse = np.zeros(taps)
    impulse[taps // 2] = 1
    assert np.allclose(bank.sum(axis=0), impulse, atol=1e-12)
    assert np.allclose(bank, bank[:, ::-1])  # zero phase
    k = np.arange(taps) - taps // 2
    response = bank @ np.cos(np.outer(k, [0, np.pi]))
    assert np.allclose(response[:, 0], [1, 0, 0, 0], atol=1e-9)  # DC only in the lowest band
    assert np.allclose(response[:, 1], [0, 0, 0, 1], atol=1e-9)  # Nyquist only in the highest


def test_imgfilter_changes_detail_but_not_constant_images_much():
    torch.manual_seed(0)
    x = torch.randn(8, 3, 16, 16) * 0.5
    y = _pipe(imgfilter=1)(x)
    assert (y - x).flatten(1).abs().amax(dim=1).gt(0.05).sum() >= 6
    torch.manual_seed(0)
    flat = _pipe(imgfilter=1, imgfilter_bands=[0, 1, 1, 1])(torch.full([4, 3, 16, 16], 0.5))
    per_sample = flat.flatten(1)
    assert torch.allclose(per_sample, per_sample[:, :1].expand_as(per_sample), atol=1e-5)


def test_noise_and_cutout():
    x = torch.full([8, 3, 16, 16], 0.5)
    torch.manual_seed(0)
    y = _pipe(noise=1)(x)
    std = (y - x).flatten(1).std(dim=1)
    assert (std > 1e-3).all() and std.max() < 0.5
    torch.manual_seed(0)
    y = _pipe(cutout=1)(x)
    zeros = (y == 0).all(dim=1).flatten(1).sum(dim=1)
    assert ((zeros > 0) & (zeros <= 64)).all()  # at most an 8x8 square, clipped at the borders
    assert (zeros == 64).any()


# ---------------------------------------------------------------------------------------------------
# Gradients (R1 takes a gradient through the pipe and backpropagates it again).


def test_first_and_second_order_gradients_through_geom():
    conv = torch.nn.Conv2d(3, 4, 3, padding=1)
    pipe = build_augment_pipe("bgc")
    pipe.p.fill_(1)
    x = _smooth_images(n=4).requires_grad_(True)
    torch.manual_seed(0)
    logits = F.leaky_relu(conv(pipe(x)), 0.2).sum(dim=(1, 2, 3))
    (grad,) = torch.autograd.grad(logits.sum(), x, create_graph=True)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    penalty = grad.square().sum()
    penalty.backward()
    assert conv.weight.grad is not None and torch.isfinite(conv.weight.grad).all()
    assert conv.weight.grad.abs().sum() > 0


@pytest.mark.slow  # ~1 s alone, ~20 s with 2 threads on a loaded 2-core machine
def test_gradgradcheck_full_pipe():
    pipe = build_augment_pipe("bgcfnc").double()
    pipe.p.fill_(1)
    x = _smooth_images(n=2, size=8).double().requires_grad_(True)

    def fn(images):
        torch.manual_seed(2)  # the same augmentation on every evaluation
        return pipe(images)

    # fast_mode checks random projections of the Jacobians: a few evaluations instead of hundreds.
    assert torch.autograd.gradcheck(fn, (x,), eps=1e-6, atol=1e-5, fast_mode=True)
    assert torch.autograd.gradgradcheck(fn, (x,), eps=1e-6, atol=1e-5, fast_mode=True)


# ---------------------------------------------------------------------------------------------------
# AdaController and make_augment.


def _controller(p: float = 0.0, **kwargs) -> AdaController:
    pipe = build_augment_pipe("bgc")
    pipe.p.fill_(p)
    kwargs.setdefault("batch_size", 64)
    return AdaController(pipe, **kwargs)


def test_controller_step_size_and_interval():
    ctl = _controller(batch_size=32, interval=4, kimg=500)
    for i in range(3):
        ctl.accumulate(torch.ones(32, 1))
        assert ctl.step() is False and ctl.p == 0
    ctl.accumulate(torch.ones(32, 1))
    assert ctl.step() is True
    assert ctl.p == pytest.approx(32 * 4 / 500_000)
    assert ctl.rt.item() == 1.0


def test_controller_keeps_p_in_unit_interval():
    ctl = _controller(kimg=0.5)  # fast: 0.512 per adjustment
    seen = []
    for _ in range(40):  # sustained overfitting
        ctl.accumulate(torch.full([64, 1], 3.0))
        ctl.step()
        seen.append(ctl.p)
    assert max(seen) == 1.0 and all(0 <= p <= 1 for p in seen)
    for _ in range(40):  # D no longer overfits at all
        ctl.accumulate(torch.full([64, 1], -3.0))
        ctl.step()
        seen.append(ctl.p)
    assert seen[-1] == 0.0 and min(seen) == 0.0


def test_controller_without_stats_leaves_p():
    ctl = _controller(p=0.25, interval=1)
    assert ctl.step() is True and ctl.p == 0.25


def test_controller_reduce_fn_sees_sum_and_count():
    calls = []

    def reduce_fn(stats):  # pretend a second rank saw 3 strongly negative samples (in place)
        calls.append(stats.clone())
        stats += torch.tensor([-3.0, 3.0], dtype=stats.dtype)

    ctl = _controller(p=0.5, interval=1, reduce_fn=reduce_fn)
    ctl.accumulate(torch.tensor([1.0, 1.0]))
    ctl.step()
    assert torch.equal(calls[0], torch.tensor([2.0, 2.0], dtype=torch.float64))
    assert ctl.rt.item() == pytest.approx(-0.2) and ctl.p < 0.5


def test_controller_state_dict_round_trip():
    a = _controller(p=0.5, interval=4, kimg=1)
    torch.manual_seed(0)
    logits = [torch.randn(64, 1) + 0.5 for _ in range(10)]
    for t in logits[:6]:
        a.accumulate(t)
        a.step()
    state = a.state_dict()
    buffer = io.BytesIO()
    torch.save({"ada": state, "pipe": a.pipe.state_dict()}, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    b = AdaController(build_augment_pipe("bgc"), interval=4, kimg=1, batch_size=64)
    b.pipe.load_state_dict(loaded["pipe"])
    b.load_state_dict(loaded["ada"])
    assert b.state_dict() == state and state["count"] == 128 and state["batch_idx"] == 6
    for t in logits[6:]:
        for ctl in (a, b):
            ctl.accumulate(t)
            ctl.step()
    assert a.p == b.p and a.p != 0.5
    with pytest.raises(ValueError, match="missing"):
        b.load_state_dict({"sum": 0.0})


def test_make_augment_modes():
    assert make_augment("noaug") == (None, None)
    pipe, ctl = make_augment("fixed", "bg", p=0.3)
    assert ctl is None and pipe.p.item() == pytest.approx(0.3) and pipe.init_kwargs["xflip"] == 1
    pipe, ctl = make_augment("ada", "bgc", target=0.5, batch_size=16)
    assert isinstance(ctl, AdaController) and ctl.pipe is pipe and ctl.target == 0.5 and pipe.p.item() == 0


@pytest.mark.parametrize("args, kwargs, match", [
    (("ada", "bgc"), {"p": 0.2, "batch_size": 8}, "p="),
    (("noaug",), {"p": 0.2}, "p="),
    (("fixed", "bgc"), {}, "p is required"),
    (("fixed", "bgc"), {"p": 1.5}, "p must be"),
    (("ada", "bgc"), {"target": 1.0, "batch_size": 8}, "target"),
    (("ada", "bgc"), {}, "batch_size"),
    (("augment", "bgc"), {}, "mode"),
    (("fixed", "bgcx"), {"p": 0.1}, "augpipe"),
])
def test_make_augment_rejects_invalid_combinations(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_augment(*args, **kwargs)


def test_band_gains_normalise_each_band_then_compose():
    draws = torch.tensor([[2.0, 3.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]], dtype=torch.float64)
    gains = augment.band_gains(draws)
    n0 = np.sqrt((10 * 4 + 1 + 1 + 1) / 13)   # band 0 doubled
    n1 = np.sqrt((10 + 9 + 1 + 1) / 13)       # band 1 tripled
    expected = np.array([2, 1, 1, 1]) / n0 * np.array([1, 3, 1, 1]) / n1
    assert np.allclose(gains[0].numpy(), expected)
    joint = np.array([2, 3, 1, 1]) / np.sqrt((40 + 9 + 1 + 1) / 13)
    assert not np.allclose(gains[0].numpy(), joint)  # not one normalisation of the product
    assert np.allclose(gains[1].numpy(), 1)
