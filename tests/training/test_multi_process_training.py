"""Multi-process training on CPU: 2 gloo ranks launched by torchrun (`python -m torch.distributed.run`).

Equivalence with one process. Two ranks with global batch B must train exactly like one process with
batch B. Latents, labels and heatmap specs already come from the shared batch generator, so what is
left is the randomness each rank draws from its own stream, and the places where samples meet:
  * synthesis noise: turned off (`use_noise=False` in the synthesis kwargs), so the per-rank noise
    stream cannot matter;
  * style mixing and path-length regularisation (random per rank, and `pl_mean` is per rank): off;
  * augmentation: `noaug`;
  * minibatch-stddev mixes the samples of a group, and the ranks split real images differently from the
    rounds of a single process (InfiniteSampler interleaves ranks): group size 1;
  * `batch_gpu` is the same in both runs, so every round sees the same generated samples.
R1 (gamma > 0) stays on. Weights and losses then agree up to float summation order; the mapping
network's running `w_avg` (a statistic, not trained) is updated once per round, so it only agrees in
direction (2 EMA updates per step in one process vs 1 per rank, averaged over ranks at snapshots).

This file is also the worker script: `python -m torch.distributed.run ... test_multi_process_training.py cfg.json`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # the worker runs as a plain script
    sys.path.insert(0, str(REPO))

from training import checkpoint  # noqa: E402
from training.config import resolve_options  # noqa: E402
from training.dataset import InfiniteSampler, open_dataset  # noqa: E402
from training.training_loop import build_run, restore, start_data, training_loop  # noqa: E402

pytestmark = pytest.mark.slow
DATA = "synthetic:shapes:16"


# ---------------------------------------------------------------------------------------------------
# Worker side (runs inside every rank).


def _worker(cfg_path: str) -> None:
    """Train with `cfg['options']`, record which rank saved snapshots, then check parameter agreement."""
    from torch_utils import distributed, training_stats

    torch.set_num_threads(1)
    cfg = json.loads(Path(cfg_path).read_text())
    env = distributed.detect()
    distributed.init(env, torch.device("cpu"), timeout_s=cfg.get("timeout", 60))
    training_stats.init_multiprocessing(env.rank, torch.device("cpu"))
    out = Path(cfg["out"])
    saves = []
    real_save = checkpoint.save_snapshot
    checkpoint.save_snapshot = lambda path, snap: (saves.append(str(path)), real_save(path, snap))
    run_dir = cfg["run_dir"] if env.rank == 0 else None
    run = training_loop(distributed.broadcast_object(run_dir), cfg["options"], rank=env.rank,
                        world_size=env.world_size, resume=cfg.get("resume"), progress_bar=False)
    record = dict(saves=saves, world_size=env.world_size, detected_difference=None)
    for name, module in (("G", run.G), ("D", run.D), ("G_ema", run.G_ema)):
        distributed.params_agree(module, name)  # raises if the ranks disagree
    with torch.no_grad():  # the check must notice a real difference
        next(run.D.parameters()).add_(float(env.rank))
    try:
        distributed.params_agree(run.D, "D")
    except RuntimeError as err:
        record["detected_difference"] = str(err)
    (out / f"rank{env.rank}.json").write_text(json.dumps(record))
    distributed.exit_after_success()


# ---------------------------------------------------------------------------------------------------
# Test side.


def _options(**overrides) -> dict:
    """The equivalence config of the module docstring (tiny-spatial: heatmap specs are sliced too)."""
    ds = open_dataset(DATA)
    info = dict(kwargs=ds.kwargs, name=ds.name, resolution=ds.resolution, num_channels=ds.num_channels, label_dim=0)
    kw = dict(batch=4, batch_gpu=2, kimg=0.008, tick=0.004, snap=1, workers=0, metrics=[], seed=5, gamma=0.5,
              pl_weight=0, style_mixing=0, aug="noaug")
    kw.update(overrides)
    opts = resolve_options("tiny-spatial", info, 1, **kw)
    opts["G_kwargs"]["synthesis_kwargs"]["use_noise"] = False
    opts["D_kwargs"]["epilogue_kwargs"]["mbstd_group_size"] = 1
    return opts


def _env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), SPATIALGAN_DIST_TIMEOUT="20")


def _torchrun(nproc: int, tmp: Path, options: dict, resume: str | None = None) -> tuple[Path, list[dict]]:
    """Train in `nproc` ranks; returns the run dir and every rank's record."""
    run_dir, out = tmp / "run", tmp / "records"
    run_dir.mkdir(parents=True)
    out.mkdir()
    cfg = tmp / "cfg.json"
    cfg.write_text(json.dumps(dict(options=options, run_dir=str(run_dir), resume=resume, out=str(out), timeout=30)))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", __file__,
           str(cfg)]
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return run_dir, [json.loads((out / f"rank{r}.json").read_text()) for r in range(nproc)]


