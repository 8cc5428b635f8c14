"""Training loop: a few steps end to end, exact resume, divergence detection."""

from __future__ import annotations

import itertools
import json
import os
import time
import traceback

import pytest
import torch

from training import checkpoint
from training import training_loop as training_loop_module
from training.config import load_preset, resolve_options
from training.dataset import open_dataset
from training.training_loop import (TrainingError, _setting_differences, build_run, make_snapshot, restore, train_step,
                                    training_loop, update_ema)


def tiny_options(cfg: str = "tiny", **overrides) -> dict:
    ds = open_dataset("synthetic:shapes:16")
    info = dict(kwargs=ds.kwargs, name=ds.name, resolution=ds.resolution, num_channels=ds.num_channels, label_dim=0)
    base = dict(batch=4, batch_gpu=2, kimg=0.012, tick=0.004, snap=1, workers=0, metrics=[], seed=3)
    base.update(overrides)
    return resolve_options(cfg, info, 1, **base)


def assert_same_networks(a: dict, b: dict) -> None:
    for net in ("G", "D", "G_ema"):
        sa, sb = a["networks"][net]["state_dict"], b["networks"][net]["state_dict"]
        assert sa.keys() == sb.keys()
        for key in sa:
            assert torch.equal(sa[key], sb[key]), f"{net}.{key} differs"


def final_snapshot(run_dir) -> dict:
    snaps = checkpoint.list_snapshots(run_dir)
    assert snaps, f"no snapshot in {run_dir}"
    return checkpoint.load_snapshot(snaps[-1])


def test_resume_is_bitwise_exact(tmp_path):
    """2 ticks == 1 tick + resume for 1 tick (tick 0 is one minibatch, as in StyleGAN2-ADA)."""
    # gamma > 0 and pl_weight > 0 so that both lazy regularisers run inside the compared window.
    opts_full = tiny_options("tiny-spatial", kimg=0.012, gamma=0.5)
    (tmp_path / "full").mkdir()
    training_loop(str(tmp_path / "full"), opts_full, progress_bar=False)

    opts_half = tiny_options("tiny-spatial", kimg=0.004, gamma=0.5)
    (tmp_path / "half").mkdir()
    training_loop(str(tmp_path / "half"), opts_half, progress_bar=False)
    half = checkpoint.list_snapshots(tmp_path / "half")[-1]
    (tmp_path / "resumed").mkdir()
    training_loop(str(tmp_path / "resumed"), opts_full, resume=str(half), progress_bar=False)

    full, resumed = final_snapshot(tmp_path / "full"), final_snapshot(tmp_path / "resumed")
    assert full["state"]["progress"]["cur_nimg"] == resumed["state"]["progress"]["cur_nimg"] == 12
    assert_same_networks(full, resumed)
    assert torch.equal(full["state"]["loss"]["pl_mean"], resumed["state"]["loss"]["pl_mean"])
    # A different seed must give different networks (the comparison above is not vacuous).
    (tmp_path / "other").mkdir()
    training_loop(str(tmp_path / "other"), tiny_options("tiny-spatial", kimg=0.012, gamma=0.5, seed=4),
                  progress_bar=False)
    other = final_snapshot(tmp_path / "other")
    g_full, g_other = full["networks"]["G"]["state_dict"], other["networks"]["G"]["state_dict"]
    assert any(not torch.equal(g_full[k], g_other[k]) for k in g_full)


def test_run_dir_contents(tmp_path):
    training_loop(str(tmp_path), tiny_options(kimg=0.008), progress_bar=False)
    names = {p.name for p in tmp_path.iterdir()}
    assert {"reals.png", "fakes_init.png", "stats.jsonl"} <= names
    assert any(n.startswith("network-snapshot-") for n in names)
    assert any(n.startswith("events.out.tfevents") for n in names)
    lines = (tmp_path / "stats.jsonl").read_text().splitlines()
    assert len(lines) >= 2 and "Loss/G/loss" in lines[-1]
    for line in lines:  # one step per tick here: each phase timed once (Dreg at step 0 of 16)
        stats = json.loads(line)
        assert stats["Timing/Gmain"]["num"] == stats["Timing/Dmain"]["num"] == 1
        assert stats["Timing/Gmain"]["mean"] > 0


class QueuedEvent:
    """A CUDA event that the GPU reaches only when waited for (the host runs ahead of it)."""

    def __init__(self, enable_timing: bool = False):
        self.t = 0.0

    def record(self, stream=None):
        self.t = time.perf_counter()

    def query(self) -> bool:
        return False

    def synchronize(self):
        pass

    def elapsed_time(self, end: QueuedEvent) -> float:
        return (end.t - self.t) * 1000


