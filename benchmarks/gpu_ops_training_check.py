"""Short GPU training run with reference ops vs CUDA ops: the losses must agree.

    python3 benchmarks/gpu_ops_training_check.py [--steps=4] [--cfg=tiny] [--res=32] [--tol=0.05]
                                                 [--tol0=1e-4]

Runs `steps` training steps (noaug, fp32, same seed) twice in fresh subprocesses, once with
SPATIALGAN_OPS=ref and once with SPATIALGAN_OPS=cuda, prints the per-phase losses side by side and
exits 1 when a difference at step 0 exceeds `--tol0` or one at any step exceeds `--tol`, each
relative to the statistic's largest magnitude over the run (kernels reorder float sums, so not
bit-exact; Adam and the GAN dynamics amplify differences over steps, hence few steps).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_child(cfg: str, res: int, steps: int, device: str = "cuda") -> dict[str, list[float]]:
    """In this process: `steps` steps on CUDA; returns the loss statistics reported per step."""
    import torch

    from torch_utils import training_stats
    from training import training_loop as tl
    from training.config import resolve_options
    from training.dataset import open_dataset

    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    ds = open_dataset(f"synthetic:shapes:{res}", max_size=64)
    info = dict(kwargs=ds.kwargs, name=ds.name, resolution=res, num_channels=3, label_dim=0)
    # Path-length regularisation and style mixing on, so that every phase (Greg too) is compared.
    opts = resolve_options(cfg, info, 1, batch=8, batch_gpu=8, aug="noaug", workers=0, metrics=[], fp32=True,
                           seed=7, pl_weight=2, style_mixing=0.9)
    run = tl.build_run(opts, torch.device(device))
    tl.start_data(run)
    collector = training_stats.Collector(regex="Loss/.*")
    out: dict[str, list[float]] = {}
    for _ in range(steps):
        tl.train_step(run)
        collector.update()
        for name in collector.names():
            out.setdefault(name, []).append(float(collector.mean(name)))
    # Losses can agree while the updates differ: also compare a checksum of G's weights after training.
    out["G_param_sum"] = [float(sum(p.double().sum() for p in run.G.parameters()))]
    return out


def compare(ref: dict[str, list[float]], cuda: dict[str, list[float]]
            ) -> tuple[list[tuple[str, int, float, float, float]], float, float]:
    """Rows (statistic, step, ref, cuda, relative difference), the worst difference over all steps and
    the worst at step 0 (G_param_sum excluded there: it is taken after the last step). A statistic the
    CUDA run lacks, or reports for fewer steps, counts as an infinite difference.

    A statistic that crosses zero (the scores) has no meaningful relative error at its small values:
    each difference is measured against the statistic's largest magnitude over the run (floored at
    0.1). Sign means are listed but not checked (a logit at ~0 may flip sign under any reordering of
    sums)."""
    rows, worst, worst0 = [], 0.0, 0.0
    for name in sorted(ref):
        other = cuda.get(name, [])
        if len(other) != len(ref[name]):
            rows.append((name, len(other), float("nan"), float("nan"), float("inf")))
            worst = worst0 = float("inf")
            continue
        pairs = list(zip(ref[name], other))
        scale = max([abs(v) for pair in pairs for v in pair] + [0.1])
        for i, (a, b) in enumerate(pairs):
            rel = abs(a - b) / scale
            if "signs" not in name:
                worst = max(worst, rel)
                if i == 0 and name != "G_param_sum":
                    worst0 = max(worst0, rel)
            rows.append((name, i, a, b, rel))
    return rows, worst, worst0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--cfg", default="tiny")
    ap.add_argument("--res", type=int, default=32)
    ap.add_argument("--tol", type=float, default=0.05, help="any step, relative to the statistic's scale")
    ap.add_argument("--tol0", type=float, default=1e-4, help="step 0 (identical weights and batch)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--device", default="cuda", help="cpu: sanity-check this script without a GPU")
    args = ap.parse_args()
    if args.child:
        print("RESULT " + json.dumps(run_child(args.cfg, args.res, args.steps, args.device)), flush=True)
        return 0
    results = {}
    for ops in ("ref", "cuda"):
        env = dict(os.environ, SPATIALGAN_OPS=ops)
        cmd = [sys.executable, os.path.abspath(__file__), "--child", f"--steps={args.steps}", f"--cfg={args.cfg}",
               f"--res={args.res}", f"--device={args.device}"]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode or not lines:
            print(f"SPATIALGAN_OPS={ops} failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
            return 1
        results[ops] = json.loads(lines[-1][7:])
    rows, worst, worst0 = compare(results["ref"], results["cuda"])
    print("| statistic | step | ref | cuda | rel. diff |\n|---|---|---|---|---|")
    for name, i, a, b, rel in rows:
        print(f"| {name} | {i} | {a:.6g} | {b:.6g} | {rel:.2e} |")
    # Step 0 sees identical weights and batches, so only the order of float sums differs; afterwards
    # Adam's first updates (about lr * sign(grad) per weight) turn rounding-level gradient differences
    # into lr-sized weight differences, and the runs drift apart within the looser --tol.
    print(f"\nstep 0: worst relative difference {worst0:.3e} (tolerance {args.tol0}): "
          f"{'OK' if worst0 <= args.tol0 else 'MISMATCH'}")
    ok = worst <= args.tol and worst0 <= args.tol0
    print(f"all steps: worst relative difference {worst:.3e} (tolerance {args.tol}): "
          f"{'OK' if worst <= args.tol else 'MISMATCH'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
