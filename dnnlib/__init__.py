"""Small utilities shared by every part of SpatialGAN."""

from dnnlib.util import EasyDict, Logger, atomic_write, cache_dir, format_time, open_url

__all__ = ["EasyDict", "Logger", "atomic_write", "cache_dir", "format_time", "open_url"]