def test_phase_times_still_queued_on_the_gpu_reach_their_tick(tmp_path, monkeypatch):
    """On a GPU the phases' events are read once the GPU has passed them; the tick waits for those it
    has not passed yet before writing its stats, so every phase of the tick is counted in it."""
    from torch_utils import phase_timer

    monkeypatch.setattr(phase_timer.torch.cuda, "Event", QueuedEvent)
    monkeypatch.setattr(phase_timer.torch.cuda, "current_stream", lambda device: None)
    monkeypatch.setattr(training_loop_module, "PhaseTimer", lambda device: phase_timer.PhaseTimer(torch.device("cuda")))
    training_loop(str(tmp_path), tiny_options(kimg=0.008), progress_bar=False)
    lines = (tmp_path / "stats.jsonl").read_text().splitlines()
    assert len(lines) == 2
    for line in lines:
        stats = json.loads(line)
        assert stats["Timing/Gmain"]["num"] == stats["Timing/Dmain"]["num"] == 1


def test_training_changes_parameters_and_keeps_them_finite():
    run = build_run(tiny_options(), torch.device("cpu"))
    from training.training_loop import start_data

    start_data(run)
    before = [p.clone() for p in run.G.parameters()]
    for _ in range(2):
        train_step(run)
    changed = sum(not torch.equal(a, b) for a, b in zip(before, run.G.parameters()))
    assert changed > 0
    assert all(torch.isfinite(p).all() for p in run.G.parameters())
    assert run.progress.cur_nimg == 8 and run.progress.batch_idx == 2


def test_phase_steps_on_the_round_mean_of_sanitised_gradients(monkeypatch):
    """Two rounds of batch_gpu 2: the optimiser sees the mean over the rounds, NaN -> 0 and +-inf ->
    +-1e5 (StyleGAN2-ADA's sanitising), in every parameter."""
    from training.training_loop import _run_phase, _sample_batch

    run = build_run(tiny_options(batch=4, batch_gpu=2), torch.device("cpu"))
    phase = run.phases[0]
    params = list(phase.module.parameters())

    def accumulate(*args, **kwargs):
        for i, p in enumerate(params):
            g = torch.full_like(p, 2.0 + i)
            g.view(-1)[0] = (float("nan"), float("inf"), -float("inf"), 2.0 + i)[min(i, 3)]
            p.grad = g if p.grad is None else p.grad + g

    seen = []
    monkeypatch.setattr(run.loss, "accumulate_gradients", accumulate)
    monkeypatch.setattr(phase.opt, "step", lambda: seen.extend(p.grad.clone() for p in params))
    _run_phase(run, phase, torch.zeros(4, 3, 16, 16), torch.zeros(4, 0), _sample_batch(run)[0])
    assert len(seen) == len(params) > 3
    for i, g in enumerate(seen):
        first = (0.0, 1e5, -1e5, 2.0 + i)[min(i, 3)]
        assert g.view(-1)[0].item() == first and torch.all(g.view(-1)[1:] == 2.0 + i), i


@pytest.mark.parametrize("cfg", ["tiny", "tiny-spatial", "tiny-spatial-indoor"])
def test_training_phases_copy_no_host_data_to_the_device(cfg):
    """Host data made a tensor inside a phase (`lift_fresh`: an index list, a number as a tensor) is a
    host-to-device copy on a GPU, which waits for the GPU to drain its queue: none in any phase, with
    augmentation on, gradient accumulation and (tiny-spatial) heatmaps and the alignment loss.
    (SEL_indoor's per-object z are drawn on the host before the phase, by `_sample_batch`.)"""
    from torch.utils._python_dispatch import TorchDispatchMode

    from training.training_loop import _run_phase, _sample_batch

    class Lifts(TorchDispatchMode):
        count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            # Adam's step counters live on the CPU even for GPU parameters: its lifts stay on the host.
            if func.overloadpacket.__name__ == "lift_fresh" and not any(
                    f"torch{os.sep}optim" in frame.filename for frame in traceback.extract_stack()):
                Lifts.count += 1
            return func(*args, **(kwargs or {}))

    run = build_run(tiny_options(cfg, batch=4, batch_gpu=2, aug="fixed", p=0.5, gamma=0.5), torch.device("cpu"))
    assert [ph.name for ph in run.phases] == ["Gmain", "Greg", "Dmain", "Dreg"]
    real = torch.rand(4, 3, 16, 16) * 2 - 1
    for phase, gen in zip(run.phases, _sample_batch(run)):
        _run_phase(run, phase, real, torch.zeros(4, 0), gen)  # first call: caches and lazy set-up
        with Lifts():
            _run_phase(run, phase, real, torch.zeros(4, 0), gen)
        assert Lifts.count == 0, phase.name