def _single(tmp: Path, options: dict, resume: str | None = None) -> Path:
    tmp.mkdir(parents=True)
    training_loop(str(tmp), options, resume=resume, progress_bar=False)
    return tmp


def _snapshot(run_dir: Path) -> dict:
    """The final snapshot of a run."""
    snaps = checkpoint.list_snapshots(run_dir)
    assert snaps, f"no snapshot in {run_dir}"
    return checkpoint.load_snapshot(snaps[-1])


ADAM_STEP_BOUND = 2 * 0.0025 * 4  # 2 lr per Adam step (a sign flip), lr <= 0.0025, runs here take <= 4 steps


def _assert_close_networks(a: dict, b: dict) -> None:
    for net in ("G", "D", "G_ema"):
        sa, sb = a["networks"][net]["state_dict"], b["networks"][net]["state_dict"]
        assert sa.keys() == sb.keys()
        for key in sa:
            if key.endswith("w_avg"):
                # Updated once per round: 2 rounds x 1 process vs 1 round x 2 ranks (averaged at
                # snapshots) take different numbers of EMA steps over the same latents, so only the
                # direction agrees (the norm grows with the number of updates while w_avg warms up).
                cos = torch.nn.functional.cosine_similarity(sa[key].flatten(), sb[key].flatten(), dim=0)
                assert float(cos) > 0.99, f"{net}.{key}: cosine {float(cos):.3f}"
                continue
            # Sums reordered across ranks differ in the last bits; Adam's first steps (about lr * sign(g)
            # per weight) turn that into an lr-sized difference for a weight whose gradient is ~0. So:
            # all but a few weights agree tightly, and none differs by more than 2 lr per step taken.
            diff = (sa[key] - sb[key]).abs()
            loose = diff > 2e-5 + 1e-4 * sb[key].abs()
            assert loose.float().mean() <= 1e-3, f"{net}.{key}: {int(loose.sum())} of {diff.numel()} differ"
            assert diff.max() <= ADAM_STEP_BOUND, f"{net}.{key}: max difference {float(diff.max()):.3g}"


