"""`evaluate(model, protocol, data)`: every registered metric, one call, one flat dict."""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from shala_bench.contract import MultimodalVAE
from shala_bench.data.spec import LoadedDataset, Split, to_float
from shala_bench.protocol import Protocol


VERSIONS_KEY = "metric_versions"  # the one non-scalar entry of a record's metrics


@dataclass
class EvalContext:
    model: MultimodalVAE
    protocol: Protocol
    data: LoadedDataset
    device: torch.device
    run_dir: Path
    seed: int
    cache_dir: Path | None = None
    artifacts: dict = field(default_factory=dict)  # name -> path (relative to run_dir), filled by metrics
    options: dict = field(default_factory=dict)  # run options metrics read, e.g. "inception_weights"

    @functools.cached_property
    def classifiers(self) -> dict:
        """{modality: (classifier, test accuracy)}, shared by every metric of this evaluation."""
        from shala_bench.metrics.classifiers import get_classifiers

        return get_classifiers(self.data, self.protocol, self.device, self.cache_dir)

    def test(self, n: int | None = None) -> Split:
        split = self.data.splits["test"]
        return (split.head(n) if n else split).to(self.device)

    def batches(self, split: Split, batch_size: int = 500):
        """Float batches of a split: (dict modality -> (b, ...), labels (b,))."""
        for i in range(0, len(split), batch_size):
            yield {m: to_float(v[i:i + batch_size]) for m, v in split.data.items()}, split.labels[i:i + batch_size]


def evaluate(model: MultimodalVAE, protocol: Protocol, data: LoadedDataset, run_dir: Path, seed: int,
             device="cpu", cache_dir: Path | None = None, registry=None, only: list[str] | None = None,
             options: dict | None = None, on_metric=None):
    """Run every registered metric (or those in `only`); returns (metrics, timings, artifacts).

    ``metrics[VERSIONS_KEY]`` is ``{metric name: version}`` of the metrics that ran: a leaderboard
    ranks records together only when these agree (records without it are of version 1 throughout).

    `options` are run settings that are not part of the protocol (paths on this machine,
    e.g. ``{"inception_weights": PATH}``); metrics read them from ``ctx.options``.
    `on_metric(i, n, name)` is called before the i-th of n metrics starts (progress lines).
    """
    from shala_bench.registry import get_registry

    reg = registry or get_registry()
    ctx = EvalContext(model.to(device).eval(), protocol, data, torch.device(device), Path(run_dir), seed, cache_dir,
                      options=dict(options or {}))
    metrics, timings, versions = {}, {}, {}
    entries = sorted((r.entry for r in reg.metrics.values()), key=lambda e: (e.order, e.name))
    entries = [e for e in entries if not only or e.name in only]
    for i, entry in enumerate(entries, 1):
        if on_metric is not None:
            on_metric(i, len(entries), entry.name)
        t0 = time.perf_counter()
        with torch.random.fork_rng(devices=[ctx.device] if ctx.device.type == "cuda" else []), torch.no_grad():
            torch.manual_seed(seed + 10_000)  # evaluation noise is seeded apart from training noise
            metrics.update(entry.compute(ctx))
        timings[f"eval_{entry.name}_s"] = round(time.perf_counter() - t0, 3)
        versions[entry.name] = entry.version
    metrics[VERSIONS_KEY] = versions
    return metrics, timings, dict(ctx.artifacts)