def test_zero_weight_regulariser_phase_is_left_out_but_its_correction_kept():
    from training.training_loop import build_phases

    opts = tiny_options(gamma=0, pl_weight=0)
    run = build_run(opts, torch.device("cpu"))
    assert [ph.name for ph in run.phases] == ["Gmain", "Dmain"]
    assert run.phases[0].opt.param_groups[0]["lr"] == pytest.approx(opts["G_opt_kwargs"]["lr"])
    assert opts["G_opt_kwargs"]["lr"] < load_preset("tiny")["lrate"]
    opts = tiny_options(gamma=0.5, pl_weight=2)
    assert [ph.name for ph in build_phases(opts, run.G, run.D)] == ["Gmain", "Greg", "Dmain", "Dreg"]


def test_ada_signal_counts_every_accumulation_round():
    """batch 8 in rounds of 2: ADA must see all 8 real logits of each D phase (Dmain and, at batch 0,
    Dreg), not only the last round's 2."""
    run = build_run(tiny_options(batch=8, batch_gpu=2, gamma=0.5, aug="ada"), torch.device("cpu"))
    from training.training_loop import start_data

    start_data(run)
    train_step(run)
    assert run.ada.state_dict()["count"] == 16
    train_step(run)  # batch 1: no Dreg
    assert run.ada.state_dict()["count"] == 24


def test_freeze_d_layers_do_not_train_and_the_rest_does():
    """--freezed=3: D's first three block layers (16² fromRGB, conv0, conv1) keep their weights through
    D phases (R1 included); the other D layers and G train."""
    run = build_run(tiny_options(freezed=3, gamma=0.5), torch.device("cpu"))
    from training.training_loop import start_data

    start_data(run)
    frozen = {id(p) for layer in run.D.block_layers()[:3] for p in layer.parameters()}
    assert len(frozen) == 6  # weight and bias of each
    before = {name: p.clone() for name, p in run.D.named_parameters()}
    for _ in range(2):
        train_step(run)
    for name, p in run.D.named_parameters():
        assert torch.equal(p, before[name]) == (id(p) in frozen), name
        assert p.requires_grad is False  # between phases D is off; the frozen layers always are


def test_nan_parameters_raise_clear_error(tmp_path):
    from training.training_loop import _check_finite

    run = build_run(tiny_options(), torch.device("cpu"))
    with torch.no_grad():
        next(run.G.parameters()).fill_(float("nan"))
    try:
        _check_finite(run)
    except TrainingError as err:
        assert "NaN" in str(err) and "G." in str(err)
    else:
        raise AssertionError("NaN parameters were not detected")


@pytest.mark.parametrize("where", ["G_ema parameter", "G buffer", "G_ema buffer"])
def test_nan_in_g_ema_or_running_averages_is_caught_before_a_snapshot(where):
    from training.training_loop import _check_finite

    run = build_run(tiny_options(), torch.device("cpu"))
    _check_finite(run)  # a fresh run is finite
    module = run.G_ema if where.startswith("G_ema") else run.G
    with torch.no_grad():
        if where.endswith("parameter"):
            next(module.parameters()).fill_(float("nan"))
        else:
            module.mapping.w_avg.fill_(float("inf"))
    name = where.split()[0]
    with pytest.raises(TrainingError, match=rf"^{name}\.{'mapping.w_avg' if 'buffer' in where else ''}"):
        _check_finite(run)


def test_short_ticks_keep_every_snapshot_and_grid(tmp_path):
    """Ticks under 1 kimg: each snapshot gets its own name (no overwrites)."""
    training_loop(str(tmp_path), tiny_options(kimg=0.012, tick=0.004, snap=1), progress_bar=False)
    snaps = [p.name for p in checkpoint.list_snapshots(tmp_path)]
    assert snaps == ["network-snapshot-000000.004.pt", "network-snapshot-000000.008.pt",
                     "network-snapshot-000000.012.pt"]
    assert sorted(p.name for p in tmp_path.glob("fakes0*.png")) == ["fakes000000.004.png", "fakes000000.008.png",
                                                                 "fakes000000.012.png"]