def _losses(run_dir: Path) -> list[tuple[float, float, float]]:
    ticks = [json.loads(line) for line in (run_dir / "stats.jsonl").read_text().splitlines()]
    return [(t["Loss/G/loss"]["mean"], t["Loss/scores/real"]["mean"], t["Loss/scores/real"]["num"]) for t in ticks]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Lazily built runs shared by the tests below (each launch costs several seconds)."""
    cache: dict = {}
    root = tmp_path_factory.mktemp("dist")

    def get(name: str):
        if name not in cache:
            if name == "single_half":
                cache[name] = _single(root / name, _options())
            elif name == "single_full":
                cache[name] = _single(root / name, _options(kimg=0.016))
            elif name == "dual_half":
                cache[name] = _torchrun(2, root / name, _options())
            else:
                raise KeyError(name)
        return cache[name]

    return get


def test_two_ranks_match_one_process(runs):
    single = runs("single_half")
    dual_dir, _ = runs("dual_half")
    a, b = _snapshot(single), _snapshot(dual_dir)
    assert b["state"]["progress"]["world_size"] == 2 and a["state"]["progress"]["cur_nimg"] == 8
    assert b["state"]["progress"]["cur_nimg"] == 8
    _assert_close_networks(a, b)
    # Not vacuous: training moved the weights by far more than the tolerance.
    fresh = build_run(_options(), torch.device("cpu")).G.state_dict()
    trained = a["networks"]["G"]["state_dict"]
    assert max(float((trained[k] - fresh[k]).abs().max()) for k in fresh) > 1e-3
    la, lb = _losses(single), _losses(dual_dir)
    assert len(la) == len(lb) == 2
    for (ga, ra, na), (gb, rb, nb) in zip(la, lb):
        assert na == nb  # the collector summed both ranks' counts
        assert ga == pytest.approx(gb, rel=1e-4, abs=1e-5) and ra == pytest.approx(rb, rel=1e-4, abs=1e-5)


def test_snapshots_written_by_rank0_only_and_params_agree(runs):
    run_dir, records = runs("dual_half")
    assert records[0]["saves"] and not records[1]["saves"]
    assert len(records[0]["saves"]) == 2  # one per tick (same file name: kimg rounds to 0)
    # Rank 1 wrote no stats either (the two ticks were logged once).
    assert len((run_dir / "stats.jsonl").read_text().splitlines()) == 2
    # params_agree passed inside the workers, and it does detect a difference when there is one.
    for rec in records:
        assert rec["detected_difference"] is not None and "differs between ranks" in rec["detected_difference"]


def test_resume_two_ranks_on_one_process(runs, tmp_path):
    dual_dir, _ = runs("dual_half")
    snap_path = str(checkpoint.list_snapshots(dual_dir)[-1])
    # Networks and counters are loaded...
    run = build_run(_options(kimg=0.016), torch.device("cpu"))
    restore(run, checkpoint.load_snapshot(snap_path), snap_path)
    assert run.progress.cur_nimg == 8 and run.progress.batch_idx == 2 and run.progress.cur_tick == 2
    saved = checkpoint.load_snapshot(snap_path)["networks"]["G"]["state_dict"]
    assert all(torch.equal(v, saved[k]) for k, v in run.G.state_dict().items())
    # ...and training continues exactly where the 2-rank run stopped.
    resumed = _single(tmp_path / "resumed", _options(kimg=0.016), resume=snap_path)
    snap = _snapshot(resumed)
    assert snap["state"]["progress"]["cur_nimg"] == 16 and snap["state"]["progress"]["world_size"] == 1
    _assert_close_networks(snap, _snapshot(runs("single_full")))


def test_resume_one_process_on_two_ranks(runs, tmp_path):
    single = runs("single_half")
    snap_path = str(checkpoint.list_snapshots(single)[-1])
    run_dir, records = _torchrun(2, tmp_path, _options(kimg=0.016), resume=snap_path)
    snap = _snapshot(run_dir)
    assert snap["state"]["progress"]["cur_nimg"] == 16 and snap["state"]["progress"]["world_size"] == 2
    assert snap["state"]["progress"]["cur_tick"] == 4  # ticks 2 and 3 after the resumed 0 and 1
    assert len(snap["state"]["rng"]["ranks"]) == 2  # per-rank streams, for a same-size resume
    _assert_close_networks(snap, _snapshot(runs("single_full")))
    assert not records[1]["saves"]


def test_resume_two_ranks_on_two_ranks_is_exact_with_rank_local_state(tmp_path):
    """Path length and ADA keep per-rank state (pl_mean, pending signs): the snapshot must hold a global
    value of each, or a same-size resume diverges from the uninterrupted run."""
    opts = dict(pl_weight=2, aug="ada")
    full_dir, _ = _torchrun(2, tmp_path / "full", _options(kimg=0.024, **opts))
    half_dir, _ = _torchrun(2, tmp_path / "half", _options(kimg=0.008, **opts))
    half = checkpoint.list_snapshots(half_dir)[-1]
    # Both ranks' pending signs: batch 0 (Dmain + Dreg, 4 reals each) and batch 1 (Dmain).
    assert checkpoint.load_snapshot(half)["state"]["ada"]["count"] == 12
    resumed_dir, _ = _torchrun(2, tmp_path / "resumed", _options(kimg=0.024, **opts), resume=str(half))
    full, resumed = _snapshot(full_dir), _snapshot(resumed_dir)
    assert full["state"]["progress"]["cur_nimg"] == resumed["state"]["progress"]["cur_nimg"] == 24
    for net in ("G", "D", "G_ema"):
        sa, sb = full["networks"][net]["state_dict"], resumed["networks"][net]["state_dict"]
        for key in sa:
            assert torch.equal(sa[key], sb[key]), f"{net}.{key}"
    assert torch.equal(full["state"]["loss"]["pl_mean"], resumed["state"]["loss"]["pl_mean"])
    # ADA's pending total after the resume equals the uninterrupted run's (each rank's share counted once).
    assert full["state"]["ada"] == resumed["state"]["ada"] and full["state"]["ada"]["count"] > 0


def test_data_shards_disjoint_and_cover():
    n = 10
    shards = [list(iter_take(InfiniteSampler(n, rank=r, num_replicas=2, seed=1), n // 2)) for r in range(2)]
    assert not set(shards[0]) & set(shards[1])
    assert sorted(shards[0] + shards[1]) == list(range(n))
    # The loop's per-rank loaders hold the global batch of a single process, split between the ranks.
    opts = _options(batch=4)
    batches = {}
    for rank, world in ((0, 1), (0, 2), (1, 2)):
        run = build_run(opts, torch.device("cpu"), rank=rank, world_size=world)
        run.progress.batch_idx = 3  # a resumed position
        start_data(run)
        batches[rank, world] = next(run.data_iter)[0]
    assert batches[0, 2].shape[0] == batches[1, 2].shape[0] == 2
    as_set = lambda x: sorted(tuple(img.flatten().tolist()) for img in x)  # noqa: E731
    assert as_set(torch.cat([batches[0, 2], batches[1, 2]])) == as_set(batches[0, 1])
    assert as_set(batches[0, 2]) != as_set(batches[1, 2])


def iter_take(it, k: int) -> list:
    out = []
    for x in it:
        out.append(x)
        if len(out) == k:
            return out
    return out


def _train_cli(outdir: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(REPO / "train.py"), f"--outdir={outdir}", "--cfg=tiny", f"--data={DATA}", "--device=cpu",
           "--batch=4", "--workers=0", "--snap=0", "--tick=0.004", *extra]
    return subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _rank_pid(launcher: int, rank: int) -> int:
    """PID of torchrun's worker with RANK=`rank` (Linux /proc)."""
    for pid in Path(f"/proc/{launcher}/task/{launcher}/children").read_text().split():
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        if f"RANK={rank}".encode() in environ:
            return int(pid)
    raise AssertionError(f"no worker with RANK={rank}")


