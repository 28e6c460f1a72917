"""Training throughput, FLOPs and the machine's own limit (a benchmark, not a test).

    python benchmarks/throughput.py --models mvae,mopoe --modalities 5,8 --batch 32,256 --threads 1

For every (model, M, batch) cell, on polymnist-synth under the chosen profile:
- samples/s of the real Trainer (batches drawn from the in-memory uint8 tensors, NaN guard,
  progress bar, logging), a checkpoint's timed cost amortised over the profile's
  `checkpoint_every`;
- samples/s of a bare loop running only the model's loss, backward and the Trainer's own
  optimizer step on the same batches, prepared beforehand;
- the harness overhead: the fraction of the Trainer's step time spent outside the bare loop;
- the same two rates per CPU-second of the process (`time.process_time`), which a busy
  machine disturbs far less than wall time: at one thread they are what a quiet core gives;
- FLOPs of one training step (loss + backward), counted once with
  `torch.utils.flop_counter.FlopCounterMode` (matmuls and convolutions; elementwise work is
  not counted, so the achieved rate is a lower bound on the work done);
- the machine's measured peak on the same threads: a 2048² fp32 matmul and, where the CPU
  has native bf16 (AVX512-BF16 / AMX), a bf16 one, both per CPU-second; the achieved fraction
  of the fp32 peak (the step's FLOPs per CPU-second over the matmul's).

Trials alternate between the Trainer and the bare loop to share the machine's noise;
medians are reported. `--json PATH` writes every number, so runs can be compared across
commits (`benchmarks/compare_commits.py` runs this file under two checkouts, alternating).
The script uses only the harness's stable API, so it also measures older commits.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from shala_bench.protocol import make_protocol, parse_overrides
from shala_bench.registry import get_registry
from shala_bench import trainer as trainer_module
from shala_bench.trainer import BatchStream, Trainer


def model_config(entry, p, overrides: dict):
    """The model's own settings under recipe `p` (protocol v2: its defaults, with this model's
    `--set <model>.key=value`); None on checkouts before protocol v2, whose recipe held every model's settings."""
    if not hasattr(entry, "resolve"):
        return None
    from shala_bench.config import split_overrides

    return entry.resolve(p, split_overrides(overrides)[1].get(entry.name)).config


def build(entry, spec, p, cfg):
    """The model as a run builds it, on this checkout's API (entry.build since protocol v2, entry.factory before)."""
    return entry.build(spec, p, cfg) if hasattr(entry, "build") else entry.factory(spec, p)


def make_optimizer(params, lr: float):
    """The Trainer's optimizer where the harness exposes it (newer commits), else plain Adam (older ones)."""
    factory = getattr(trainer_module, "make_optimizer", None)
    return factory(params, lr) if factory else torch.optim.Adam(params, lr=lr)


def bare_loop(model, batches, lr: float) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of loss + backward + optimizer step over the batches."""
    opt = make_optimizer(model.parameters(), lr)
    t, c = time.perf_counter(), time.process_time()
    for b in batches:
        loss, _ = model.loss(b, "vae")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return time.perf_counter() - t, time.process_time() - c


def step_flops(model, batch) -> int:
    """Matmul/convolution FLOPs of one loss + backward."""
    with FlopCounterMode(display=False) as counter:
        loss, _ = model.loss(batch, "vae")
        loss.backward()
    model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def matmul_peak(dtype: torch.dtype, n: int = 2048, reps: int = 5) -> float:
    """GFLOP per CPU-second of an n x n matmul in `dtype` on the current threads (median of reps).

    Timed in process CPU time, like the cells' per-CPU-second rates, so the achieved fraction is a
    ratio of two CPU-time rates and stays meaningful on a machine other jobs share."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(2):
        a @ b
    times = []
    for _ in range(reps):
        c = time.process_time()
        a @ b
        times.append(time.process_time() - c)
    return 2 * n**3 / statistics.median(times) / 1e9


