"""dnnlib utilities: seed lists, atomic writes, URL opening, time formatting, CLI errors."""

from __future__ import annotations

import os

import pytest

from dnnlib.util import EasyDict, atomic_write, format_time, open_url, parse_int_list


def test_parse_int_list_ranges_and_errors():
    assert parse_int_list("1,2,5-7") == [1, 2, 5, 6, 7]
    assert parse_int_list("3") == [3]
    for bad in ("a", "1-", "3-1", "1,,2", "-2", "²", "1-²"):
        with pytest.raises(ValueError, match="--seeds"):
            parse_int_list(bad, "--seeds")
    # A typo'd range would fill the memory before anything runs: refused up front, by its size.
    with pytest.raises(ValueError, match=r"--seeds: '0-4294967295' names 4,294,967,296 or more values; at most"):
        parse_int_list("0-4294967295", "--seeds")
    with pytest.raises(ValueError, match="5 or more values; at most 4"):
        parse_int_list("0-2,7-8", "--seeds", max_items=4)
    assert parse_int_list("0-1,7-8", max_items=4) == [0, 1, 7, 8]


def test_atomic_write_replaces_only_on_success(tmp_path):
    path = tmp_path / "f.bin"
    with atomic_write(path) as f:
        f.write(b"old")
    with pytest.raises(RuntimeError):
        with atomic_write(path) as f:
            f.write(b"half")
            raise RuntimeError("crash while writing")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"], "temporary file left behind"
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_open_url_reads_paths_and_file_urls(tmp_path, monkeypatch):
    monkeypatch.setenv("SPATIALGAN_CACHE", str(tmp_path / "cache"))
    src = tmp_path / "data.txt"
    src.write_bytes(b"hello")
    with open_url(str(src)) as f:
        assert f.read() == b"hello"
    with open_url(src.as_uri()) as f:
        assert f.read() == b"hello"
    with pytest.raises(FileNotFoundError, match="missing"):
        open_url(str(tmp_path / "missing"))


def test_open_url_names_the_url_and_cache_path_on_failure(tmp_path, monkeypatch):
    monkeypatch.setenv("SPATIALGAN_CACHE", str(tmp_path))
    url = "http://127.0.0.1:9/never.pt"  # discard port: connection refused at once
    with pytest.raises(OSError) as info:
        open_url(url, num_attempts=1, timeout=2)
    assert url in str(info.value) and str(tmp_path) in str(info.value)


def test_format_time_and_easydict():
    assert [format_time(s) for s in (5, 65, 3725, 90061)] == ["5s", "1m 05s", "1h 02m 05s", "1d 01h 01m"]
    d = EasyDict(a=1)
    d.b = 2
    assert d["b"] == 2 and d.a == 1
    with pytest.raises(AttributeError):
        _ = d.missing
