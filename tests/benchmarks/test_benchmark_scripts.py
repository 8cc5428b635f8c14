"""The benchmark scripts start, and their CPU paths run at tiny size.

They are what a GPU session runs once with a fixed time budget, so a typo must show up here first.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks"
sys.path.insert(0, str(BENCH))

import gpu_ops_training_check as ops_check  # noqa: E402
import ops_speed  # noqa: E402
import step_profile  # noqa: E402
import train_speed as ts  # noqa: E402


def _run(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.parametrize("script", ["train_speed.py", "step_profile.py", "gpu_ops_training_check.py",
                                    "metric_speed.py", "ops_speed.py"])
def test_help(script):
    proc = _run(str(BENCH / script), "--help")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "--device" in proc.stdout


@pytest.mark.slow
def test_launch_count_on_cpu(tmp_path):
    """Every phase of the tiny config, eagerly and with emulated CUDA graphs: one graph launch per phase
    and far fewer host-side ops around it."""
    out = tmp_path / "launches.md"
    proc = _run(str(BENCH / "launch_count.py"), "--cfg=tiny", "--cfg=tiny-spatial", "--res=16", f"--out={out}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = re.findall(r"^\| (tiny\S*) \| (\w+) \| (\d+) \| (\d+) \| (\d+) \|$", out.read_text(), re.MULTILINE)
    assert [(r[0], r[1]) for r in rows] == [(cfg, phase) for cfg in ("tiny", "tiny-spatial")
                                            for phase in ("Gmain", "Greg", "Dmain", "Dreg")]
    for _, phase, eager, around, launches in rows:
        assert int(launches) == 1 and 0 < int(around) < int(eager) / 10, (phase, eager, around)
    assert "CUDA graphs off" not in out.read_text()


def test_ops_training_check_compares_every_statistic_against_its_scale():
    ref = {"Loss/G/loss": [2.0, 1.0], "Loss/scores/fake": [0.001, -0.5], "Loss/signs/fake": [1.0, -1.0],
           "G_param_sum": [10.0]}
    same = {k: list(v) for k, v in ref.items()}
    assert ops_check.compare(ref, same)[1:] == (0.0, 0.0)
    # Scores near 0 are judged against their largest magnitude (0.5), not against themselves.
    near = dict(same, **{"Loss/scores/fake": [0.002, -0.5]})
    assert ops_check.compare(ref, near)[1:] == (pytest.approx(0.002), pytest.approx(0.002))
    assert ops_check.compare(ref, dict(same, **{"Loss/signs/fake": [-1.0, 1.0]}))[1:] == (0.0, 0.0)
    drift = ops_check.compare(ref, dict(same, G_param_sum=[11.0]))
    assert drift[1:] == (pytest.approx(1 / 11), 0.0)  # taken after the last step: not a step-0 figure
    # A statistic the CUDA run lost (or cut short) must fail the check, not vanish from it.
    lost = {k: v for k, v in same.items() if k != "Loss/G/loss"}
    assert ops_check.compare(ref, lost)[1:] == (float("inf"), float("inf"))
    assert ops_check.compare(ref, dict(same, **{"Loss/G/loss": [2.0]}))[1] == float("inf")


@pytest.mark.slow
def test_ops_training_check_runs_on_cpu():
    """Both children run (on the CPU each op path is the reference one, so they agree exactly)."""
    proc = _run(str(BENCH / "gpu_ops_training_check.py"), "--device=cpu", "--steps=1", "--res=16")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "| Loss/G/loss | 0 |" in proc.stdout
    assert "step 0: worst relative difference 0.000e+00" in proc.stdout


def test_gpu_check_script_parses():
    proc = subprocess.run(["bash", "-n", str(BENCH / "gpu_check.sh")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_gpu_check_step_limits_fit_one_device_call():
    """The steps' limits add up to the total the header states; with each step's grace period to be killed,
    that stays under the 600 s a device command gets."""
    text = (BENCH / "gpu_check.sh").read_text()
    limits = {m[0]: int(m[1]) for m in re.findall(r"\bstep (\w+) (\d+) ", text)}
    assert set(limits) == {"versions", "build", "tests", "training", "ops", "speed", "profile"}
    total = int(re.search(r"\((\d+) s in all", text)[1])
    grace = int(re.search(r"timeout --kill-after=(\d+) ", text)[1])
    assert sum(limits.values()) == total and total + grace * len(limits) <= 600


# Stands in for python3 in gpu_check.sh: echoes its arguments, writes a row to any --out file, and fails
# the pytest step, so the script's bookkeeping can be checked on a machine without a GPU.
_STUB_PYTHON = """#!/usr/bin/env bash
echo "stub python: $*"
out=
for a in "$@"; do
  if [ -n "$out" ]; then echo "| stub row |" > "$a"; out=; fi
  [ "$a" = --out ] && out=1
