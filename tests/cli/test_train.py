"""train.py end to end on CPU: run directory, --dry-run, --resume, kill -9, and one-line input errors."""

import io
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import PIL.Image
import pytest
import torch
from click.testing import CliRunner

from cli_support import REPO, RES, TINY, env, train
from training import checkpoint

SPATIAL = ["--cfg=tiny-spatial", f"--data=synthetic:shapes:{RES}", *TINY]


def train_inprocess(*args) -> SimpleNamespace:
    """train.main in this process (for errors raised before training starts: no interpreter start-up)."""
    import train as train_cli

    res = CliRunner().invoke(train_cli.main, [str(a) for a in args])
    # An exception other than SystemExit escaped main: the real CLI would print a traceback.
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    return SimpleNamespace(returncode=res.exit_code, stdout=res.stdout, stderr=res.stderr)


def assert_ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """Exit != 0, no traceback, and exactly one 'Error: ...' line on stderr containing `needles`."""
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert "Traceback" not in out
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def run_dirs(outdir: Path) -> list[Path]:
    return sorted(p for p in outdir.iterdir() if p.is_dir())


def final_progress(run_dir: Path) -> dict:
    snaps = checkpoint.list_snapshots(run_dir)
    assert snaps, f"no snapshot in {run_dir}"
    return checkpoint.load_snapshot(snaps[-1])["state"]["progress"]


@pytest.fixture(scope="module")
def trained(spatial) -> Path:
    """One tiny SpatialGAN run (two ticks of one minibatch each, `SPATIAL`); returns its run directory."""
    return spatial.parent


def test_run_writes_the_run_directory(trained):
    assert re.fullmatch(r"\d{5}-synthetic_shapes16-tiny_spatial-kimg0\.008-batch4", trained.name)
    opts = json.loads((trained / "training_options.json").read_text())
    assert opts["cfg"] == "tiny-spatial" and opts["batch"] == 4 and opts["resolution"] == 16
    assert opts["G_kwargs"]["spatial_kwargs"]["encoding"] == "sel_norm" and opts["resume"] is None
    assert "tick 1" in (trained / "log.txt").read_text()
    stats = [json.loads(line) for line in (trained / "stats.jsonl").read_text().splitlines()]
    assert len(stats) == 2 and stats[-1]["Progress/kimg"]["mean"] == pytest.approx(0.008)
    for name in ("reals.png", "fakes_init.png"):
        with PIL.Image.open(trained / name) as img:
            assert img.size[0] % 16 == 0 and img.size[1] % 16 == 0
    assert final_progress(trained)["cur_nimg"] == 8
    G = checkpoint.load_network(next(trained.glob("network-snapshot-*.pt")))
    assert G.img_resolution == 16 and G.heatmap_sampler is not None


def test_dry_run_prints_json_and_creates_nothing(tmp_path):
    outdir = tmp_path / "out"
    proc = train(f"--outdir={outdir}", *SPATIAL, "--dry-run")
    assert_ok(proc)
    opts = json.loads(proc.stdout)
    assert opts["cfg"] == "tiny-spatial" and opts["kimg"] == 0.008 and opts["batch"] == 4
    assert not outdir.exists()


def test_resume_from_run_dir_continues_in_it(trained, tmp_path):
    """--resume=<run dir> continues in that directory from its newest snapshot, so running the same
    command again (what an elastic restart does) always picks up the latest progress."""
    run_dir = tmp_path / trained.name
    shutil.copytree(trained, run_dir)
    options_before = (run_dir / "training_options.json").read_text()
    lines_before = len((run_dir / "stats.jsonl").read_text().splitlines())
    outdir = tmp_path / "out"
    proc = train(f"--outdir={outdir}", *SPATIAL, "--kimg=0.016", f"--resume={run_dir}")
    assert_ok(proc)
    assert "Resumed from" in proc.stdout and "kimg 0.008" in proc.stdout
    assert not outdir.exists()  # no new run directory
    assert final_progress(run_dir)["cur_nimg"] == 16
    assert (run_dir / "training_options.json").read_text() == options_before
    stats = [json.loads(line) for line in (run_dir / "stats.jsonl").read_text().splitlines()]
    assert len(stats) == lines_before + 2 and stats[-1]["Progress/kimg"]["mean"] == pytest.approx(0.016)
    assert "changed settings" not in proc.stdout
    # The same command with a longer --kimg continues from 0.016, not from the snapshot it first resumed;
    # a changed training setting is pointed out. --outdir is not needed to continue a run directory.
    proc = train(*SPATIAL, "--kimg=0.020", f"--resume={run_dir}", "--gamma=0.7")
    assert_ok(proc)
    assert "kimg 0.016" in proc.stdout and final_progress(run_dir)["cur_nimg"] == 20
    assert "changed settings (loss_kwargs.r1_gamma: " in proc.stdout and "-> 0.7)" in proc.stdout
    assert "changed settings" in (run_dir / "log.txt").read_text()
    assert "Resumed from" in (run_dir / "log.txt").read_text()