def _wait_for_training(proc: subprocess.Popen, outdir: Path, limit: float = 60) -> None:
    start = time.time()
    while not list(outdir.glob("*/stats.jsonl")):  # the first tick ended: every rank is in the loop
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.time() - start < limit, "training did not start"
        time.sleep(0.2)


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc to find the rank's pid")
@pytest.mark.parametrize("how", ["kill", "hang"])
def test_lost_rank_fails_run_within_bounded_time(tmp_path, how):
    """A killed rank (torchrun notices) or a hung one (the collective timeout fires) ends the run with a
    non-zero exit code and a message naming a rank, instead of training or waiting forever."""
    timeout_s = 4
    proc = _train_cli(tmp_path, "--kimg=20", f"--dist-timeout={timeout_s}")
    try:
        _wait_for_training(proc, tmp_path)
        victim = _rank_pid(proc.pid, 1)
        start = time.time()
        os.kill(victim, signal.SIGKILL if how == "kill" else signal.SIGSTOP)
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if how == "hang" and "lost contact" in line:
                os.kill(victim, signal.SIGCONT)  # let torchrun's SIGTERM end it promptly
        rc = proc.wait(timeout=60)
        elapsed = time.time() - start
    finally:
        if proc.poll() is None:
            proc.kill()
    output = "".join(lines)
    assert rc != 0
    assert elapsed < timeout_s + 20, f"took {elapsed:.1f}s"
    if how == "kill":
        assert "rank      : 1" in output or "[rank 0/2] lost contact" in output, output[-3000:]
    else:
        assert "[rank 0/2] lost contact with the other processes" in output, output[-3000:]
        assert f"--dist-timeout={timeout_s}s" in output
        assert elapsed >= timeout_s - 0.5  # it was the timeout, not something else, that ended it