def test_optimisers_use_the_multi_tensor_update_with_loop_identical_results():
    run = build_run(tiny_options(), torch.device("cpu"), 0, 1)
    snap = make_snapshot(run)
    for opt_state in snap["state"]["optimizers"].values():  # as written by an older version
        for group in opt_state["param_groups"]:
            group["foreach"] = None
    restore(run, snap, "old-snapshot.pt")
    for ph in run.phases:
        assert all(g["foreach"] is True for g in ph.opt.param_groups), ph.name
    # Same rounding as PyTorch's default per-parameter loop (resumes and comparisons stay bitwise).
    torch.manual_seed(0)
    ps = [torch.nn.Parameter(torch.randn(s)) for s in ((5, 7), (300,), (8, 3, 3, 3))]
    qs = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    start = [p.detach().clone() for p in ps]
    kw = dict(lr=0.002, betas=(0.0, 0.99), eps=1e-8)
    multi, loop = torch.optim.Adam(ps, foreach=True, **kw), torch.optim.Adam(qs, foreach=False, **kw)
    for _ in range(5):
        for p, q in zip(ps, qs):
            g = torch.randn_like(p) * 10.0 ** float(torch.randint(-9, 1, ()))
            p.grad, q.grad = g.clone(), g.clone()
        multi.step()
        loop.step()
    assert all(torch.equal(p, q) for p, q in zip(ps, qs))
    assert all(not torch.equal(p, s) for p, s in zip(ps, start))  # the updates did move the weights


def test_ema_update_follows_the_half_life_and_its_rampup():
    """G_ema <- G + beta (G_ema - G), beta = 0.5 ** (batch / ema_nimg), ema_nimg capped by cur_nimg * rampup."""
    run = build_run(tiny_options(ema_kimg=0.01, ema_rampup=None), torch.device("cpu"), 0, 1)
    batch = run.options["batch"]

    def ema_after_update(cur_nimg: int) -> float:
        with torch.no_grad():
            for p in run.G.parameters():
                p.fill_(1.0)
            for p in run.G_ema.parameters():
                p.fill_(0.0)
            for b in run.G.buffers():
                if b.is_floating_point():
                    b.fill_(3.0)
        run.progress.cur_nimg = cur_nimg
        update_ema(run)
        values = torch.cat([p.flatten() for p in run.G_ema.parameters()])
        assert torch.allclose(values, values[0].expand_as(values))
        return values[0].item()

    assert any(b.is_floating_point() for b in run.G.buffers())  # the buffer check below is not vacuous

    # Half-life of 10 images: after one update of `batch` images G_ema holds 1 - 0.5 ** (batch / 10) of G.
    assert ema_after_update(1000) == pytest.approx(1 - 0.5 ** (batch / 10))
    assert all(torch.equal(b, a) for b, a in zip(run.G_ema.buffers(), run.G.buffers()))
    # With a rampup the half-life is at most cur_nimg * rampup images: 2 images at cur_nimg = 4.
    run.options["ema_rampup"] = 0.5
    assert ema_after_update(4) == pytest.approx(1 - 0.5 ** (batch / 2))
    assert ema_after_update(1000) == pytest.approx(1 - 0.5 ** (batch / 10))  # the cap no longer binds


def test_metrics_during_training_announce_themselves_and_report(tmp_path, monkeypatch, capsys):
    from metrics import metric_main

    calls = []

    def fake_calc_metric(name, **kwargs):
        calls.append(name)
        return dict(results={"swd_avg": 1.25}, metric=name, total_time=3.0, total_time_str="3s", num_gpus=1)

    monkeypatch.setattr(metric_main, "calc_metric", fake_calc_metric)
    training_loop(str(tmp_path), tiny_options(kimg=0.004, metrics=["swd1k"]), progress_bar=False)
    out = capsys.readouterr().out
    assert calls == ["swd1k"]
    assert "Evaluating swd1k..." in out and "swd1k: swd_avg 1.25" in out
    assert '"swd_avg": 1.25' in (tmp_path / "metric-swd1k.jsonl").read_text()


