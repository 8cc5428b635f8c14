"""Fixtures shared by the metric tests: an isolated cache dir, a stub generator, a small dataset and a
counting fake detector (so tests need no Inception weights unless they say so)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from metrics import detectors


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """Every test gets its own SPATIALGAN_CACHE and an empty in-process detector cache."""
    monkeypatch.setenv("SPATIALGAN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(detectors, "_cache", {})
    return tmp_path / "cache"


class StubGenerator(torch.nn.Module):
    """Minimal G interface: images = tanh(A z + shift), mapping = identity-ish, synthesis = linear."""

    def __init__(self, z_dim: int = 8, resolution: int = 16, shift: float = 0.0):
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim, self.num_ws = z_dim, 0, z_dim, 2
        self.img_resolution, self.img_channels, self.heatmap_sampler = resolution, 3, None
        self.proj = torch.nn.Linear(z_dim, 3 * resolution * resolution)
        torch.nn.init.normal_(self.proj.weight, std=0.5)
        self.shift = shift
        self.calls = 0

    def mapping(self, z, c, truncation_psi=1, truncation_cutoff=None):
        return z[:, None].repeat(1, self.num_ws, 1)

    def synthesis(self, ws, heatmaps=None, noise_mode="random", force_fp32=False):
        r = self.img_resolution
        return torch.tanh(self.proj(ws[:, 0]) + self.shift).view(-1, 3, r, r)

    def forward(self, z, c, heatmaps=None, truncation_psi=1, noise_mode="random", generator=None):
        self.calls += 1
        return self.synthesis(self.mapping(z, c), heatmaps, noise_mode)


class ListDataset(torch.utils.data.Dataset):
    """uint8 images [N, 3, R, R] with empty labels and the `name`/`kwargs` attributes of the contract."""

    def __init__(self, images: np.ndarray, name: str = "toy"):
        self.images, self.name = images, name
        self.kwargs = dict(data=f"toy:{name}", num=len(images))

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], np.zeros([0], np.float32)


class CountingDetector:
    """Fake detector: features = per-channel means and stds (6-d); counts images it has seen."""

    def __init__(self, name: str = "inception", identity: str = "fake-v1"):
        self.name, self.identity, self.images_seen, self.calls = name, identity, 0, 0

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.images_seen += images.shape[0]
        x = images.float() / 255
        return torch.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3))], dim=1)


@pytest.fixture
def stub_G():
    torch.manual_seed(0)
    return StubGenerator()


@pytest.fixture
def toy_dataset():
    rng = np.random.RandomState(0)
    return ListDataset(rng.randint(0, 256, size=[40, 3, 16, 16]).astype(np.uint8))


@pytest.fixture
def fake_detector(monkeypatch):
    """Replace detectors.get_detector with one returning a shared CountingDetector."""
    det = CountingDetector()
    monkeypatch.setattr(detectors, "get_detector", lambda name="inception", source=None, device="cpu": det)
    return det
