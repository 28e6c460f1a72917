"""`shala-bench eval`: re-evaluate a finished run's checkpoint under the current protocol."""

from __future__ import annotations

from pathlib import Path

DESCRIPTION = """\
Re-evaluate the checkpoint of a finished run under the current protocol, without retraining.

The protocol keeps the run's data, training and model settings (from its record) and takes
the evaluation settings (sample counts, subsets, FID/FD/probe sizes) from the current
profile, then --set. The new record is written to
<results>/<dataset>/<model>/<run_id>/record.json, run_id naming the new protocol hash: a
new run folder beside the original whenever the evaluation protocol changed. Its
`checkpoint` points at the original checkpoint (relative path; nothing is copied) and
artifacts.source_record at the record it re-evaluates. If the protocol is unchanged
(e.g. to add FID once the Inception weights are in place) the folder is the run's own: its
training record is kept as record.previous.json and the new record replaces record.json.
"""


def cmd_eval(args) -> int:
    import torch

    from shala_bench.commands.run import judge_warning, threads_arg
    from shala_bench.executors import default_threads
    from shala_bench.launch import evaluate_checkpoint
    from shala_bench.protocol import parse_overrides

    torch.set_num_threads(threads_arg(args) or default_threads(1))

    rec, path = evaluate_checkpoint(Path(args.run), parse_overrides(args.overrides),
                                    Path(args.results) if args.results else None, args.device, None,
                                    args.inception_weights)
    m = rec.metrics
    keys = [k for k in ("coherence_joint", "coherence_cond_mean", "fd_mean", "fid_mean", "probe_all", "test_nll")
            if isinstance(m.get(k), (int, float))]
    summary = ", ".join(f"{k}={m[k]:.3f}" for k in keys)
    print(f"{rec.model} on {rec.dataset} (seed {rec.seed}, M={rec.n_modalities}, protocol {rec.protocol_hash[:12]}): "
          f"{summary}; eval {rec.timings.get('eval_s', 0):.0f}s" + judge_warning(m))
    print(f"record: {path}")
    return 0


def add_parser(sub) -> None:
    import argparse

    p = sub.add_parser("eval", help="re-evaluate a finished run's checkpoint under the current protocol; writes a "
                                    "new record", description=DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", metavar="RUN", help="a run folder or its record.json")
    p.add_argument("--set", dest="overrides", action="append", metavar="KEY=VALUE", default=[],
                   help="override an evaluation setting of the protocol (repeatable); changes the protocol hash")
    p.add_argument("--results", default=None,
                   help="results folder for the new record (default: the one the run is in)")
    p.add_argument("--device", default="auto",
                   help="auto (CUDA when present), cpu, cuda, cuda:N (default: %(default)s)")
    p.add_argument("--inception-weights", metavar="PATH", default=None,
                   help="local Inception weights for FID (weights-inception-2015-12-05-6726825d.pth, sha256-checked; "
                        "default: $SHALA_BENCH_INCEPTION_WEIGHTS or torch hub's checkpoints folder); never downloaded")
    from shala_bench.commands.run import add_threads_arg

    add_threads_arg(p, "the usable CPUs (os.sched_getaffinity) that other processes are not busy on")
    p.set_defaults(func=cmd_eval)
