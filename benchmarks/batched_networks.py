"""Would the M per-modality networks run faster as one call, or in bf16? (issue 13, candidates 1 and 3)

Times forward + backward of the PolyMNIST conv stacks (the harness's ImageEncoder trunk and
ImageDecoder deconvolutions, shala_bench.backbones) for M modalities at one batch size, three ways:

- loop:     M separate modules, one call each (what every model does today);
- grouped:  the M networks' weights stacked into ONE grouped convolution per layer (groups = M), the
            form `torch.func.stack_module_state` + `vmap` lowers a vmapped conv to as well;
- bf16:     the loop with bf16 weights and activations (channels_last too with --channels-last), the
            native-kernel candidate; losses summed in fp32.

Median CPU time per call over alternating trials (the machine is shared: CPU time leaves out the wait
for a core), and the ratio loop / other (> 1: the other is faster). The grouped form is checked to give
the loop's outputs first (1e-5). Usage:

    OMP_NUM_THREADS=1 python benchmarks/batched_networks.py --M 5,8 --batch 32,256 --trials 5
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from shala_bench.backbones import ImageDecoder, ImageEncoder

DECONV_PADDING = (0, 1, 1)  # the decoder's output_padding per layer


def stacks(M: int, D: int = 32):
    torch.manual_seed(0)
    return [ImageEncoder(D) for _ in range(M)], [ImageDecoder(D) for _ in range(M)]


def loop_step(encs, decs, xs, hs, dtype=torch.float32):
    out = torch.zeros((), dtype=torch.float32)
    for e, d, x, h in zip(encs, decs, xs, hs):
        out = out + e.trunk(x).float().sum() + d.deconv(h).float().sum()
    out.backward()
    return out


class Grouped:
    """The M modules' conv weights concatenated along the output channels: layer i of modality m is group m."""

    def __init__(self, encs, decs):
        M = len(encs)
        self.M = M
        convs = [[c for c in e.trunk if isinstance(c, torch.nn.Conv2d)] for e in encs]
        deconvs = [[c for c in d.deconv if isinstance(c, torch.nn.ConvTranspose2d)] for d in decs]
        self.W = [torch.cat([convs[m][i].weight for m in range(M)]).detach().requires_grad_() for i in range(3)]
        self.b = [torch.cat([convs[m][i].bias for m in range(M)]).detach().requires_grad_() for i in range(3)]
        # a transposed conv's weight is (C_in, C_out, k, k): groups stack along C_in
        self.DW = [torch.cat([deconvs[m][i].weight for m in range(M)]).detach().requires_grad_() for i in range(3)]
        self.Db = [torch.cat([deconvs[m][i].bias for m in range(M)]).detach().requires_grad_() for i in range(3)]

    def forward(self, x, h):
        a = x
        for W, b in zip(self.W, self.b):
            a = F.relu(F.conv2d(a, W, b, 2, 1, groups=self.M))
        for i, (W, b) in enumerate(zip(self.DW, self.Db)):
            h = F.conv_transpose2d(h, W, b, 2, 1, output_padding=DECONV_PADDING[i], groups=self.M)
            h = F.relu(h) if i < 2 else h
        return a, h

    def step(self, x, h):
        a, h = self.forward(x, h)
        out = a.sum() + h.sum()
        out.backward()
        return out


def check_grouped(encs, decs, xs, hs, grouped: Grouped):
    with torch.no_grad():
        a, h = grouped.forward(torch.cat(xs, 1), torch.cat(hs, 1))
        want_a = torch.cat([e.trunk(x) for e, x in zip(encs, xs)], 1)
        want_h = torch.cat([d.deconv(hh) for d, hh in zip(decs, hs)], 1)
    torch.testing.assert_close(a, want_a, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(h, want_h, rtol=1e-5, atol=1e-5)


def cpu_time(fn, reps: int) -> float:
    fn()  # warm-up (oneDNN picks its kernels on the first call)
    start = time.process_time()
    for _ in range(reps):
        fn()
    return (time.process_time() - start) / reps


def measure(M: int, B: int, trials: int, reps: int, channels_last: bool) -> dict:
    encs, decs = stacks(M)
    g = torch.Generator().manual_seed(1)
    xs = [torch.rand(B, 3, 28, 28, generator=g) for _ in range(M)]
    hs = [torch.rand(B, 128, 4, 4, generator=g) for _ in range(M)]
    grouped = Grouped(encs, decs)
    check_grouped(encs, decs, xs, hs, grouped)
    xg, hg = torch.cat(xs, 1), torch.cat(hs, 1)

    fmt = torch.channels_last if channels_last else torch.contiguous_format
    encs16 = [ImageEncoder(32).to(torch.bfloat16, memory_format=fmt) for _ in range(M)]
    decs16 = [ImageDecoder(32).to(torch.bfloat16, memory_format=fmt) for _ in range(M)]
    xs16 = [x.to(torch.bfloat16).contiguous(memory_format=fmt) for x in xs]
    hs16 = [h.to(torch.bfloat16).contiguous(memory_format=fmt) for h in hs]

    ways = {"loop": lambda: loop_step(encs, decs, xs, hs), "grouped": lambda: grouped.step(xg, hg),
            "bf16": lambda: loop_step(encs16, decs16, xs16, hs16)}
    times: dict[str, list[float]] = {k: [] for k in ways}
    for t in range(trials):
        order = list(ways) if t % 2 == 0 else list(reversed(ways))  # alternate, so drift hits every way alike
        for k in order:
            times[k].append(cpu_time(ways[k], reps))
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"M": M, "batch": B, **{f"{k}_ms": 1e3 * v for k, v in med.items()},
            "loop/grouped": med["loop"] / med["grouped"], "loop/bf16": med["loop"] / med["bf16"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--M", default="5,8", help="numbers of modalities, comma-separated (default 5,8)")
    ap.add_argument("--batch", default="32,256", help="batch sizes, comma-separated (default 32,256)")
    ap.add_argument("--trials", type=int, default=5, help="alternating trials per way (median reported)")
    ap.add_argument("--reps", type=int, default=3, help="calls timed per trial")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--channels-last", action="store_true", help="bf16 way in channels_last memory format")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    print("| M | batch | loop ms | grouped ms | bf16 ms | loop/grouped | loop/bf16 |\n|---|---|---|---|---|---|---|")
    for M in (int(v) for v in a.M.split(",")):
        for B in (int(v) for v in a.batch.split(",")):
            r = measure(M, B, a.trials, a.reps, a.channels_last)
            print(f"| {M} | {B} | {r['loop_ms']:.0f} | {r['grouped_ms']:.0f} | {r['bf16_ms']:.0f} | "
                  f"{r['loop/grouped']:.2f} | {r['loop/bf16']:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
