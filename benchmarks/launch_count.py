"""Host-side work per training phase: ops dispatched eagerly vs with the phases replayed as CUDA graphs.

    python benchmarks/launch_count.py [--cfg=baseline256 --cfg=lsun-cat256 ...] [--res=256] [--out=FILE]

A step that waits on the CPU (see step_profile.py's GPU-busy column) pays for every op the host
dispatches: Python, autograd and a kernel launch each. This counts, on the CPU, the ops of one run of
every phase that would launch work on a GPU (views, allocations and host reads are left out), eagerly
and with `--cuda-graphs` (graphs emulated by `torch_utils.graph_emulation`: a replay counts as one
graph launch, plus the ops around it: input copies, optimiser, ADA). The eager counts are those of the
reference ops (on a GPU the custom kernels do bias_act and upfirdn2d in one launch each). Narrow
networks (`--channel-max`): the counts depend on the layers, not on their widths.
"""

from __future__ import annotations

import os
import sys

import click
import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import train_speed as ts  # noqa: E402

from torch_utils import graph_emulation  # noqa: E402
from training import heatmaps, phase_graphs  # noqa: E402
from training import training_loop as tl  # noqa: E402

# Ops that launch no kernel on a GPU: views, metadata, allocations, host reads (a sync, not a launch).
NO_LAUNCH = {"view", "_unsafe_view", "reshape", "permute", "expand", "t", "transpose", "slice", "select",
             "unsqueeze", "squeeze", "as_strided", "detach", "alias", "empty", "empty_strided", "split",
             "unbind", "split_with_sizes", "_reshape_alias", "new_empty", "new_empty_strided", "unflatten",
             "flatten", "narrow", "diagonal", "is_same_size", "sym_size", "chunk", "view_as", "expand_as",
             "empty_like", "_local_scalar_dense", "lift_fresh", "_record_function_enter_new",
             "_record_function_exit"}


class LaunchCounter(TorchDispatchMode):
    """Counts launching ops, and graph replays (whose own ops are not host work)."""

    def __init__(self):
        super().__init__()
        self.ops = self.graph_launches = 0
        self.replaying = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not self.replaying and func.overloadpacket.__name__ not in NO_LAUNCH:
            self.ops += 1
        return func(*args, **(kwargs or {}))


class _CountedGraph(graph_emulation.TraceGraph):
    counter: LaunchCounter | None = None

    def replay(self) -> None:
        counter = _CountedGraph.counter
        if counter is None:
            return super().replay()
        counter.replaying, counter.graph_launches = True, counter.graph_launches + 1
        try:
            super().replay()
        finally:
            counter.replaying = False


class _CountedBackend(graph_emulation.TraceBackend):
    def new_graph(self) -> _CountedGraph:
        graph = _CountedGraph()
        self.graphs.append(graph)
        return graph


def count_phases(cfg: str, res: int, batch: int, channel_max: int, graphs: bool) -> dict[str, tuple[int, int]]:
    """phase -> (host ops, graph launches) of one run of every phase, after the warm-up (and captures)."""
    run = ts.build(ts.make_options(cfg, res, batch=batch, channel_base=channel_max * res, channel_max=channel_max),
                   torch.device("cpu"))
    if graphs:
        run.graphs = phase_graphs.PhaseGraphs(backend=_CountedBackend(), log=ts.emit)
    for _ in range(phase_graphs.WARMUP_RUNS + 1):
        ts.time_phases(run, reps=0)
    by_name = {ph.name: ph for ph in run.phases}
    gens = dict(zip(by_name, tl._sample_batch(run)))
    out = {}
    for name in ts.PHASES:
        with LaunchCounter() as counter:
            _CountedGraph.counter = counter
            try:
                tl._run_phase(run, by_name[name], run.bench_real, run.bench_c, gens[name])
            finally:
                _CountedGraph.counter = None
        out[name] = (counter.ops, counter.graph_launches)
    return out


@click.command()
@click.option("--cfg", "configs", multiple=True, default=["baseline256", "lsun-cat256", "lsun-bedroom256"],
              show_default=True, help="presets to count (repeat)")
@click.option("--res", type=int, default=256, show_default=True)
@click.option("--batch", type=int, default=2, show_default=True)
@click.option("--channel-max", type=int, default=8, show_default=True, help="network width (counts do not depend on it)")
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="also write the table here")
def main(configs, res, batch, channel_max, out):
    """Count the host-side ops of every phase (see the module docstring)."""
    if out:
        open(out, "w").close()
        ts.OUT_FILE.append(out)
    torch.set_num_threads(2)
    # On a GPU, HeatmapSpec skips its host-side value check; emulated capture would refuse that host read.
    heatmaps.HeatmapSpec.check_values = lambda self: self
    ts.emit(f"## Host-side ops per phase (one run of each, after warm-up), @{res}², batch {batch}, "
            f"reference ops on the CPU; CUDA graphs emulated\n")
    ts.table_header(["config", "phase", "eager: launching ops", "CUDA graphs: ops around the replay",
                     "graph launches"])
    for cfg in configs:
        eager = count_phases(cfg, res, batch, channel_max, graphs=False)
        graphed = count_phases(cfg, res, batch, channel_max, graphs=True)
        for name in ts.PHASES:
            ts.table_row([cfg, name, eager[name][0], graphed[name][0], graphed[name][1]])
    ts.emit()


if __name__ == "__main__":
    main()
