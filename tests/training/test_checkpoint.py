"""training/checkpoint.py: snapshot round trip, atomic writes, version and non-snapshot errors."""

import io
import os
import pickle
import re

import pytest
import torch

from training import checkpoint, config, networks
from training.checkpoint import SnapshotError


def tiny_nets(cfg: str = "tiny-spatial", res: int = 16):
    """G and D of a preset at a small resolution (random weights, no training)."""
    G_kwargs, D_kwargs = config.network_kwargs(config.load_preset(cfg), res, 3, 0, fp32=True)
    torch.manual_seed(0)
    return networks.Generator(**G_kwargs).eval(), networks.Discriminator(**D_kwargs).eval()


def snapshot_dict(G, D) -> dict:
    return dict(networks=dict(G=checkpoint.pack_module(G), D=checkpoint.pack_module(D),
                              G_ema=checkpoint.pack_module(G)),
                state=dict(progress=dict(cur_nimg=12)), training_options=dict(cfg="tiny-spatial"))


class Payload:
    """A pickle that names os.system: loading it must never run the command."""

    def __init__(self, sentinel: str):
        self.sentinel = sentinel

    def __reduce__(self):
        return os.system, (f"touch {self.sentinel}",)


@pytest.mark.parametrize("cfg", ["tiny", "tiny-spatial", "tiny-spatial-indoor"])
def test_round_trip_rebuilds_identical_networks(tmp_path, cfg):
    G, D = tiny_nets(cfg)
    path = tmp_path / "snap.pt"
    checkpoint.save_snapshot(path, snapshot_dict(G, D))
    data = checkpoint.load_snapshot(path)
    assert data["format"] == checkpoint.FORMAT and data["version"] == checkpoint.VERSION
    assert data["state"]["progress"]["cur_nimg"] == 12 and data["training_options"]["cfg"] == "tiny-spatial"
    G2 = checkpoint.load_network(path, "G_ema")
    D2 = checkpoint.load_network(path, "D")
    assert G2.init_kwargs == G.init_kwargs and not G2.training
    z = torch.randn([2, G.z_dim], generator=torch.Generator().manual_seed(1))
    c = torch.zeros([2, 0])
    spec = G.heatmap_sampler(2, generator=3) if G.heatmap_sampler is not None else None
    with torch.no_grad():
        img = G(z, c, heatmaps=spec, noise_mode="const")
        assert torch.equal(G2(z, c, heatmaps=spec, noise_mode="const"), img)
        assert torch.equal(D2(img, c), D(img, c))


def test_save_is_atomic_and_leaves_no_temp_file(tmp_path):
    G, D = tiny_nets("tiny")
    path = tmp_path / "snap.pt"
    checkpoint.save_snapshot(path, snapshot_dict(G, D))
    before = path.read_bytes()
    bad = dict(snapshot_dict(G, D), extra=lambda: None)  # lambdas cannot be pickled: fails mid-write
    with pytest.raises((pickle.PicklingError, AttributeError), match="pickle"):  # which one: Python version
        checkpoint.save_snapshot(path, bad)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["snap.pt"]
    checkpoint.load_network(path)  # still a valid snapshot


def test_newer_format_version_is_refused(tmp_path):
    path = tmp_path / "future.pt"
    torch.save({"format": checkpoint.FORMAT, "version": checkpoint.VERSION + 1, "networks": {}}, path)
    with pytest.raises(SnapshotError, match=f"version {checkpoint.VERSION + 1}.*Upgrade"):
        checkpoint.load_snapshot(path)


def test_non_snapshots_raise_snapshot_error(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    tensor = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), tensor)
    no_nets = tmp_path / "no_nets.pt"
    torch.save({"format": checkpoint.FORMAT, "version": checkpoint.VERSION}, no_nets)
    for path in (text, tensor, no_nets, tmp_path / "missing.pt"):
        with pytest.raises(SnapshotError, match=str(path.name)):
            checkpoint.load_snapshot(path)


def test_truncated_snapshot_raises(tmp_path):
    G, D = tiny_nets("tiny")
    path = tmp_path / "snap.pt"
    checkpoint.save_snapshot(path, snapshot_dict(G, D))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(SnapshotError, match="snap.pt"):
        checkpoint.load_snapshot(path)


def test_pickle_referencing_code_is_refused_without_running_it(tmp_path):
    sentinel = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"format": checkpoint.FORMAT, "version": 1, "networks": Payload(str(sentinel))}, path)
    with pytest.raises(SnapshotError, match="evil.pt"):
        checkpoint.load_snapshot(path)
    assert not sentinel.exists()