done
case " $* " in *" pytest "*) echo "stub: tests failed"; exit 3;; esac
exit 0
"""


def _gpu_check(tmp_path, *args: str) -> subprocess.CompletedProcess:
    stub = tmp_path / "stub-python"
    stub.write_text(_STUB_PYTHON)
    stub.chmod(0o755)
    env = dict(os.environ, PYTHON=str(stub))
    return subprocess.run(["bash", str(BENCH / "gpu_check.sh"), *args], env=env, capture_output=True, text=True,
                          timeout=120)


def test_gpu_check_records_every_step_and_goes_on_after_a_failure(tmp_path):
    out = tmp_path / "out"
    proc = _gpu_check(tmp_path, str(out))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    summary = (out / "summary.md").read_text()
    verdicts = [line.split(":")[0][2:] + ":" + line.split(":")[1].split()[0] for line in summary.splitlines()
                if line.startswith("- ")]
    assert verdicts == ["versions:ok", "build:ok", "tests:FAILED", "training:ok", "ops:ok", "speed:ok", "profile:ok"]
    assert "failed or timed out: tests" in summary
    # The tables are copied into the summary (the profile too); every step's output lands in the one log,
    # in order.
    assert summary.count("| stub row |") == 2 and summary.count("stub python: benchmarks/step_profile.py") == 2
    assert "--cuda-graphs --ops=auto" in summary
    log = (out / "steps.log").read_text()
    order = [log.index(f"== {name} ") for name in ("versions", "build", "tests", "training", "ops", "speed", "profile")]
    assert order == sorted(order)
    assert "stub: tests failed" in log and "benchmarks/step_profile.py --device=cuda" in log
    # A timed GPU session fetches only a few result files: the script keeps to five.
    assert sorted(p.name for p in out.iterdir()) == ["ops_speed.md", "step_profile.md", "steps.log", "summary.md",
                                                     "train_speed.md"]


def test_gpu_check_reruns_only_the_named_steps(tmp_path):
    out = tmp_path / "rerun"
    proc = _gpu_check(tmp_path, str(out), "speed")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = (out / "summary.md").read_text()
    assert [line.split(":")[0] for line in summary.splitlines() if line.startswith("- ")] == \
        ["- versions", "- build", "- speed"]
    assert "| stub row |" in summary and not (out / "step_profile.md").exists()

    proc = _gpu_check(tmp_path, str(out), "tets")
    assert proc.returncode == 2 and "unknown step 'tets'" in proc.stderr


def test_flop_count_includes_every_phase():
    run = ts.build(ts.make_options("tiny", 16, batch=2), torch.device("cpu"))
    per_image = ts.count_flops(run)
    # Dreg (R1 through D) must be counted: removing it from the weights lowers the total.
    weights = dict(ts.PHASE_WEIGHT)
    try:
        ts.PHASE_WEIGHT["Dreg"] = 0.0
        without_dreg = ts.count_flops(run)
    finally:
        ts.PHASE_WEIGHT.update(weights)
    assert per_image > without_dreg > 0


@pytest.mark.slow
def test_step_profile_on_cpu(tmp_path):
    out = tmp_path / "profile.md"
    proc = _run(str(BENCH / "step_profile.py"), "--device=cpu", "--cfg=tiny", "--res=16", "--batch=2", "--top=5",
                "--ops=auto", "--ops=ref", f"--out={out}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = out.read_text()
    assert "## Step profile: tiny @16², batch 2, fp32, SPATIALGAN_OPS=auto" in text
    assert "## Step profile: tiny @16², batch 2, fp32, SPATIALGAN_OPS=ref" in text
    assert text.count("| op / kernel |") == 2 and text.count("| convolutions |") == 2
    # One row per phase: unprofiled wall and host times next to the phase's own profiled time (on the
    # CPU nothing is queued: no syncs, no busy share).
    phase_rows = re.findall(r"^\| (Gmain|Greg|Dmain|Dreg) \| ([\d.e+-]+) \| ([\d.e+-]+) \| — \| ([\d.e+-]+) \| — \|",
                            text, re.MULTILINE)
    assert [r[0] for r in phase_rows] == ["Gmain", "Greg", "Dmain", "Dreg"] * 2
    assert all(0 < float(host) <= float(wall) and float(prof) > 0 for _, wall, host, prof in phase_rows)
    # --cuda-graphs on a CPU: said to be off, and the eager step is profiled.
    proc = _run(str(BENCH / "step_profile.py"), "--device=cpu", "--cfg=tiny", "--res=16", "--batch=2", "--top=5",
                "--cuda-graphs", f"--out={out}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = out.read_text()
    assert "CUDA graphs off, the phases run eagerly: the run is on cpu" in text
    assert "## Step profile: tiny @16², batch 2, CUDA graphs, fp32, SPATIALGAN_OPS=auto" in text


def test_step_profile_families_name_every_custom_kernel():
    """Each `__global__` kernel in the ops' .cuh files falls in its op's family, and in no other."""
    ops_dir = Path(__file__).resolve().parents[2] / "torch_utils" / "ops"
    for op in ("bias_act", "upfirdn2d"):
        source = (ops_dir / f"{op}_kernel.cuh").read_text()
        kernels = re.findall(r"__global__ void (?:__launch_bounds__\([^)]*\)\s*)?(\w+)\(", source)
        assert kernels, op
        for name in kernels:
            families = [f for f, frags in step_profile.FAMILIES.items() if any(x in name.lower() for x in frags)]
            assert families == [next(f for f in step_profile.FAMILIES if f.startswith(op))], name


def test_step_profile_counts_each_gpu_microsecond_once():
    """Only device events count: not the CPU op that launched a kernel, not a record_function's GPU
    twin (both carry the kernels' time again), not CPU events."""
    from types import SimpleNamespace

    from torch.autograd import DeviceType

    def event(name, us, device=DeviceType.CUDA, annotation=False):
        return SimpleNamespace(name=name, device_type=device, is_user_annotation=annotation,
                               time_range=SimpleNamespace(elapsed_us=lambda: us))

    events = [
        event("aten::cudnn_convolution", 50.0, DeviceType.CPU), event("sm90_xmma_fprop", 30.0),
        event("sm90_xmma_fprop", 20.0), event("Gmain_forward", 60.0, annotation=True),
        event("bias_act_kernel<float>", 5.0), event("idle", 0.0)]
    rows = sorted(step_profile._device_kernel_rows(events))
    assert rows == [(5.0, "bias_act_kernel<float>", 1), (50.0, "sm90_xmma_fprop", 2)]


def test_step_profile_host_waits_leave_out_the_wait_for_the_phase_end():
    """Syncs inside a phase (an `.item()`'s stream sync) count; the wait for its last kernels, inside the
    end-of-phase range, does not; nor do other runtime calls or GPU events."""
    from types import SimpleNamespace

    from torch.autograd import DeviceType

    def event(name, us, parent=None, device=DeviceType.CPU):
        return SimpleNamespace(name=name, device_type=device, cpu_parent=parent,
                               time_range=SimpleNamespace(elapsed_us=lambda: us))

    item = event("aten::_local_scalar_dense", 40.0)
    end = event(step_profile.END_SYNC, 500.0)
    events = [item, event("cudaStreamSynchronize", 30.0, parent=item), event("cudaStreamSynchronize", 7.0),
              end, event("cudaDeviceSynchronize", 480.0, parent=end), event("cudaLaunchKernel", 4.0, parent=item),
              event("cudaStreamSynchronize", 9.0, device=DeviceType.CUDA)]
    assert step_profile._host_wait_us(events) == 37.0


def test_step_profile_traces_kernels_to_the_op_that_launched_them():
    from types import SimpleNamespace

    from torch.autograd.profiler_util import Kernel

    def cpu(name, parent=None, shapes=(), concrete=(), kernels=()):
        return SimpleNamespace(name=name, cpu_parent=parent, input_shapes=[list(s) for s in shapes],
                               concrete_inputs=list(concrete), kernels=[Kernel(k, 0, us) for k, us in kernels])

    conv = cpu("aten::cudnn_convolution", shapes=[(32, 64, 257, 257), (128, 64, 3, 3)], concrete=["", [2, 2], 1])
    launch = cpu("cudaLaunchKernel", parent=conv, kernels=[("slow_fprop", 20.0)])
    again = cpu("cudaLaunchKernel", parent=conv, kernels=[("slow_fprop", 10.0), ("other", 1.0)])
    orphan = cpu("cudaMemsetAsync", kernels=[("slow_fprop", 2.0)])
    out = step_profile._kernel_launchers([conv, launch, again, orphan], {"slow_fprop"})
    assert out == {"slow_fprop": {
        ("aten::cudnn_convolution", "[[32, 64, 257, 257], [128, 64, 3, 3]] [[2, 2], 1]"): [30.0, 2],
        ("(no aten op)", ""): [2.0, 1]}}


def test_ops_speed_times_every_kernel(kernel_device, tmp_path, monkeypatch):
    """Every row of the op benchmark runs, kernels included (on the GPU, or emulated on the CPU)."""
    out = tmp_path / "ops.md"
    monkeypatch.setattr(ts, "OUT_FILE", [])  # main points the shared output list at `out`; restored after
    ops_speed.main.main(["--device", kernel_device, "--quick", "--batch=1", "--reps=1", f"--out={out}"],
                        standalone_mode=False)
    rows = [line.split(" | ") for line in out.read_text().splitlines() if line.startswith(("| bias_act", "| upfirdn2d"))]
    # Per dtype: 2 bias_act cases and a channels-last copy of one x (ref, cuda) x (fwd, fwd+bwd), 3 upfirdn2d
    # cases x (those 4 + 3 kernels), and their channels-last copies x (those 4 + 4 kernels).
    assert len(rows) == 2 * (3 * 4 + 3 * 7 + 3 * 8)
    assert sum(r[3] == "kernel: tiled fixed" for r in rows) == 12
    assert sum(r[3] == "kernel: channels-last" and "channels-last" in r[1] for r in rows) == 6
    assert all(float(r[5]) > 0 for r in rows)
    assert all(r[7].endswith("× |") for r in rows if r[3] != "ref")  # each kernel row is compared with ref
    assert "{'bias_act': None, 'upfirdn2d': None}" in out.read_text()  # the kernels ran, no fallback


@pytest.mark.slow
def test_gpu_section_runs_every_row(monkeypatch, tmp_path):
    """Section D's loop (3 configs x 11 precision/ops/layout/graph/augmentation variants, FLOP count, fraction
    of peak) on the CPU at 64² with tiny widths, the CUDA graphs emulated: the GPU session must not be the
    first to run it."""
    from torch_utils.graph_emulation import TraceBackend
    from training import heatmaps, phase_graphs

    monkeypatch.setattr(phase_graphs, "unsupported", lambda run, need_cuda=True: None)
    monkeypatch.setattr(phase_graphs, "CudaGraphBackend", lambda device: TraceBackend())
    monkeypatch.setattr(heatmaps.HeatmapSpec, "check_values", lambda self: self)  # skipped on a GPU
    make_options = ts.make_options
    monkeypatch.setattr(ts, "make_options", lambda *a, **k: make_options(*a, channel_base=256, channel_max=8, **k))
    monkeypatch.setattr(ts, "peak_tflops", lambda device: ("stand-in", {"fp32": 1.0, "fp16": 2.0}))
    monkeypatch.setenv("SPATIALGAN_OPS", "auto")  # restored afterwards; section D sets it per row
    monkeypatch.setattr(ts, "OUT_FILE", [str(tmp_path / "d.md")])
    ts.section_d(torch.device("cpu"), quick=True, reps=1, batch=2)
    text = (tmp_path / "d.md").read_text()
    measured, targets_table = text.split("### D. Against the targets")
    targets_table, augmented_table = targets_table.split("### D. CUDA graphs with the geometric augmentations")
    rows = [line.split(" | ") for line in measured.splitlines() if "@64²" in line]
    assert [r[0].removeprefix("| ") for r in rows] == [f"{cfg} @64²" for cfg in
                                                       ("baseline256", "lsun-cat256", "lsun-bedroom256") for _ in range(11)]
    for r in rows:
        s_per_kimg, img_s, gflop, frac = (float(v) for v in (r[3], r[4], r[6], r[7].rstrip(" |")))
        assert s_per_kimg > 0 and img_s > 0 and gflop > 0 and frac > 0
        # Allocations: none counted with graphs (their pool was set aside at capture, see section_d).
        assert (r[5] == "—") if "CUDA graphs" in r[1] else float(r[5]) >= 0
    # Each config: fp32 ref, fp32 auto, mixed ref, mixed auto, mixed channels-last ref and auto, then with CUDA
    # graphs mixed ref and auto, mixed channels-last auto; no kernels on the CPU.
    assert [(r[1], r[2]) for r in rows] == 3 * [("fp32", "ref (ref)"), ("fp32", "auto (ref)"), ("mixed", "ref (ref)"),
                                                ("mixed", "auto (ref)"), ("mixed, channels-last", "ref (ref)"),
                                                ("mixed, channels-last", "auto (ref)"),
                                                ("mixed, CUDA graphs", "ref (ref)"), ("mixed, CUDA graphs", "auto (ref)"),
                                                ("mixed, channels-last, CUDA graphs", "auto (ref)"),
                                                ("mixed, bgc p=0.5", "auto (ref)"),
                                                ("mixed, CUDA graphs, bgc p=0.5", "auto (ref)")]
    assert "CUDA graphs off" not in text
    # No kernels on the CPU: every target compares against the CUDA ops, so the table says "unknown".
    targets = [line for line in targets_table.splitlines() if line.startswith("| baseline256 @64²")]
    assert len(targets) == 1 and targets[0].count("—") == len(ts.TARGET_HEADER) - 1, targets
    # The augmented pair compares the reference path with itself here (no kernels): both img/s and a ratio.
    augmented = [line.split(" | ") for line in augmented_table.splitlines() if "@64²" in line]
    assert len(augmented) == 3 and all(float(v.rstrip(" |")) > 0 for r in augmented for v in r[1:]), augmented


def test_targets_compare_each_path_at_its_best():
    """img/s keyed (fp32, ops used, channels-last, CUDA graphs) -> the ratios and verdicts against the speed targets."""
    speeds = {(True, "ref", False, False): 60.0, (True, "cuda", False, False): 72.0,
              (False, "ref", False, False): 120.0, (False, "cuda", False, False): 160.0,
              (False, "ref", True, False): 80.0, (False, "cuda", True, False): 165.0,
              (False, "ref", False, True): 150.0, (False, "cuda", False, True): 240.0}
    row = ts.target_row("baseline256", speeds)
    assert row[0] == "baseline256" and len(row) == len(ts.TARGET_HEADER)
    assert row[1:5] == pytest.approx([1.2, 160 / 120, 165 / 120, 240 / 150])
    assert row[5] == "met" and row[6] == pytest.approx(160 / 72) and row[7] == "met"
    assert row[8] == pytest.approx(1.5)
    speeds[(False, "cuda", False, True)] = 200.0  # best / best with graphs: 200 / 150 < 1.5
    assert ts.target_row("c", speeds)[5] == "not met"
    del speeds[(True, "cuda", False, False)]  # a missing row: its ratios are unknown, not guessed
    assert ts.target_row("c", speeds)[1] is None and ts.target_row("c", speeds)[6:8] == [None, None]


@pytest.mark.parametrize("cfg", ["baseline256", "lsun-cat256", "lsun-bedroom256"])
def test_speed_benchmarks_time_the_four_phase_step(cfg):
    """The paper presets train without PL and style mixing; the benchmarks keep timing the full step
    (Greg included), so that their figures compare across presets and with earlier runs."""
    assert config_values(ts.make_options(cfg, 32, batch=2)) == (2, 0.9, "noaug")


def config_values(opts: dict) -> tuple:
    return opts["loss_kwargs"]["pl_weight"], opts["loss_kwargs"]["style_mixing_prob"], opts["augment"]["mode"]
