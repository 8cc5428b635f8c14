import os

import numpy as np
import pytest
import torch

from metrics import metric_utils


def _opts(G, dataset, **kw):
    return metric_utils.MetricOptions(G=G, dataset=dataset, progress=False, batch_size=16, **kw)


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
    a = torch.cat(list(metric_utils.iterate_generated_images(opts, 40)))
    b = torch.cat(list(metric_utils.iterate_generated_images(opts, 40)))
    assert a.dtype == torch.uint8 and a.shape == (40, 3, 16, 16) and torch.equal(a, b)
    parts = [list(metric_utils.iterate_generated_images(metric_utils.copy_options(opts, num_gpus=2, rank=r),
                                                        40)) for r in range(2)]
    # rank 0 holds batches 0 and 2, rank 1 batch 1: together the same images as one process.
    assert torch.equal(torch.cat([parts[0][0], parts[1][0], parts[0][1]]), a)


def test_real_images_split_between_ranks(toy_dataset):
    opts = _opts(None, toy_dataset, num_gpus=2, rank=1)
    batches = list(metric_utils.iterate_real_images(opts, toy_dataset, 10))
    got = torch.cat(batches)
    assert got.shape[0] == 5 and torch.equal(got[0], torch.as_tensor(toy_dataset[1][0]))


def test_options_validate():
    with pytest.raises(ValueError, match="rank"):
        metric_utils.MetricOptions(num_gpus=2, rank=2)
    with pytest.raises(ValueError, match="batch_size"):
        metric_utils.MetricOptions(batch_size=0)


def test_to_uint8_conversion():
    x = torch.tensor([-2.0, -1.0, 0.0, 1.0])
    assert metric_utils.to_uint8(x).tolist() == [0, 0, 128, 255]
    assert os.path.basename(metric_utils.__file__) == "metric_utils.py"
