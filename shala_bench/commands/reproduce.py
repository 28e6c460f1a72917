"""`shala-bench reproduce RECORD`: re-run a record's cell and report how far each metric moved."""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
from pathlib import Path

DESCRIPTION = """\
Re-run the cell of a run record (model, dataset, seed, and every protocol setting it recorded) with this
code, and print, per metric: the recorded value, the reproduced one, their difference, and the seed
spread (sample std over seeds) of the record's family: the ok records beside it with the same model,
dataset, M and protocol hash. A difference well inside the seed spread is noise; one beyond it means
the numbers changed. By default the run uses the record's thread count and device type, since on a CPU
the thread count alone moves the numbers (reduction order), as a seed does.
"""

SHOWN = ["coherence_joint", "coherence_cond_mean", "fd_mean", "fid_mean", "probe_all", "test_nll",
         "classifier_acc_min"]


def _numeric(metrics: dict) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def family_spread(rec, root: Path) -> tuple[int, dict[str, float]]:
    """(number of seeds, {metric: sample std over seeds}) of the ok records of rec's family under root."""
    from shala_bench.results import load_records

    fam = [r for r in load_records(root, on_skip=lambda line: None)
           if r.ok and (r.model, r.dataset, r.n_modalities, r.protocol_hash, r.config_hash)
           == (rec.model, rec.dataset, rec.n_modalities, rec.protocol_hash, rec.config_hash)]
    by_seed = {r.seed: _numeric(r.metrics) for r in sorted(fam, key=lambda r: r.created)}
    keys = set().union(*by_seed.values()) if by_seed else set()
    spread = {}
    for k in keys:
        vals = [m[k] for m in by_seed.values() if k in m and math.isfinite(m[k])]
        if len(vals) >= 2:
            spread[k] = statistics.stdev(vals)
    return len(by_seed), spread


def cmd_reproduce(args) -> int:
    from tabulate import tabulate

    from shala_bench.commands.run import threads_arg
    from shala_bench.errors import ProtocolError, RecordError
    from shala_bench.launch import RunSpec, run_one
    from shala_bench.protocol import _FIXED, FIELDS, NUMBERS_VERSION
    from shala_bench.results import RECORD, inconsistency, read_record

    src = Path(args.record)
    src = src / RECORD if src.is_dir() else src
    if not src.is_file():
        raise RecordError(f"no run record at {src} (pass a run folder or its record.json)")
    rec = read_record(src)
    why = inconsistency(rec)
    if why:
        raise RecordError(f"record {src} cannot be reproduced: {why}")
    if not rec.ok:
        raise RecordError(f"record {src} has status {rec.status!r}: only ok records have numbers to reproduce")
    unknown = sorted(set(rec.protocol) - set(FIELDS))
    if unknown:
        raise ProtocolError(f"record {src} has protocol fields this code does not know ({', '.join(unknown)}): it "
                            "comes from another version of shala-bench")
    recorded_nv = rec.protocol.get("numbers_version")
    if recorded_nv != NUMBERS_VERSION:
        print(f"note: the record was made under numbers_version {recorded_nv if recorded_nv is not None else '(none)'},"
              f" this code is at {NUMBERS_VERSION}: its numbers may differ by design", flush=True)
    threads = threads_arg(args) or rec.hardware.get("torch_threads") or None
    device = args.device or ("cpu" if str(rec.hardware.get("device", "cpu")).startswith("cpu") else "auto")
    if rec.protocol.get("protocol_version", 1) < 2:
        raise ProtocolError(f"record {src} was made under protocol v{rec.protocol.get('protocol_version', 1)}, whose "
                            "model settings this version keeps elsewhere: it cannot be re-run as it was")
    from shala_bench.protocol import trained_fields

    # the recipe as recorded (evaluation section included) and the model's own settings, namespaced
    overrides = tuple({**trained_fields(rec.protocol),
                       **{k: v for k, v in rec.protocol.items() if k not in _FIXED and k in FIELDS},
                       **{f"{rec.model}.{k}": v for k, v in (rec.config or {}).items()}}.items())
    root = src.parent.parent.parent.parent
    with tempfile.TemporaryDirectory() as tmp:
        results = args.results or tmp
        spec = RunSpec(model=rec.model, dataset=rec.dataset, profile=rec.profile, seed=rec.seed, overrides=overrides,
                       results=str(results), device=device, progress=not args.no_progress, threads=threads,
                       inception_weights=args.inception_weights)
        print(f"reproducing {rec.model} on {rec.dataset} (seed {rec.seed}, M={rec.n_modalities}, protocol "
              f"{rec.protocol_hash[:12]}, {threads or 'default'} thread(s), {device}) ...", flush=True)
        new = run_one(spec)
    if not new.ok:
        print(f"the re-run ended {new.status}")
        return 1
    n_seeds, spread = family_spread(rec, root)
    old_m, new_m = _numeric(rec.metrics), _numeric(new.metrics)
    keys = sorted(set(old_m) & set(new_m)) if args.all else [k for k in SHOWN if k in old_m and k in new_m]
    rows = []
    for k in keys:
        d = new_m[k] - old_m[k]
        s = spread.get(k)
        rows.append([k, f"{old_m[k]:.4g}", f"{new_m[k]:.4g}", f"{d:+.4g}", f"{s:.3g}" if s is not None else "–",
                     f"{abs(d) / s:.2f}" if s else "–"])
    print(tabulate(rows, headers=["metric", "record", "reproduced", "difference", f"seed std (n={n_seeds})",
                                  "|difference| / std"], tablefmt="github"))
    missing = sorted(set(old_m) - set(new_m))
    if missing:
        print(f"not reproduced (absent from the re-run): {', '.join(missing[:10])}")
    if args.results:
        print(f"record: {Path(args.results) / new.dataset / new.model / new.run_id / RECORD}")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("reproduce", help="re-run a record's cell; each metric's difference vs the record and vs "
                                         "its family's seed spread", description=DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("record", metavar="RECORD", help="a run folder or its record.json")
    p.add_argument("--results", default=None,
                   help="keep the re-run's record and checkpoint in this results folder (default: a temporary "
                        "folder, removed afterwards)")
    p.add_argument("--threads", type=int, metavar="N",
                   help="torch threads (default: the record's hardware.torch_threads)")
    p.add_argument("--device", default=None, help="cpu, cuda, auto (default: cpu when the record ran on a CPU)")
    p.add_argument("--all", action="store_true", help="every numeric metric, not just the main ones")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--inception-weights", metavar="PATH", default=None, help="local Inception weights for FID")
    p.set_defaults(func=cmd_reproduce)
