"""Tests for training/heatmaps.py: spec container, rendering, samplers' statistics and determinism."""

import json
import math

import numpy as np
import pytest
import torch

from training.heatmaps import (
    SAMPLERS,
    HeatmapSpec,
    as_int,
    build_sampler,
    compose,
    gaussian,
    render,
    truncated_normal_moments,
)

DRAWS = 20_000


@pytest.fixture(scope="module")
def hier():
    return build_sampler("hierarchical")(DRAWS, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def eqgan():
    return build_sampler("eqgan")(DRAWS, generator=torch.Generator().manual_seed(2))


def _small_spec(n=2, seeds=True):
    return build_sampler("multi_object")(n, generator=5) if seeds else build_sampler("hierarchical")(n, 5)


# -- sampler statistics --------------------------------------------------------------------------------


def test_hierarchical_level0_is_truncated_normal(hier):
    c0 = hier.centers[0][:, 0]
    assert hier.centers_per_level == [1, 2, 4] and hier.hierarchical and hier.kind == "hierarchical"
    assert c0.min() >= 0 and c0.max() <= 1
    mean, std = truncated_normal_moments(0.5, 1 / 3, 0.0, 1.0)
    assert std < 1 / 3 - 0.05  # The truncation matters, so the next check can tell the laws apart.
    for axis in range(2):
        assert abs(c0[:, axis].mean().item() - mean) < 0.01
        assert abs(c0[:, axis].std().item() - std) < 0.01


def test_hierarchical_deeper_levels_follow_level0(hier):
    c0 = hier.centers[0]
    for lvl in (1, 2):
        off = hier.centers[lvl] - c0
        assert abs(off.mean().item()) < 0.01
        assert abs(off.std().item() - 1 / 6) < 0.01
    # Not clipped: some level-2 centres fall off the image.
    outside = ((hier.centers[2] < 0) | (hier.centers[2] > 1)).any(-1).float().mean().item()
    assert 0 < outside < 0.2


def test_hierarchical_sigma_ranges_and_variety(hier):
    for s, (lo, hi) in zip(hier.sigmas, ((0.25, 0.35), (0.09, 0.31), (0.08, 0.26))):
        assert s.min() >= lo and s.max() <= hi
        assert s.min() < lo + 0.01 and s.max() > hi - 0.01  # The whole range is used.
    assert hier.sigmas[0].std() > 0.02                                 # Per sample, not per batch.
    assert (hier.sigmas[1][:, 0] != hier.sigmas[1][:, 1]).all()          # Per centre.
    assert hier.style_seeds is None and hier.noise is None and all(a.eq(1).all() for a in hier.alive)


def test_eqgan_clamp_offsets_and_sigmas(eqgan):
    c0 = eqgan.centers[0]
    assert c0.min() >= 0.125 - 1e-6 and c0.max() <= 0.875 + 1e-6
    at_bound = ((c0 - 0.5).abs() > 0.375 - 1e-6).float().mean().item()
    expected = math.erfc(0.75 / 0.33 / math.sqrt(2))  # P(|N(0, 0.33)| > 0.75)
    assert abs(at_bound - expected) < 0.006
    for lvl, a in ((1, 0.2), (2, 0.4)):
        off = eqgan.centers[lvl] - c0
        assert off.abs().max() <= a + 1e-6 and off.abs().max() > 0.97 * a
        assert abs(off.std().item() - a / math.sqrt(3)) < 0.01  # Uniform, not Gaussian.
    bounds = [(0.5, 1.0), (0.1 / 1.4, 1.1 / 1.4), (0.05, 0.55)]
    for s, (lo, hi) in zip(eqgan.sigmas, bounds):
        std_lo, std_hi = math.sqrt(lo / 2) / 2, math.sqrt(hi / 2) / 2
        assert s.min() >= std_lo - 1e-6 and s.max() <= std_hi + 1e-6 and s.min() < std_lo + 0.01
    assert eqgan.sigmas[0].std() > 0.02 and eqgan.hierarchical


def test_eqgan_gaussian_form_matches_conference_definition():
    spec = build_sampler("eqgan")(1, generator=3)
    c, s = spec.centers[1][0, 0], spec.sigmas[1][0, 0]
    # Recover s from the std and evaluate exp(-d^2/s) in [-1, 1] coordinates at one pixel centre.
    s_conf = 2 * (2 * s) ** 2
    p = torch.tensor([0.25, 0.65])  # pixel centre of column 2, row 6 at r = 10
    d2_u = ((2 * p - 1) - (2 * c - 1)).square().sum()
    ours = gaussian(c.view(1, 1, 2), s.view(1, 1), 10)[0, 0]
    assert torch.allclose(ours[6, 2], torch.exp(-d2_u / s_conf), atol=1e-5)


def test_non_hierarchical_levels_are_independent():
    spec = build_sampler("non_hierarchical")(5000, generator=4)
    assert not spec.hierarchical
    for c in spec.centers:
        assert c.min() >= 0 and c.max() <= 1
    x0, x1 = spec.centers[0][:, 0, 0], spec.centers[1][:, 0, 0]
    assert abs(torch.corrcoef(torch.stack([x0, x1]))[0, 1].item()) < 0.05
    h = build_sampler("hierarchical")(5000, generator=4)
    assert torch.corrcoef(torch.stack([h.centers[0][:, 0, 0], h.centers[1][:, 0, 0]]))[0, 1] > 0.5


def test_noise_sampler():
    sampler = build_sampler("noise")
    spec = sampler(64, generator=6)
    assert [tuple(z.shape[-2:]) for z in spec.noise] == [(4, 4), (8, 8), (16, 16)]
    # The composed map of each level (what G is given) is one noise field in [0, 1] around 0.5 with
    # std ~0.25, whatever the number of sub-maps: not a sum of K fields piling up at K / 2.
    for level, k in enumerate([1, 2, 4]):
        field = compose(render(spec, spec.noise[level].shape[-1], level), "sum")
        assert spec.noise[level].shape[1] == k and field.min() >= 0 and field.max() <= 1
        assert abs(field.mean().item() - 0.5) < 0.02 and 0.2 < field.std().item() < 0.26, level
        assert (field == 1).float().mean() < 0.05  # not saturated
    assert torch.equal(render(spec, 8, 1), spec.noise[1])
    up = render(spec, 32, 0)
    assert up.shape == (64, 1, 32, 32)
    assert not torch.allclose(up, gaussian(spec.centers[0], spec.sigmas[0], 32))


def test_multi_object_sampler():
    sampler = build_sampler("multi_object")
    spec = sampler(DRAWS, generator=7)
    assert spec.num_levels == 1 and spec.centers_per_level == [3] and sampler.level_resolutions == (4,)
    c = spec.centers[0]
    assert c.min() >= 0 and c.max() <= 1
    mean, std = truncated_normal_moments(0.5, 0.5, 0.0, 1.0)
    assert abs(c.mean().item() - mean) < 0.01 and abs(c.std().item() - std) < 0.01
    assert spec.sigmas[0].min() >= 0.08 and spec.sigmas[0].max() <= 0.2
    seeds = spec.style_seeds
    assert seeds.dtype == torch.int64 and seeds.shape == (DRAWS, 3)
    assert seeds.min() >= 0 and seeds.max() < 2**31 and seeds.unique().numel() > 0.99 * seeds.numel()


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_sampler_determinism_and_rebuild(name):
    sampler = build_sampler(name)
    a = sampler(4, generator=torch.Generator().manual_seed(11))
    b = sampler(4, generator=11)
    c = sampler(4, generator=12)
    assert a.to_json() == b.to_json()
    assert a.to_json() != c.to_json()
    rebuilt = build_sampler(sampler.name, **json.loads(json.dumps(sampler.init_kwargs)))
    assert rebuilt(4, generator=11).to_json() == a.to_json()
    assert len(sampler.level_resolutions) == a.num_levels


def test_build_sampler_errors():
    with pytest.raises(ValueError, match="nope"):
        build_sampler("nope")
    with pytest.raises(TypeError, match="hierarchical"):
        build_sampler("hierarchical", bogus=1)
    with pytest.raises(ValueError, match="sigma_ranges"):
        build_sampler("hierarchical", sigma_ranges=((0.2, 0.1), (0.1, 0.2), (0.1, 0.2)))
    with pytest.raises(ValueError, match="batch_size"):
        build_sampler("hierarchical")(0)


# -- rendering -----------------------------------------------------------------------------------------


def test_render_known_values_and_orientation():
    r = 8
    centers = torch.tensor([[[2.5 / r, 5.5 / r]]])  # x = column 2, y = row 5
    sigmas = torch.tensor([[1.0 / r]])
    spec = HeatmapSpec(centers=[centers], sigmas=[sigmas])
    m = render(spec, r, 0)[0, 0]
    assert m.shape == (r, r)
    assert torch.isclose(m[5, 2], torch.tensor(1.0))
    assert m.argmax().item() == 5 * r + 2
    for row, col in ((5, 3), (5, 1), (4, 2), (6, 2)):  # one pixel = one sigma away
        assert torch.isclose(m[row, col], torch.tensor(math.exp(-0.5)), atol=1e-6)
    assert torch.isclose(m[6, 3], torch.tensor(math.exp(-1.0)), atol=1e-6)
    assert m.min() >= 0 and m.max() <= 1


def test_render_alive_and_compose():
    spec = _small_spec(seeds=False)
    spec.alive[1][0, 1] = 0
    maps = render(spec, 16, 1)
    assert maps[0, 1].abs().max() == 0 and maps[0, 0].max() > 0 and maps[1, 1].max() > 0
    summed = compose(render(spec, 16, 2), "sum")
    assert summed.shape == (2, 1, 16, 16) and summed.min() >= 0
    # H = sum of the sub-maps (paper §3.1), not clamped: overlapping blobs add up.
    torch.testing.assert_close(summed, render(spec, 16, 2).sum(1, keepdim=True))
    overlap = HeatmapSpec(centers=[torch.tensor([[[0.5, 0.5], [0.5, 0.5]]])], sigmas=[torch.full([1, 2], 0.2)],
                          alive=[torch.ones(1, 2)], kind="test")
    assert compose(render(overlap, 16, 0), "sum").max() > 1.9
    assert compose(maps, "separate") is maps
    with pytest.raises(ValueError, match="mode"):
        compose(maps, "mean")
    with pytest.raises(ValueError, match="level"):
        render(spec, 16, 3)


def test_gaussian_gradcheck():
    gen = torch.Generator().manual_seed(0)
    centers = torch.rand(2, 3, 2, generator=gen, dtype=torch.float64).requires_grad_()
    sigmas = (0.1 + 0.2 * torch.rand(2, 3, generator=gen, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(lambda c, s: gaussian(c, s, 5), (centers, sigmas))


def test_gaussian_of_a_tiny_sigma_on_a_pixel_centre_is_a_spike_not_nan():
    centers = torch.tensor([[[0.625, 0.625], [0.3, 0.7]]])   # the first sits on the centre of pixel (2, 2)
    sigmas = torch.tensor([[1e-30, 1e-30]])                  # sigma^2 underflows to 0 in float32
    g = gaussian(centers, sigmas, 4)
    assert torch.isfinite(g).all()
    assert g[0, 0, 2, 2] == 1 and g[0, 0].sum() == 1 and g[0, 1].sum() == 0


# -- container -------------------------------------------------------------------------------------------


def test_json_round_trip_and_file(tmp_path):
    spec = _small_spec()
    noise_spec = build_sampler("noise")(2, generator=1)
    for s in (spec, noise_spec):
        back = HeatmapSpec.from_json(json.loads(json.dumps(s.to_json())))
        assert back.to_json() == s.to_json()
        assert all(torch.equal(a, b) for a, b in zip(back.centers, s.centers))
        assert back.kind == s.kind and back.hierarchical == s.hierarchical
    path = tmp_path / "layout.json"
    spec.save(path)
    loaded = HeatmapSpec.load(path)
    assert torch.equal(loaded.style_seeds, spec.style_seeds) and torch.equal(loaded.sigmas[0], spec.sigmas[0])


def test_bad_json_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        HeatmapSpec.load(bad)
    d = _small_spec().to_json()
    d["sigmas"] = [[[0.1, 0.2]]]  # one sample, two centres: does not match centers [2, 3, 2]
    mismatch = tmp_path / "mismatch.json"
    mismatch.write_text(json.dumps(d))
    with pytest.raises(ValueError, match="mismatch.json"):
        HeatmapSpec.load(mismatch)
    ragged = dict(_small_spec().to_json(), centers=[[[0.1, 0.2], [0.3]]])
    with pytest.raises(ValueError, match="malformed"):
        HeatmapSpec.from_json(ragged)
    with pytest.raises(ValueError, match="version"):
        HeatmapSpec.from_json(dict(_small_spec().to_json(), version=99))
    with pytest.raises(ValueError, match="style_seeds"):
        HeatmapSpec(centers=[torch.zeros(1, 2, 2)], sigmas=[torch.ones(1, 2)],
                    style_seeds=torch.zeros(1, 3).long())


def test_batch_operations():
    spec = _small_spec(n=3)
    sel = spec.select([2, 0])
    assert sel.batch_size == 2 and torch.equal(sel.centers[0][0], spec.centers[0][2])
    assert torch.equal(sel.style_seeds[1], spec.style_seeds[0])
    rep = spec.repeat(2)
    assert rep.batch_size == 6 and torch.equal(rep.centers[0][3:], spec.centers[0])
    cat = HeatmapSpec.cat([spec, sel])
    assert cat.batch_size == 5 and torch.equal(cat.sigmas[0][3:], sel.sigmas[0])
    with pytest.raises(ValueError, match="centres per level"):
        HeatmapSpec.cat([spec, _small_spec(seeds=False)])
    with pytest.raises(ValueError, match="out of range"):
        spec.select([3])
    clone = spec.clone()
    clone.centers[0] += 1
    assert not torch.equal(clone.centers[0], spec.centers[0])
    c = spec.centers[0].clone().requires_grad_()
    det = HeatmapSpec(centers=[c], sigmas=spec.sigmas, alive=spec.alive).detach()
    assert not det.centers[0].requires_grad and det.to("cpu").device.type == "cpu"


# -- value checks ------------------------------------------------------------------------------------------


def _one(centers=((0.5, 0.5), (0.2, 0.8)), sigmas=(0.1, 0.2), **kw):
    return HeatmapSpec(centers=[torch.tensor([centers])], sigmas=[torch.tensor([sigmas])], **kw)


@pytest.mark.parametrize("kwargs,match", [
    (dict(centers=((0.5, math.nan), (0.2, 0.8))), r"centers\[0\] must be finite, got nan at index \[0, 0, 1\]"),
    (dict(centers=((0.5, 0.5), (math.inf, 0.8))), r"centers\[0\] must be finite, got inf at index \[0, 1, 0\]"),
    (dict(sigmas=(0.1, -0.2)), r"sigmas\[0\] must be finite and > 0, got -0.2 at index \[0, 1\]"),
    (dict(sigmas=(0.0, 0.2)), r"sigmas\[0\] must be finite and > 0, got 0 at index \[0, 0\]"),
    (dict(sigmas=(math.nan, 0.2)), r"sigmas\[0\] .* got nan"),
    (dict(sigmas=(0.1, math.inf)), r"sigmas\[0\] .* got inf"),
    (dict(alive=[torch.tensor([[1.0, math.nan]])]), r"alive\[0\] must be in \[0, 1\], got nan"),
    (dict(alive=[torch.tensor([[1.0, 2.0]])]), r"alive\[0\] must be in \[0, 1\], got 2"),
])
def test_constructor_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _one(**kwargs)


def test_check_values_catches_in_place_changes_and_noise():
    spec = _one()
    assert spec.check_values() is spec
    spec.sigmas[0][0, 1] = -1.0  # In-place writes bypass the constructor; check_values still sees them.
    with pytest.raises(ValueError, match=r"sigmas\[0\].*-1"):
        spec.check_values()
    noisy = build_sampler("noise")(1, generator=0)
    noisy.noise[2][0, 3, 5, 7] = math.nan
    with pytest.raises(ValueError, match=r"noise\[2\].*index \[0, 3, 5, 7\]"):
        noisy.check_values()
    # A boolean alive mask is still a valid 0/1 mask.
    assert _one(alive=[torch.tensor([[True, False]])]).alive[0].tolist() == [[True, False]]


def test_constructor_does_not_read_device_values():
    """Off the CPU the constructor only checks shapes (reading values would sync the GPU every step);
    meta tensors have no values at all, so any read would fail."""
    spec = HeatmapSpec(centers=[torch.empty(2, 3, 2, device="meta")], sigmas=[torch.empty(2, 3, device="meta")])
    assert spec.centers_per_level == [3] and spec.device.type == "meta"


def test_from_json_and_load_reject_bad_values(tmp_path):
    good = _small_spec(n=1).to_json()

    def with_value(field, value, path):
        d = json.loads(json.dumps(good))
        target = d[field]
        for i in path[:-1]:
            target = target[i]
        target[path[-1]] = value
        return d

    with pytest.raises(ValueError, match=r"centers\[0\] must be finite"):
        HeatmapSpec.from_json(with_value("centers", math.nan, (0, 0, 1, 0)))
    for sigma in (0.0, -0.1, math.inf):
        with pytest.raises(ValueError, match=r"sigmas\[0\] must be finite and > 0"):
            HeatmapSpec.from_json(with_value("sigmas", sigma, (0, 0, 2)))
    # JSON numbers are never truncated into seeds.
    for seed in (1.7, 2.0, True, "3"):
        with pytest.raises(ValueError, match="style_seeds must hold integers"):
            HeatmapSpec.from_json(with_value("style_seeds", seed, (0, 1)))
    assert HeatmapSpec.from_json(with_value("style_seeds", 12, (0, 1))).style_seeds[0, 1] == 12
    # A file written with Python's NaN extension to JSON is refused, naming the file.
    path = tmp_path / "nan-layout.json"
    path.write_text(json.dumps(with_value("sigmas", math.nan, (0, 0, 0))))
    with pytest.raises(ValueError, match=r"nan-layout\.json.*sigmas\[0\]"):
        HeatmapSpec.load(path)


def test_load_binary_file_names_the_path(tmp_path):
    path = tmp_path / "picture.json"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x80\x81\xff")
    with pytest.raises(ValueError, match=r"heatmap spec file '.*picture\.json' is not UTF-8 JSON text"):
        HeatmapSpec.load(path)


def test_as_int_accepts_integral_scalars_only():
    for value in (3, np.int64(3), np.uint8(3), torch.tensor(3), torch.tensor([3])):
        assert as_int("level", value) == 3 and type(as_int("level", value)) is int
    for value in (1.7, 2.0, np.float32(2), torch.tensor(2.0), True, np.True_, torch.tensor(True), "3", None,
                  torch.tensor([1, 2])):
        with pytest.raises(TypeError, match=r"level must be an integer, got .*\("):
            as_int("level", value)
    with pytest.raises(ValueError, match="seed must be an integer, got 1.7"):
        as_int("seed", 1.7, ValueError)


def test_integral_scalars_as_level_and_index():
    spec = _small_spec(n=3, seeds=False)
    expected = render(spec, 8, 2)
    for level in (np.int64(2), torch.tensor(2)):
        assert torch.equal(render(spec, 8, level), expected)
    with pytest.raises(TypeError, match="level must be an integer"):
        render(spec, 8, 1.0)
    with pytest.raises(ValueError, match=r"level=3 out of range"):
        render(spec, 8, np.int64(3))
    for index in (np.int64(2), torch.tensor(2)):
        one = spec.select(index)
        assert one.batch_size == 1 and torch.equal(one.centers[2][0], spec.centers[2][2])


def test_to_moves_the_maps_and_keeps_style_seeds_on_the_host():
    """Seeds only seed host-side generators (Generator.object_ws): on a GPU they would be read back
    once per generator pass, a sync each time."""
    spec = HeatmapSpec(centers=[torch.rand(2, 3, 2)], sigmas=[torch.full([2, 3], 0.1)],
                       style_seeds=torch.arange(6).view(2, 3))
    moved = spec.to("meta")
    assert moved.device.type == "meta" and moved.sigmas[0].device.type == "meta"
    assert moved.style_seeds.device.type == "cpu" and torch.equal(moved.style_seeds, spec.style_seeds)