def test_gpus_option_spawns_processes(tmp_path):
    """`train.py --gpus=2` runs 2 ranks itself: one run directory, batches split, snapshot written once."""
    cmd = [sys.executable, str(REPO / "train.py"), f"--outdir={tmp_path}", "--cfg=tiny", f"--data={DATA}",
           "--device=cpu", "--batch=4", "--workers=0", "--snap=1", "--tick=0.004", "--kimg=0.004", "--gpus=2"]
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    (run_dir,) = list(tmp_path.iterdir())
    assert "(2 processes)" in proc.stdout
    assert json.loads((run_dir / "training_options.json").read_text())["world_size"] == 2
    snap = _snapshot(run_dir)
    assert snap["state"]["progress"]["world_size"] == 2 and snap["state"]["progress"]["cur_nimg"] == 4



def _alive(pids: list[int]) -> list[int]:
    out = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split(")")[-1].split()[0] != "Z":  # a zombie has ended
                    out.append(pid)
        except FileNotFoundError:
            pass
    return out


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().split(")")[-1].split()[1]) == pid:
                        out.append(int(entry))
            except (FileNotFoundError, ProcessLookupError):
                pass
    return out


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads the process tree from /proc")
def test_stopping_the_launcher_stops_every_rank(tmp_path):
    """`kill -INT` of a `--gpus=2` run started in the background (where SIGINT is ignored, so a
    passed-on SIGINT would not stop the ranks; `kill` takes the same path) stops both ranks cleanly:
    no process left training, one line saying how to go on, no traceback."""
    cmd = [sys.executable, str(REPO / "train.py"), f"--outdir={tmp_path}", "--cfg=tiny", f"--data={DATA}",
           "--device=cpu", "--batch=4", "--workers=0", "--snap=1", "--tick=0.004", "--kimg=5", "--gpus=2"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        deadline = time.time() + 120
        while not list(tmp_path.glob("*/network-snapshot-*.pt")):
            assert proc.poll() is None and time.time() < deadline, proc.communicate()
            time.sleep(0.1)
        ranks = _children(proc.pid)
        assert len(ranks) == 2
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode != 0 and "Traceback" not in err, err[-3000:]
    assert err.strip().splitlines()[-1].startswith("Error: --gpus=2: interrupted; every process has stopped"), err
    assert not _alive(ranks)
    (run_dir,) = list(tmp_path.iterdir())
    assert "Interrupted (SIGTERM); continue with --resume=" in (run_dir / "log.txt").read_text()
    assert not [p for p in run_dir.iterdir() if p.name.endswith(".tmp")]


def test_launcher_sets_torchruns_variables_and_a_failing_rank_stops_the_others(tmp_path):
    """Each rank gets RANK / LOCAL_RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT; when rank 1 fails, rank
    0 (here: sleeping, as a rank waiting in a collective would) is stopped at once, and the launcher
    returns rank 1's exit code."""
    from torch_utils import distributed

    script = tmp_path / "worker.py"
    script.write_text(
        "import json, os, sys, time\n"
        "keys = ['RANK', 'LOCAL_RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT']\n"
        "with open(os.path.join(sys.argv[1], 'env' + os.environ['RANK']), 'w') as f:\n"
        "    json.dump({k: os.environ.get(k) for k in keys}, f)\n"
        "if os.environ['RANK'] == '1':\n"
        "    time.sleep(0.5)\n"
        "    sys.exit(3)\n"
        "time.sleep(120)\n")
    started = time.time()
    assert distributed.launch_local(2, str(script), [str(tmp_path)]) == 3
    assert time.time() - started < distributed.STOP_GRACE_S
    envs = [json.loads((tmp_path / f"env{r}").read_text()) for r in range(2)]
    assert [(e["RANK"], e["LOCAL_RANK"], e["WORLD_SIZE"]) for e in envs] == [("0", "0", "2"), ("1", "1", "2")]
    assert envs[0]["MASTER_PORT"] == envs[1]["MASTER_PORT"] and int(envs[0]["MASTER_PORT"]) > 0

if __name__ == "__main__":
    _worker(sys.argv[1])
