
import numpy as np
import pytest
import torch

from metrics import metric_utils


def _opts(G, dataset, **kw):
    return metric_utils.MetricOptions(G=G, dataset=dataset, progress=False, **{"batch_size": 16, **kw})


def test_feature_stats_mean_cov_match_numpy():
    x = np.random.RandomState(0).randn(100, 5)
    s = metric_utils.FeatureStats(capture_all=True, capture_mean_cov=True, max_items=90)
    s.append(x[:50])
    s.append(x[50:])
    mu, cov = s.get_mean_cov()
    assert s.num_items == 90 and s.get_all().shape == (90, 5)
    np.testing.assert_allclose(mu, x[:90].mean(0), atol=1e-6)
    np.testing.assert_allclose(cov, np.cov(x[:90].T, bias=True), atol=1e-5)  # divides by N


def test_real_stats_cache_is_reused(stub_G, toy_dataset, fake_detector, isolated_cache):
    opts = _opts(stub_G, toy_dataset)
    first = metric_utils.compute_feature_stats_for_dataset(opts, "inception", capture_mean_cov=True)
    calls = fake_detector.calls
    assert calls > 0 and len(list((isolated_cache / "gan-metrics").glob("*.npz"))) == 1
    second = metric_utils.compute_feature_stats_for_dataset(opts, "inception", capture_mean_cov=True)
    assert fake_detector.calls == calls  # loaded, not recomputed
    np.testing.assert_allclose(first.get_mean_cov()[1], second.get_mean_cov()[1])


@pytest.mark.parametrize("change", ["max_items", "detector", "dataset", "override"])
def test_real_stats_cache_invalidated_when_options_change(stub_G, toy_dataset, fake_detector, change):
    opts = _opts(stub_G, toy_dataset)
    metric_utils.compute_feature_stats_for_dataset(opts, "inception", capture_mean_cov=True)
    calls = fake_detector.calls
    kwargs = dict(capture_mean_cov=True)
    if change == "max_items":
        kwargs["max_items"] = 20
    elif change == "detector":
        fake_detector.identity = "fake-v2"
    elif change == "dataset":
        toy_dataset.kwargs = dict(toy_dataset.kwargs, xflip=True)
    else:
        kwargs["xflip"] = False
    metric_utils.compute_feature_stats_for_dataset(opts, "inception", **kwargs)
    assert fake_detector.calls > calls


def test_cache_disabled_never_writes(stub_G, toy_dataset, fake_detector, isolated_cache):
    opts = _opts(stub_G, toy_dataset, cache=False)
    metric_utils.compute_feature_stats_for_dataset(opts, "inception", capture_all=True)
    assert not list(isolated_cache.glob("gan-metrics/*.npz"))
    assert fake_detector.images_seen == len(toy_dataset)


def test_atomic_save_roundtrip(tmp_path):
    s = metric_utils.FeatureStats(capture_all=True, capture_mean_cov=True)
    s.append(np.random.RandomState(0).randn(10, 3))
    path = tmp_path / "s.npz"
    metric_utils.save_stats_atomic(s, path)
    assert [p.name for p in tmp_path.iterdir()] == ["s.npz"]  # no temp file left behind
    t = metric_utils.load_stats(path)
    np.testing.assert_allclose(t.get_all(), s.get_all())
    assert t.num_items == 10


def test_generated_images_are_uint8_deterministic_and_rank_split(stub_G):
    opts = _opts(stub_G, None, seed=5)
    a = torch.cat([x for _, x in metric_utils.iterate_generated_images(opts, 40)])
    b = torch.cat([x for _, x in metric_utils.iterate_generated_images(opts, 40)])
    assert a.dtype == torch.uint8 and a.shape == (40, 3, 16, 16) and torch.equal(a, b)
    parts = [list(metric_utils.iterate_generated_images(metric_utils.copy_options(opts, num_gpus=2, rank=r),
                                                        40)) for r in range(2)]
    # rank 0 holds batches 0 and 2, rank 1 batch 1: together the same images as one process.
    assert [b for b, _ in parts[0]] == [0, 2] and [b for b, _ in parts[1]] == [1]
    assert torch.equal(torch.cat([parts[0][0][1], parts[1][0][1], parts[0][1][1]]), a)