@pytest.mark.parametrize("damage", ["truncated", "nan"])
def test_a_damaged_newest_snapshot_is_skipped_with_a_warning(trained, tmp_path, damage):
    run_dir = tmp_path / trained.name
    shutil.copytree(trained, run_dir)
    snaps = checkpoint.list_snapshots(run_dir)
    assert len(snaps) >= 2
    if damage == "truncated":
        snaps[-1].write_bytes(snaps[-1].read_bytes()[:5000])
    else:
        data = torch.load(snaps[-1], weights_only=True)
        state = data["networks"]["G_ema"]["state_dict"]
        key = next(k for k, v in state.items() if v.is_floating_point())
        state[key] = torch.full_like(state[key], float("nan"))
        torch.save(data, snaps[-1])
    proc = train_inprocess(f"--outdir={tmp_path / 'out'}", *SPATIAL, "--kimg=0.016", f"--resume={run_dir}",
                           "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert f"Warning: skipping a damaged snapshot ({snaps[-1]}" in proc.stderr
    assert f"resuming from {snaps[-2]}" in proc.stderr
    # A snapshot file given by name is not replaced by another: its damage is the error.
    assert_one_line_error(train_inprocess(f"--outdir={tmp_path / 'out'}", *SPATIAL, f"--resume={snaps[-1]}"),
                          str(snaps[-1]))


def test_outdir_is_required_unless_a_run_directory_is_continued(trained, tmp_path):
    assert_one_line_error(train_inprocess(*SPATIAL, "--dry-run"), "--outdir=DIR is required")
    snapshot = checkpoint.list_snapshots(trained)[-1]  # a snapshot file starts a new run directory
    assert_one_line_error(train_inprocess(*SPATIAL, "--kimg=0.016", f"--resume={snapshot}", "--dry-run"),
                          "--outdir=DIR is required")
    assert_one_line_error(train_inprocess(*SPATIAL, f"--resume={trained}", "--transfer=1", "--dry-run"),
                          "--outdir=DIR is required")


def test_resume_notes_another_dataset_seed_or_method():
    import train as train_cli

    saved = dict(batch=4, seed=0, dataset_kwargs=dict(data="/d/shapes.zip", xflip=False), align=None,
                 G_kwargs=dict(spatial_kwargs=dict(sampler="hierarchical")))
    now = dict(batch=4, seed=5, dataset_kwargs=dict(data="/d/rooms.zip", xflip=True), align=dict(tau=0.25),
               G_kwargs=dict(spatial_kwargs=dict(sampler="eqgan")))
    changes = train_cli.changed_settings(saved, now)
    assert changes == ["dataset_kwargs.data: /d/shapes.zip -> /d/rooms.zip", "dataset_kwargs.xflip: False -> True",
                       "seed: 0 -> 5", "G_kwargs.spatial_kwargs: {'sampler': 'hierarchical'} -> {'sampler': 'eqgan'}",
                       "align: None -> {'tau': 0.25}"]
    assert train_cli.changed_settings({}, now) == []  # an older snapshot without these settings: nothing to say


def test_kill_9_leaves_a_resumable_run(tmp_path):
    outdir = tmp_path / "out"
    args = [f"--outdir={outdir}", *SPATIAL, "--kimg=10"]  # long enough to be killed mid-run
    proc = subprocess.Popen([sys.executable, str(REPO / "train.py"), *args], cwd=REPO, env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not (outdir.exists() and list(outdir.glob("*/network-snapshot-*.pt"))):
            assert proc.poll() is None and time.time() < deadline, "training ended before a snapshot"
            time.sleep(0.05)
        time.sleep(0.7)  # let it get into the next snapshot write, which kill -9 may interrupt
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    (run_dir,) = run_dirs(outdir)
    snaps = checkpoint.list_snapshots(run_dir)
    assert snaps and all(p.name.startswith("network-snapshot-") for p in snaps)
    leftovers = [p.name for p in run_dir.iterdir() if ".pt" in p.name and p not in snaps]
    assert all(n.startswith(".") and n.endswith(".tmp") for n in leftovers), leftovers  # temp files only
    cur_nimg = checkpoint.load_snapshot(snaps[-1])["state"]["progress"]["cur_nimg"]  # complete, loadable
    # Whatever kill -9 interrupted, a half-written temp file must never be picked up by --resume.
    (run_dir / ".network-snapshot-999999.pt.crash.tmp").write_bytes(snaps[-1].read_bytes()[:1000])
    proc2 = train(f"--outdir={outdir}", *SPATIAL, f"--kimg={(cur_nimg + 4) / 1000:g}", f"--resume={run_dir}")
    assert_ok(proc2)
    assert f"Resumed from {snaps[-1]}" in proc2.stdout
    assert final_progress(run_dir)["cur_nimg"] == cur_nimg + 4  # continued in place
    assert not [p for p in run_dir.iterdir() if p.name.endswith(".tmp")]  # the killed run's leftovers are gone
    kimgs = [json.loads(line)["Progress/kimg"]["mean"] for line in (run_dir / "stats.jsonl").read_text().splitlines()]
    assert kimgs == sorted(set(kimgs)), kimgs  # the ticks after the snapshot were dropped, not repeated


def test_sigterm_stops_a_run_cleanly_and_it_resumes(tmp_path):
    """`kill` (a cluster's time limit) is handled like Ctrl-C: log.txt says how to go on, no temporary
    file is left, and --resume continues."""
    outdir = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, str(REPO / "train.py"), f"--outdir={outdir}", *SPATIAL, "--kimg=10"],
                            cwd=REPO, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not (outdir.exists() and list(outdir.glob("*/network-snapshot-*.pt"))):
            assert proc.poll() is None and time.time() < deadline, "training ended before a snapshot"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    (run_dir,) = run_dirs(outdir)
    assert proc.returncode == 130 and "Traceback" not in err, err
    line = f"Interrupted (SIGTERM); continue with --resume={run_dir}"
    assert err.rstrip().endswith(line) and (run_dir / "log.txt").read_text().rstrip().endswith(line)
    assert not [p for p in run_dir.iterdir() if p.name.endswith(".tmp")]
    cur_nimg = final_progress(run_dir)["cur_nimg"]
    assert_ok(train(f"--outdir={outdir}", *SPATIAL, f"--kimg={(cur_nimg + 4) / 1000:g}", f"--resume={run_dir}"))
    assert final_progress(run_dir)["cur_nimg"] == cur_nimg + 4


# ---------------------------------------------------------------------------------------------------
# Bad input: one clear line naming the input, no traceback.


def png_bytes(width: int, height: int, mode: str = "RGB") -> bytes:
    shape = (height, width) if mode == "L" else (height, width, len(mode))
    buf = io.BytesIO()
    PIL.Image.fromarray(np.full(shape, 100, np.uint8), mode).save(buf, format="PNG")
    return buf.getvalue()


def image_dir(path: Path, sizes, mode: str = "RGB") -> Path:
    path.mkdir()
    for i, (w, h) in enumerate(sizes):
        (path / f"img{i}.png").write_bytes(png_bytes(w, h, mode))
    return path


def bad_train(tmp_path, data, *extra, inprocess: bool = True):
    return (train_inprocess if inprocess else train)(f"--outdir={tmp_path / 'out'}", "--cfg=tiny", f"--data={data}", *TINY, *extra)


def test_missing_dataset(tmp_path):
    assert_one_line_error(bad_train(tmp_path, tmp_path / "nope"), str(tmp_path / "nope"))


def test_empty_dataset_dir(tmp_path):
    (tmp_path / "empty").mkdir()
    assert_one_line_error(bad_train(tmp_path, tmp_path / "empty"), "no images", str(tmp_path / "empty"))


@pytest.mark.parametrize("workers", [0, 1])
def test_corrupt_image_in_zip_names_the_member(tmp_path, workers):
    path = tmp_path / "data.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for i in range(3):
            zf.writestr(f"img{i}.png", png_bytes(8, 8))
        zf.writestr("img3.png", png_bytes(8, 8)[:-30])  # truncated PNG: header intact, pixels cut short
    # Only decoding the pixels finds this, so it fails in the training process: run the real CLI. In a
    # DataLoader worker the error comes back wrapped in the worker's traceback: still one line.
    line = assert_one_line_error(bad_train(tmp_path, path, f"--workers={workers}", inprocess=False), "data.zip",
                                 "img3.png")
    assert "worker" not in line
    (run_dir,) = run_dirs(tmp_path / "out")  # the run had started: its log says why it ended
    assert (run_dir / "log.txt").read_text().splitlines()[-1] == line


def test_image_with_a_damaged_header_is_found_before_the_run_starts(tmp_path):
    """Every image's header is read up front: a file that is no image stops the run before its directory
    exists, naming the member and saying why in words (not PIL's in-memory buffer)."""
    path = tmp_path / "data.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for i in range(3):
            zf.writestr(f"img{i}.png", png_bytes(8, 8))
        zf.writestr("img3.png", png_bytes(8, 8)[:40])  # cut inside the header
    line = assert_one_line_error(bad_train(tmp_path, path), "data.zip:img3.png", "not a recognised image format")
    assert "BytesIO" not in line and not (tmp_path / "out").exists()


@pytest.mark.parametrize("case, sizes, mode, needle", [
    ("mixed", [(8, 8), (8, 8), (16, 16)], "RGB", "img2.png"),
    ("nonsquare", [(16, 8), (16, 8)], "RGB", "square"),
    ("npot", [(12, 12), (12, 12)], "RGB", "power of two"),
    ("rgba", [(8, 8), (8, 8)], "RGBA", "RGBA"),
])
def test_bad_image_folders(tmp_path, case, sizes, mode, needle):
    """Found from every image's header (the bad one need not be the first) before the run directory
    exists, by --dry-run too."""
    path = image_dir(tmp_path / case, sizes, mode)
    for dry in ([], ["--dry-run"]):
        assert_one_line_error(bad_train(tmp_path, path, *dry), str(path), needle)
        assert not (tmp_path / "out").exists()


def test_unknown_cfg(tmp_path):
    proc = train_inprocess(f"--outdir={tmp_path}", "--cfg=nonesuch", "--data=synthetic:shapes:16", *TINY)
    assert_one_line_error(proc, "--cfg", "nonesuch")


@pytest.mark.parametrize("option", ["--kimg=nan", "--gamma=inf", "--tick=nan", "--style-mixing=nan", "--tau=inf"])
def test_non_finite_numbers_are_refused(tmp_path, option):
    proc = train_inprocess(f"--outdir={tmp_path}", *SPATIAL, option, "--dry-run")
    assert proc.returncode == 2 and option.split("=")[0] in proc.stderr and "not a finite number" in proc.stderr


@pytest.mark.parametrize("extra, needles", [
    (["--metrics=nonsense"], ["--metrics", "'nonsense' is not a metric"]),
    (["--sel-res=64"], ["64", "img_resolution=16"]),
    (["--align-res=4,32"], ["--align-res=4,32", "[32]", "[4, 8]"]),
])
def test_options_that_cannot_build_fail_before_the_run_directory(tmp_path, extra, needles):
    """--dry-run builds the networks and loss on the CPU, so it fails exactly like the real run would."""
    for dry in (["--dry-run"], []):
        out = tmp_path / ("dry" if dry else "real")
        assert_one_line_error(train_inprocess(f"--outdir={out}", *SPATIAL, *extra, *dry), *needles)
        assert not out.exists()


def test_resume_that_does_not_fit_or_is_finished_fails_before_the_run_directory(trained, tmp_path):
    out = tmp_path / "out"
    # A snapshot of another architecture (tiny-spatial at 16 px) for a baseline run: names both configs.
    proc = train_inprocess(f"--outdir={out}", "--cfg=tiny", f"--data=synthetic:shapes:{RES}", *TINY,
                           f"--resume={trained}")
    assert_one_line_error(proc, "does not fit this run", "'tiny-spatial'", "'tiny'", "--cfg")
    # --kimg is the total length: a snapshot at 0.008 kimg has nothing left to do for --kimg=0.008.
    proc = train_inprocess(f"--outdir={out}", *SPATIAL, f"--resume={trained}")
    assert_one_line_error(proc, "trained 0.008 kimg already", "larger --kimg")
    assert not out.exists()


def test_transfer_starts_a_new_run_from_the_weights(trained, tmp_path):
    proc = train(f"--outdir={tmp_path}", *SPATIAL, "--kimg=0.004", f"--resume={trained}", "--transfer=1")
    assert_ok(proc)
    assert "Starting from the weights of" in proc.stdout and "Resumed from" not in proc.stdout
    (run_dir,) = run_dirs(tmp_path)
    assert run_dir.name.endswith("-transfer")
    opts = json.loads((run_dir / "training_options.json").read_text())
    assert opts["transfer"] is True and opts["augment"]["kimg"] == 100 and opts["ema_rampup"] is None
    assert final_progress(run_dir)["cur_nimg"] == 4  # counted from 0, although the source ran 8 images
    assert (run_dir / "fakes_init.png").exists()


@pytest.mark.parametrize("extra, needles", [
    (["--transfer=1"], ["--transfer=1 needs --resume"]),
    (["--aug=noaug", "--target=0.7"], ["--target is only used with --aug=ada"]),
    (["--aug=fixed", "--p=0.2", "--target=0.7"], ["--target is only used with --aug=ada"]),
    (["--aug=noaug", "--augpipe=bgcf"], ["--augpipe needs augmentation"]),
], ids=["transfer-without-resume", "target-noaug", "target-fixed", "augpipe-noaug"])
def test_options_that_would_be_ignored_are_refused(tmp_path, extra, needles):
    assert_one_line_error(train_inprocess(f"--outdir={tmp_path}", *SPATIAL, *extra, "--dry-run"), *needles)


def test_comove_during_training_is_checked_before_the_run(tmp_path):
    """Co-move at each snapshot needs heatmaps and a segmenter: found before the run directory exists."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(2):
        (folder / f"{i}.png").write_bytes(png_bytes(16, 16))
    out = tmp_path / "out"
    cases = [(["--cfg=tiny", f"--data=synthetic:shapes:{RES}"], "needs a spatial generator"),
             (["--cfg=tiny-spatial", f"--data={folder}"], "--segmenter=maskrcnn --segmenter-weights=FILE"),
             (["--cfg=tiny-spatial", f"--data={folder}", "--segmenter=maskrcnn"], "needs a torchvision"),
             (["--cfg=tiny-spatial", f"--data={folder}", "--segmenter=maskrcnn",
               f"--segmenter-weights={tmp_path / 'none.pth'}"], "none.pth")]
    for extra, needle in cases:
        assert_one_line_error(train_inprocess(f"--outdir={out}", *extra, *TINY[:-2], "--metrics=comove4"),
                              "--metrics=comove4", needle)
    assert not out.exists()
    proc = train_inprocess(f"--outdir={out}", "--cfg=tiny-spatial", f"--data={folder}", "--metrics=comove4",
                           "--segmenter=synthetic:shapes", "--dry-run")
    assert proc.returncode == 0, proc.stdout
    assert json.loads(proc.stdout)["metric_kwargs"] == {"segmenter": "synthetic:shapes"}


def test_batch_not_divisible_by_batch_gpu(tmp_path):
    proc = train_inprocess(f"--outdir={tmp_path}", *SPATIAL, "--batch-gpu=3")
    assert_one_line_error(proc, "--batch=4", "--batch-gpu=3")


def resume_targets(tmp_path: Path) -> list[Path]:
    text = tmp_path / "notes.txt"
    text.write_text("not a snapshot\n")
    tensor = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), tensor)
    evil = tmp_path / "evil.pt"
    # A protocol-2 pickle of os.system('touch pwned!'): plain pickle.load would run it.
    evil.write_bytes(b"\x80\x02cposix\nsystem\nq\x00X\x0c\x00\x00\x00touch pwned!q\x01\x85q\x02Rq\x03.")
    return [text, tensor, evil]


@pytest.mark.parametrize("which", [0, 1, 2], ids=["text", "plain-tensor", "code-pickle"])
def test_resume_of_a_non_snapshot(tmp_path, which):
    target = resume_targets(tmp_path)[which]
    proc = train(f"--outdir={tmp_path / 'out'}", *SPATIAL, f"--resume={target}")
    assert_one_line_error(proc, str(target), "not a SpatialGAN snapshot")
    assert not (REPO / "pwned!").exists() and not (tmp_path / "pwned!").exists()


def test_resume_from_a_url_and_upstream_presets(trained, tmp_path):
    snap = checkpoint.list_snapshots(trained)[-1]
    proc = train_inprocess(f"--outdir={tmp_path / 'out'}", *SPATIAL, "--kimg=0.016", f"--resume={snap.as_uri()}",
                           "--dry-run")
    assert proc.returncode == 0, proc.stdout
    assert_one_line_error(train_inprocess(f"--outdir={tmp_path / 'out'}", *SPATIAL, "--resume=ffhq256"),
                          "transfer-learning preset", "not supported yet")


def test_resume_of_a_dir_without_snapshots(tmp_path):
    proc = train_inprocess(f"--outdir={tmp_path / 'out'}", *SPATIAL, f"--resume={tmp_path}")
    assert_one_line_error(proc, str(tmp_path), "no network-snapshot")


def test_outdir_not_writable(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        # Root ignores permission bits; a path below a regular file is unwritable for everyone.
        if os.access(ro, os.W_OK):
            (tmp_path / "afile").write_text("x")
            outdir = tmp_path / "afile" / "sub"
        else:
            outdir = ro
        assert_one_line_error(train_inprocess(f"--outdir={outdir}", *SPATIAL), f"--outdir={outdir}")
    finally:
        ro.chmod(0o700)


def test_outdir_checks_nccl_on_cpu_and_seed_range_are_found_by_dry_run(tmp_path):
    (tmp_path / "afile").write_text("x")
    for outdir, needle in [(tmp_path / "afile", "a file is in the way"), (tmp_path / "afile" / "sub", "is a file")]:
        assert_one_line_error(train_inprocess(f"--outdir={outdir}", *SPATIAL, "--dry-run"), f"--outdir={outdir}",
                              needle)
    assert_one_line_error(train_inprocess(f"--outdir={tmp_path}", *SPATIAL, "--gpus=2", "--dist-backend=nccl",
                                          "--dry-run"), "--dist-backend=nccl needs CUDA devices")
    proc = train_inprocess(f"--outdir={tmp_path}", *SPATIAL, f"--seed={2**64}", "--dry-run")
    assert proc.returncode == 2 and "--seed" in proc.stderr
    assert not list((tmp_path).glob("0*"))


def test_home_in_paths_and_very_long_run_names(tmp_path, monkeypatch):
    """`--outdir=~/runs`: the shell leaves that `~` alone; a run with many options still gets a
    directory (its name shortened, told apart by a hash)."""
    monkeypatch.setenv("HOME", str(tmp_path))
    many = ["--aug=fixed", "--p=0.5", "--augpipe=bgcfnc", "--mirror=1", "--pl-weight=0", "--gamma=0",
            "--style-mixing=0", "--sampler=eqgan", "--processing=fine", "--kernel-size=5", "--dilation=2",
            "--compose=separate", "--align-weight=2", "--tau=0.3", "--cam-variant=canonical", "--cam-score=logit",
            "--desc=" + "x" * 120]
    proc = train_inprocess("--outdir=~/runs", *SPATIAL, "--kimg=0.004", *many)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (run_dir,) = run_dirs(tmp_path / "runs")
    assert len(run_dir.name.encode()) <= 220 and re.search(r"-[0-9a-f]{8}$", run_dir.name)
    assert not (REPO / "~").exists()


@pytest.mark.parametrize("flag", ["--channels-last=1", "--nhwc=1"])  # --nhwc: StyleGAN2-ADA's name
def test_channels_last_option_and_its_stylegan2_ada_name(tmp_path, flag):
    proc = train_inprocess(f"--outdir={tmp_path}", "--cfg=paper256", "--data=synthetic:shapes:32", flag, "--dry-run")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    opts = json.loads(proc.stdout)
    assert opts["G_kwargs"]["synthesis_kwargs"]["fp16_channels_last"] is True
    assert opts["D_kwargs"]["block_kwargs"] == {"fp16_channels_last": True}


def test_freezed_option_and_its_run_name(tmp_path):
    proc = train_inprocess(f"--outdir={tmp_path}", "--cfg=paper256", "--data=synthetic:shapes:32", "--freezed=4",
                           "--dry-run")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(proc.stdout)["D_kwargs"]["freeze_layers"] == 4
    import train

    args = dict(cond=False, subset=None, mirror=False, gamma=None, kimg=None, batch=None, aug=None, p=None,
                target=None, augpipe=None, resume=None, freezed=4, desc=None)
    options = dict(dataset_name="shapes", cfg="paper256", world_size=1, transfer=False)
    assert train.describe(options, args) == "shapes-paper256-freezed4"
    args.update(aug="fixed", p=0.25, target=None, augpipe="bgcf", resume="x.pt", freezed=0)
    assert train.describe(options, args) == "shapes-paper256-fixed-p0.25-bgcf-resumecustom"
    args.update(aug="ada", p=None, target=0.7, augpipe=None)
    assert train.describe(dict(options, transfer=True), args) == "shapes-paper256-ada-target0.7-transfer"
    args.update(aug=None, target=None, resume=None, encoding="flatten", sampler="noise", align=False, tau=0.5,
                sel_res="4,8")
    assert train.describe(options, args) == "shapes-paper256-encodingflatten-samplernoise-selres4_8-align0-tau0.5"
    # paper256's resnet D at 32²: fromRGB + 3 layers per block x 3 blocks = 10 layers.
    assert_one_line_error(train_inprocess(f"--outdir={tmp_path}", "--cfg=paper256", "--data=synthetic:shapes:32",
                                          "--freezed=11", "--dry-run"), "--freezed must be in [0, 10]")


@pytest.mark.parametrize("device", [pytest.param("cpu", marks=pytest.mark.slow),
                                    pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
                                        not torch.cuda.is_available(), reason="needs a CUDA device")])])
def test_train_resume_generate_with_mixed_precision(tmp_path, device):
    """The user's path on `device`: an indoor SpatialGAN (SEL_indoor, GradCAM alignment, ADA) with fp16
    blocks and conv_clamp, trained, resumed and sampled through the CLIs. On a GPU that is mixed
    precision with the CUDA kernels (SPATIALGAN_OPS=cuda: kernels or an error, no silent fallback) and
    eager phases (`--cuda-graphs=0`; test_train_with_cuda_graphs runs the graphs); on the CPU the fp16
    blocks are switched off automatically and the same run must still work."""
    cfg = json.loads((REPO / "configs" / "tiny-spatial-indoor.json").read_text())
    cfg.update(num_fp16_res=2, conv_clamp=256, aug="ada")
    cfg_file = tmp_path / "indoor-fp16.json"
    cfg_file.write_text(json.dumps(cfg))
    common = [f"--cfg={cfg_file}", "--data=synthetic:rooms:32", f"--device={device}", "--tick=0.008", "--snap=1",
              "--metrics=none", "--batch=8", "--workers=0", *(["--cuda-graphs=0"] if device == "cuda" else [])]
    e = dict(env(), SPATIALGAN_OPS="cuda" if device == "cuda" else "auto")

    def run(script, *args):
        proc = subprocess.run([sys.executable, str(REPO / script), *args], cwd=REPO, env=e, capture_output=True,
                              text=True, timeout=300)
        assert_ok(proc)
        return proc

    run("train.py", f"--outdir={tmp_path / 'runs'}", *common, "--kimg=0.016")
    (run_dir,) = run_dirs(tmp_path / "runs")
    newest = checkpoint.list_snapshots(run_dir)[-1]  # a snapshot file: the resumed run gets a new directory
    run("train.py", f"--outdir={tmp_path / 'resumed'}", *common, "--kimg=0.024", f"--resume={newest}")
    (resumed,) = run_dirs(tmp_path / "resumed")
    assert final_progress(resumed)["cur_nimg"] == 24
    stats = [json.loads(line) for line in (resumed / "stats.jsonl").read_text().splitlines()]
    losses = {k: s[k]["mean"] for s in stats for k in s if k.startswith("Loss/")}
    assert {"Loss/G/loss", "Loss/G/align", "Loss/D/loss"} <= set(losses), sorted(losses)
    assert all(math.isfinite(v) for v in losses.values()), losses

    snap = checkpoint.list_snapshots(resumed)[-1]
    run("generate.py", f"--network={snap}", "--seeds=0-1", "--heatmap-seeds=3", "--remove=1", "--restyle=2:77",
        f"--device={device}", f"--outdir={tmp_path / 'gen'}")
    images = sorted((tmp_path / "gen").glob("*.png"))
    assert len(images) == 2
    for path in images:
        with PIL.Image.open(path) as img:
            assert img.size == (32, 32) and np.asarray(img).std() > 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_train_with_cuda_graphs(tmp_path):
    """train.py --cuda-graphs=1 on a GPU: SpatialGAN with mixed precision, the CUDA kernels, cuDNN
    benchmarking, a DataLoader worker and the geometric augmentations (static padding); all four phases
    are captured after their warm-up and replayed (Dreg at its 4th run, step 48 of 50), with no "graphs
    off" line, and the run trains to finite losses."""
    cfg = json.loads((REPO / "configs" / "tiny-spatial.json").read_text())
    cfg.update(num_fp16_res=2, conv_clamp=256)
    cfg_file = tmp_path / "spatial-fp16.json"
    cfg_file.write_text(json.dumps(cfg))
    proc = subprocess.run([sys.executable, str(REPO / "train.py"), f"--outdir={tmp_path / 'runs'}", f"--cfg={cfg_file}",
                           "--data=synthetic:shapes:32", "--device=cuda", "--cuda-graphs=1", "--aug=fixed", "--p=0.2",
                           "--kimg=0.4", "--tick=0.1", "--snap=1", "--metrics=none", "--batch=8", "--workers=1"],
                          cwd=REPO, env=dict(env(), SPATIALGAN_OPS="cuda"), capture_output=True, text=True, timeout=300)
    assert_ok(proc)
    assert "CUDA graphs off" not in proc.stdout + proc.stderr
    ticks = [line for line in proc.stdout.splitlines() if line.startswith("tick ")]
    assert ticks and ticks[-1].endswith("graphs 4"), ticks
    (run_dir,) = run_dirs(tmp_path / "runs")
    assert final_progress(run_dir)["cur_nimg"] == 400
    stats = [json.loads(line) for line in (run_dir / "stats.jsonl").read_text().splitlines()]
    losses = {k: s[k]["mean"] for s in stats for k in s if k.startswith("Loss/")}
    assert {"Loss/G/loss", "Loss/G/align", "Loss/D/loss", "Loss/G/reg", "Loss/D/reg"} <= set(losses), sorted(losses)
    assert all(math.isfinite(v) for v in losses.values()), losses


def test_cuda_graphs_option(tmp_path):
    proc = train_inprocess(f"--outdir={tmp_path}", "--cfg=tiny", "--data=synthetic:shapes:32", "--cuda-graphs=1",
                           "--dry-run")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(proc.stdout)["cuda_graphs"] is True


@pytest.mark.parametrize("device, extra, expected", [
    ("cpu", [], False),
    ("cuda", [], True),                            # one GPU: on by default
    ("cuda", ["--gpus=2"], False),                 # several processes: only when asked
    ("cuda", ["--gpus=2", "--cuda-graphs=1"], True),
    ("cuda", ["--cuda-graphs=0"], False),
])
def test_cuda_graphs_default_follows_the_device_and_the_process_count(tmp_path, monkeypatch, device, extra, expected):
    import train as train_cli

    monkeypatch.setattr(train_cli, "pick_device", lambda *_: torch.device(device))  # no GPU needed: a dry run
    proc = train_inprocess(f"--outdir={tmp_path}", "--cfg=tiny", "--data=synthetic:shapes:32", "--dry-run", *extra)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(proc.stdout)["cuda_graphs"] is expected