def has_native_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def measure_cell(reg, ds, profile: str, model_name: str, M: int, batch: int, steps: int, trials: int,
                 overrides: dict) -> dict:
    base = make_protocol(ds, profile, {**overrides, "n_modalities": M, "batch_size": batch})
    data = ds.loader(base, None)
    # a trial writes one checkpoint (its last step); its cost is timed and amortised over checkpoint_every
    # the Trainer gets no validator (no evaluations); its one FLOP-counting step per stage is amortised (below)
    p = make_protocol(ds, profile, {**overrides, "n_modalities": M, "batch_size": batch,
                                    "max_train_samples": steps * batch,
                                    "checkpoint_every": max(steps, base.checkpoint_every),
                                    "log_every": min(base.log_every, steps)})
    entry = reg.get_model(model_name)
    # the model's own settings: its defaults under this recipe, with this model's `--set <model>.key=value`
    cfg = model_config(entry, p, overrides)
    stream = BatchStream(data.splits["train"], p.batch_size, 0, 0, "cpu")
    batches = [stream.batch(s) for s in range(steps)]
    torch.manual_seed(0)
    model = build(entry, data.spec, p, cfg)
    flops = step_flops(model, batches[0])
    n_params = sum(q.numel() for q in model.parameters())

    # the Trainer counts one step's FLOPs once per stage (one extra loss + backward under FlopCounterMode); over
    # a trial's few steps that is 5-25 % of the time, over a stage of the profile's length well under 0.1 %, so it
    # is timed and amortised over the stage's steps like the checkpoint
    counted: list[tuple[float, float]] = []
    count_flops = getattr(Trainer, "_count_flops", None)  # older commits count no FLOPs

    def timed_count(self, *a, **kw):
        t0, c0 = time.perf_counter(), time.process_time()
        out = count_flops(self, *a, **kw)
        counted.append((time.perf_counter() - t0, time.process_time() - c0))
        return out

    stage_steps = max(steps, base.max_train_samples // batch)
    harness, bare, harness_cpu, bare_cpu = [], [], [], []
    for trial in range(trials + 1):  # trial 0 warms up (allocator, oneDNN primitive caches) and is dropped
        torch.manual_seed(trial)
        model = build(entry, data.spec, p, cfg)
        model.stages = model.stages[:1]  # the Trainer runs the first stage only: the one the bare loop runs
        with tempfile.TemporaryDirectory() as tmp:
            tr = Trainer(model, p, data.splits["train"], Path(tmp), seed=trial, progress=False)
            counted.clear()
            if count_flops is not None:
                tr._count_flops = timed_count.__get__(tr)  # this instance only
            t, c = time.perf_counter(), time.process_time()
            tr.fit()
            fit_s, fit_c = time.perf_counter() - t, time.process_time() - c
            flop_s, flop_c = (sum(v) for v in zip(*counted)) if counted else (0.0, 0.0)
            fit_s += flop_s * (steps / stage_steps - 1)
            fit_c += flop_c * (steps / stage_steps - 1)
            t, c = time.perf_counter(), time.process_time()
            tr.save()
            save_s, save_c = time.perf_counter() - t, time.process_time() - c
        torch.manual_seed(trial)
        bare_s, bare_c = bare_loop(build(entry, data.spec, p, cfg), batches, p.lr)
        if trial:
            harness.append(fit_s - save_s + save_s * steps / base.checkpoint_every)
            harness_cpu.append(fit_c - save_c + save_c * steps / base.checkpoint_every)
            bare.append(bare_s)
            bare_cpu.append(bare_c)
    h, b = statistics.median(harness), statistics.median(bare)
    hc, bc = statistics.median(harness_cpu), statistics.median(bare_cpu)
    return {"model": model_name, "M": M, "batch": batch, "steps": steps, "trials": trials,
            "config": cfg.to_dict() if cfg is not None else None,
            "threads": torch.get_num_threads(), "n_params": n_params,
            "trainer_samples_per_s": steps * batch / h, "bare_samples_per_s": steps * batch / b,
            "trainer_ms_per_step": h / steps * 1e3, "bare_ms_per_step": b / steps * 1e3,
            "harness_overhead": max(0.0, (h - b) / h), "flops_per_step": flops,
            # per CPU-second of this process: steadier than wall time on a shared machine (at 1 thread
            # it equals samples/s on a quiet core); at N threads it is samples per N thread-seconds
            "trainer_samples_per_cpu_s": steps * batch / hc, "bare_samples_per_cpu_s": steps * batch / bc,
            "harness_overhead_cpu": max(0.0, (hc - bc) / hc),
            "achieved_gflops": flops / (h / steps) / 1e9, "achieved_gflops_per_cpu_s": flops / (hc / steps) / 1e9}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="mvae,mmvae,mopoe,mmvae+,shala", help="comma-separated model names")
    ap.add_argument("--modalities", default="5", help="comma-separated M values, e.g. 2,5,8")
    ap.add_argument("--batch", default="32", help="comma-separated batch sizes, e.g. 32,256")
    ap.add_argument("--dataset", default="polymnist-synth")
    ap.add_argument("--profile", default="quick")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1, as sweep workers)")
    ap.add_argument("--steps", type=int, default=24, help="steps per trial at batch <= 64")
    ap.add_argument("--large-batch-steps", type=int, default=6, help="steps per trial at batch > 64")
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--no-peak", action="store_true", help="skip the matmul peak measurement")
    ap.add_argument("--json", type=Path, help="write all numbers to this JSON file")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="override: a recipe setting key=value, or a model's or the dataset's own <name>.key=value "
                         "(e.g. mmvae.K=4, ntu120.frames=16)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    reg = get_registry()
    ds = reg.get_dataset(args.dataset)
    overrides = parse_overrides(args.overrides)
    if hasattr(reg.get_model(args.models.split(",")[0]), "resolve"):  # protocol v2: namespaced keys are checked
        from shala_bench.launch import check_namespaces

        check_namespaces(overrides, set(args.models.split(",")) | {args.dataset}, reg, "this benchmark")
    peak = {}
    if not args.no_peak:
        peak["fp32_gflops"] = matmul_peak(torch.float32)
        if has_native_bf16():
            peak["bf16_gflops"] = matmul_peak(torch.bfloat16)
    cells = []
    for model_name in args.models.split(","):
        for M in (int(m) for m in args.modalities.split(",")):
            for batch in (int(b) for b in args.batch.split(",")):
                steps = args.steps if batch <= 64 else args.large_batch_steps
                cell = measure_cell(reg, ds, args.profile, model_name, M, batch, steps, args.trials, overrides)
                if peak:
                    cell["fraction_of_fp32_peak"] = cell["achieved_gflops_per_cpu_s"] / peak["fp32_gflops"]
                cells.append(cell)
                print(f"{model_name:8s} M={M:<2d} batch={batch:<4d} trainer {cell['trainer_samples_per_s']:8.1f} "
                      f"samples/s ({cell['trainer_ms_per_step']:7.1f} ms/step)  bare {cell['bare_samples_per_s']:8.1f}  "
                      f"overhead {cell['harness_overhead'] * 100:4.1f} %  per CPU-s {cell['trainer_samples_per_cpu_s']:8.1f}  {cell['flops_per_step'] / 1e9:6.2f} GFLOP/step  "
                      f"{cell['achieved_gflops_per_cpu_s']:5.1f} GFLOP per CPU-s"
                      + (f" ({cell['fraction_of_fp32_peak'] * 100:.0f} % of fp32 peak)" if peak else ""), flush=True)
    if peak:
        print(f"peak on {args.threads} thread(s): fp32 matmul {peak['fp32_gflops']:.1f} GFLOP per CPU-s"
              + (f", bf16 matmul {peak['bf16_gflops']:.1f}" if "bf16_gflops" in peak else ""))
    if args.json:
        args.json.write_text(json.dumps({"cells": cells, "peak": peak, "torch": torch.__version__,
                                         "machine": platform.processor() or platform.machine(),
                                         "profile": args.profile, "dataset": args.dataset}, indent=1) + "\n")


if __name__ == "__main__":
    main()