def test_generation_uses_per_batch_noise_and_leaves_global_rng_alone():
    """Random synthesis noise follows the batch seed, not the global RNG, which stays untouched."""
    class NoisyG(torch.nn.Module):
        z_dim, c_dim, heatmap_sampler = 2, 0, None

        def forward(self, z, c, heatmaps=None, truncation_psi=1, noise_mode="random", generator=None):
            return torch.randn([z.shape[0], 3, 4, 4]) * 0.5  # global-RNG noise, like the synthesis layers

    opts = _opts(NoisyG(), None, batch_size=4)
    torch.manual_seed(1)
    a = metric_utils.generate_batch(opts, 4, metric_utils.batch_generator(opts, 3))
    after = torch.random.get_rng_state()
    torch.manual_seed(2)
    b = metric_utils.generate_batch(opts, 4, metric_utils.batch_generator(opts, 3))
    c = metric_utils.generate_batch(opts, 4, metric_utils.batch_generator(opts, 4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    torch.manual_seed(1)
    assert torch.equal(torch.random.get_rng_state(), after)


def test_real_images_split_between_ranks(toy_dataset):
    opts = _opts(None, toy_dataset, num_gpus=2, rank=1, batch_size=4)
    batches = list(metric_utils.iterate_real_images(opts, toy_dataset, 10))
    assert [b for b, _ in batches] == [1]  # batches 0 and 2 (items 0-3, 8-9) belong to rank 0
    got = batches[0][1]
    assert got.shape[0] == 4 and torch.equal(got[0], torch.as_tensor(toy_dataset[4][0]))


class _TwoRankGather:
    """Simulates all_gather_cat for two ranks in one process: returns `other` ++ own (rank 1's view)."""

    def __init__(self, other: metric_utils.FeatureStats):
        self.other_calls = iter(_gather_inputs(other))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        other = next(self.other_calls)  # StopIteration: this rank made more calls than the other
        return torch.cat([other.reshape(-1, *x.shape[1:]) if other.numel() == 0 else other, x])


def _gather_inputs(stats: metric_utils.FeatureStats) -> list[torch.Tensor]:
    """What `stats.gathered` sends, call by call (recorded with a pass-through gather)."""
    sent = []
    stats.gathered(lambda x: sent.append(x) or x)
    return sent


@pytest.mark.parametrize("flags", [dict(capture_all=True), dict(capture_mean_cov=True),
                                   dict(capture_all=True, capture_mean_cov=True)])
def test_feature_stats_gathered_with_an_empty_rank_and_item_order(flags):
    x = np.random.RandomState(0).randn(6, 3)
    full = metric_utils.FeatureStats(**flags)
    full.append(x)
    rank0 = metric_utils.FeatureStats(**flags)
    rank0.append(x[3:], index=np.arange(3, 6))  # rank 0 holds the later items: the order must be fixed
    rank1 = metric_utils.FeatureStats(**flags)
    rank1.append(x[:3], index=np.arange(3))
    empty = metric_utils.FeatureStats(**flags)
    for own, other in ((rank1, rank0), (empty, full)):
        gather = _TwoRankGather(other)
        got = own.gathered(gather)
        assert next(gather.other_calls, None) is None  # as many gather calls as the other rank, even empty
        assert got.num_items == 6 and got.num_features == 3
        if flags.get("capture_all"):
            np.testing.assert_allclose(got.get_all(), full.get_all(), rtol=1e-6)
        if flags.get("capture_mean_cov"):
            for u, v in zip(got.get_mean_cov(), full.get_mean_cov()):
                np.testing.assert_allclose(u, v, rtol=1e-9, atol=1e-12)


def test_options_validate():
    with pytest.raises(ValueError, match="rank"):
        metric_utils.MetricOptions(num_gpus=2, rank=2)
    with pytest.raises(ValueError, match="batch_size"):
        metric_utils.MetricOptions(batch_size=0)


def test_to_uint8_conversion():
    x = torch.tensor([-2.0, -1.0, 0.0, 1.0])
    assert metric_utils.to_uint8(x).tolist() == [0, 0, 128, 255]


def test_progress_bar_counts_all_ranks_and_stops_at_the_total():
    """Rank 0 adds its batch times the number of ranks; a last round with fewer batches than ranks must
    not overshoot (16 samples on 2 ranks in one batch showed 32/16)."""
    opts = metric_utils.MetricOptions(progress=True, num_gpus=2, rank=0)
    with metric_utils.progress_bar(opts, 16, "test") as bar:
        bar.update(12 * 2)
        assert bar.n == 16
        bar.update(4)
        assert bar.n == 16