def test_build_module_validates_class_and_state(tmp_path):
    G, _ = tiny_nets("tiny")
    packed = checkpoint.pack_module(G)
    with pytest.raises(SnapshotError, match="unknown network class"):
        checkpoint.build_module(dict(packed, **{"class": "Evil"}))
    state = dict(packed["state_dict"])
    state.pop(next(iter(state)))
    with pytest.raises(SnapshotError, match="does not match"):
        checkpoint.build_module(dict(packed, state_dict=state))
    # Wrong shapes or a non-tensor value: the file and the parameter are named (no raw load_state_dict error).
    name = next(k for k in packed["state_dict"] if k.endswith("const"))
    for value, needle in [(packed["state_dict"][name][:1], "size mismatch"), ("junk", "expected torch.Tensor")]:
        state = dict(packed["state_dict"], **{name: value})
        with pytest.raises(SnapshotError, match=rf"snap.pt: the weights of its Generator .*{needle}.*{name}|"
                                                rf"snap.pt: the weights of its Generator .*{name}.*{needle}"):
            checkpoint.build_module(dict(packed, state_dict=state), where="snap.pt")
    with pytest.raises(TypeError, match="init_kwargs"):
        checkpoint.pack_module(torch.nn.Linear(2, 2))
    path = tmp_path / "snap.pt"
    checkpoint.save_snapshot(path, dict(networks=dict(G_ema=packed)))
    with pytest.raises(SnapshotError, match="no network 'D'"):
        checkpoint.load_network(path, "D")


def test_snapshot_names_order_by_images_and_never_collide():
    names = [checkpoint.snapshot_filename(n) for n in (0, 8, 1000, 1008, 25_000_000)]
    assert names == ["network-snapshot-000000.pt", "network-snapshot-000000.008.pt", "network-snapshot-000001.pt",
                     "network-snapshot-000001.008.pt", "network-snapshot-025000.pt"]


def test_list_snapshots_sorts_numerically(tmp_path):
    for n in (1008, 8, 1000, 200_000):
        (tmp_path / checkpoint.snapshot_filename(n)).write_bytes(b"")
    (tmp_path / "network-snapshot-x.pt").write_bytes(b"")  # not ours: ignored
    assert [p.name for p in checkpoint.list_snapshots(tmp_path)] == [
        "network-snapshot-000000.008.pt", "network-snapshot-000001.pt", "network-snapshot-000001.008.pt",
        "network-snapshot-000200.pt"]


def _nan_weight(state: dict) -> None:
    key = next(k for k, v in state.items() if v.is_floating_point())
    state[key] = torch.full_like(state[key], float("nan"))


@pytest.mark.parametrize("damage, message", [
    (lambda d: d["networks"]["G"].pop("init_kwargs"), "network 'G' is damaged"),
    (lambda d: d["networks"].__setitem__("D", "junk"), "network 'D' is damaged"),
    (lambda d: d.__setitem__("version", 0), "version 0"),
    (lambda d: _nan_weight(d["networks"]["G_ema"]["state_dict"]), r"G_ema\..* holds NaN/inf values"),
])
def test_damaged_snapshot_contents_are_named(tmp_path, damage, message):
    G, D = tiny_nets("tiny")
    data = dict(snapshot_dict(G, D), format=checkpoint.FORMAT, version=checkpoint.VERSION)
    damage(data)
    path = tmp_path / "damaged.pt"
    torch.save(data, path)
    with pytest.raises(SnapshotError, match=message) as err:
        checkpoint.load_snapshot(path)
    assert "damaged.pt" in str(err.value)


def test_unbuildable_init_kwargs_and_damaged_training_state(tmp_path):
    G, _ = tiny_nets("tiny")
    packed = checkpoint.pack_module(G)
    packed["init_kwargs"] = dict(packed["init_kwargs"], bogus=1)
    with pytest.raises(SnapshotError, match="cannot be rebuilt.*bogus"):
        checkpoint.build_module(packed)
    with pytest.raises(SnapshotError, match=r"x.pt: the training state is damaged.*optimizers"):
        checkpoint.check_training_state({"progress": {}}, "x.pt")
    good = dict(optimizers={"G": {}, "D": {}}, loss={}, rng={},
                progress=dict(cur_nimg=8, cur_tick=1, batch_idx=2, tick_start_nimg=4))
    checkpoint.check_training_state(good, "x.pt")
    with pytest.raises(SnapshotError, match="progress.cur_nimg"):
        checkpoint.check_training_state(dict(good, progress=dict(good["progress"], cur_nimg="8")), "x.pt")


def test_a_full_disk_names_the_snapshot_and_leaves_no_file(tmp_path, monkeypatch):
    """torch.save turns a failed write into a RuntimeError from its zip writer: reported as one OSError
    naming the file and the reason; no partial or temporary file stays."""
    import errno

    real_open = os.fdopen

    class Full(io.RawIOBase):
        def __init__(self, fd, *args, **kwargs):
            self.inner = real_open(fd, *args, **kwargs)

        def writable(self):
            return True

        def write(self, b):
            raise OSError(errno.ENOSPC, "No space left on device")

        def close(self):
            self.inner.close()
            super().close()

    monkeypatch.setattr(os, "fdopen", Full)
    path = tmp_path / "network-snapshot-000001.pt"
    with pytest.raises(OSError, match=rf"cannot write the snapshot {re.escape(str(path))}: No space left") as info:
        checkpoint.save_snapshot(path, dict(networks={}))
    assert info.value.errno == errno.ENOSPC
    assert not list(tmp_path.iterdir())