def test_transfer_takes_only_the_weights():
    """--transfer: G/D/G_ema weights from the snapshot; counters, optimisers and ADA's p start afresh,
    ADA adapts over 100 kimg and the EMA has no ramp-up (StyleGAN2-ADA's resume rules)."""
    from training.training_loop import start_data

    src = build_run(tiny_options(aug="ada"), torch.device("cpu"))
    start_data(src)
    train_step(src)
    src.augment_pipe.p.fill_(0.3)
    snap = make_snapshot(src)

    opts = tiny_options(aug="ada", transfer=True, seed=5)
    assert opts["transfer"] and opts["augment"]["kimg"] == 100 and opts["ema_rampup"] is None
    assert tiny_options(aug="ada")["augment"]["kimg"] == 500
    assert tiny_options("auto", transfer=True)["ema_rampup"] is None  # auto ramps up (0.05) otherwise
    assert tiny_options("auto")["ema_rampup"] == 0.05
    run = build_run(opts, torch.device("cpu"))
    restore(run, snap, "src.pt")
    assert_same_networks(snap, make_snapshot(run))
    assert run.progress.cur_nimg == 0 and run.progress.batch_idx == 0
    assert float(run.augment_pipe.p) == 0
    assert all(not ph.opt.state for ph in run.phases)
    # The same snapshot resumed (not transferred) restores everything.
    cont = build_run(tiny_options(aug="ada"), torch.device("cpu"))
    restore(cont, snap, "src.pt")
    assert cont.progress.cur_nimg == 4 and float(cont.augment_pipe.p) == pytest.approx(0.3)


def test_resume_trains_with_this_runs_learning_rate():
    """Lowering the learning rate is the advice for a diverged run: the snapshot's Adam moments and steps
    are restored, but lr/betas come from the resuming run's options."""
    from training.training_loop import start_data

    src = build_run(tiny_options(), torch.device("cpu"))
    start_data(src)
    train_step(src)
    snap = make_snapshot(src)
    opts = tiny_options()
    opts["G_opt_kwargs"] = dict(opts["G_opt_kwargs"], lr=1e-5)
    run = build_run(opts, torch.device("cpu"))
    restore(run, snap, "src.pt")
    g_opt = next(ph.opt for ph in run.phases if ph.name == "Gmain")
    assert g_opt.param_groups[0]["lr"] == 1e-5
    d_opt = next(ph.opt for ph in run.phases if ph.name == "Dmain")
    assert d_opt.param_groups[0]["lr"] == pytest.approx(opts["D_opt_kwargs"]["lr"])
    assert any(state["step"] > 0 for state in g_opt.state.values())  # the moments came back


def test_data_resumes_at_the_images_served_also_with_another_batch():
    """The data stream goes on after the cur_nimg images already served, whatever --batch is now (a
    position of batch_idx × the new batch would repeat images)."""
    from training.dataset import InfiniteSampler
    from training.training_loop import start_data

    run = build_run(tiny_options(batch=2), torch.device("cpu"))
    run.progress.cur_nimg, run.progress.batch_idx = 12, 3  # three steps of batch 4 before the resume
    start_data(run)
    got = next(run.data_iter)[0]
    order = list(itertools.islice(iter(InfiniteSampler(len(run.dataset), seed=run.options["seed"])), 14))

    def batch(positions):
        return torch.stack([torch.as_tensor(run.dataset[order[i]][0]) for i in positions])

    assert torch.equal(got, batch([12, 13]))
    assert not torch.equal(got, batch([6, 7]))


def test_trim_stats_drops_the_ticks_after_the_resumed_snapshot(tmp_path):
    from training.training_loop import trim_stats

    path = tmp_path / "stats.jsonl"
    lines = [json.dumps({"Progress/kimg": {"mean": k / 1000}, "Loss/G": {"mean": 1.0}}) for k in (4, 8, 12, 16, 20)]
    path.write_text("\n".join(lines[:3] + ['{"other": 1}'] + lines[3:]) + "\n")
    assert trim_stats(path, 0.012) == 2
    kept = path.read_text().splitlines()
    assert kept == lines[:3] + ['{"other": 1}']
    assert trim_stats(path, 0.012) == 0 and trim_stats(tmp_path / "none.jsonl", 0.0) == 0


def test_setting_differences_name_the_changed_leaves():
    """A resume that does not fit names what differs, e.g. a key a newer preset added ('absent')."""
    saved = dict(a=1, spatial=dict(encoding="sel_norm", kernel_size=3), long="x" * 100)
    ours = dict(a=1, spatial=dict(encoding="sel_norm", kernel_size=7, torgb=True), long="y" * 100)
    diffs = _setting_differences(saved, ours, "G_kwargs")
    assert diffs[1:] == ["G_kwargs.spatial.kernel_size: 3 -> 7", "G_kwargs.spatial.torgb: absent -> True"]
    assert diffs[0].startswith("G_kwargs.long: xxx") and diffs[0].count("...") == 2  # long values shortened
    assert _setting_differences(None, ours, "G_kwargs") == []  # options unknown (a weights-only file)
    assert len(_setting_differences({str(i): i for i in range(9)}, {}, "x", limit=5)) == 5
