"""The harness's trainer callbacks: the progress file, training curves (CSV + PNG) and TensorBoard.

Each plugs into `Trainer(..., callbacks=[...])` at the points `shala_bench.trainer.Callback` names;
none wraps or re-implements `fit`.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from shala_bench.errors import ShalaBenchError
from shala_bench.trainer import Callback, write_progress

CURVES = "curves.csv"
CURVES_PNG = "curves.png"
TENSORBOARD = "tensorboard"  # the event folder beside the record
LOGGERS = ("csv", "tensorboard")  # `--log` choices; csv (curves.csv) is always written


class ProgressCallback(Callback):
    """progress.json at every log row: stage, its index and the number of stages, step and step budget, loss,
    steps/s and samples (read by `shala-bench status` and a sweep's cell table)."""

    def on_log(self, trainer, row: dict) -> None:
        rate = row.get("samples_per_s")
        write_progress(trainer.run_dir, stage=row["stage"], stage_index=trainer.stage_index + 1,
                       stages=len(trainer.model.stages), step=row["step"], steps=trainer.stage_steps,
                       loss=row["loss"], samples=row["samples"],
                       steps_per_s=round(rate / trainer.batch_size, 3) if rate else None)


class CurvesCallback(Callback):
    """curves.csv beside the record: a row per log step (kind "train": stage, step, samples over the run, the
    model's loss terms, loss, lr, samples_per_s) and per evaluation (kind "val": the val_* columns); at the end
    of fit curves.png, training loss and the validation selection metric against samples, a panel per stage.

    Rows are buffered and the whole file rewritten atomically at every checkpoint; a resumed run first drops
    the rows its checkpoint does not cover, so it never duplicates nor loses any.
    """

    def __init__(self, folder: Path | None = None, plot: bool = True):
        self.folder, self.plot = (Path(folder) if folder is not None else None), plot
        self.rows: list[dict] = []

    def path(self, trainer) -> Path:
        return (self.folder or trainer.run_dir) / CURVES

    def on_fit_start(self, trainer) -> None:
        import pandas as pd

        path, st = self.path(trainer), trainer.state
        order = list(trainer.model.stages)

        def covered(row) -> bool:  # written at or before the checkpoint this run resumes from
            return row["stage"] in st.completed or (row["stage"] == st.stage and int(row["step"]) <= st.step)

        self.rows = []
        if path.exists() and (st.completed or st.stage):
            old = pd.read_csv(path).to_dict("records")
            self.rows = [{k: v for k, v in r.items() if not (isinstance(v, float) and math.isnan(v))}
                         for r in old if r.get("stage") in order and covered(r)]

    def on_log(self, trainer, row: dict) -> None:
        self.rows.append({"stage": row["stage"], "step": row["step"], "samples": row["samples"], "kind": "train",
                          **row})

    def on_eval(self, trainer, row: dict) -> None:
        self.rows.append({"stage": row["stage"], "step": row["step"], "samples": row["samples"], "kind": "val",
                          **row})

    def on_checkpoint(self, trainer) -> None:
        self.flush(trainer)

    def on_fit_end(self, trainer) -> None:
        self.flush(trainer)
        if self.plot and self.rows:
            plot_curves(self.path(trainer), self.path(trainer).with_name(CURVES_PNG))

    def flush(self, trainer) -> None:
        import pandas as pd

        path = self.path(trainer)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        pd.DataFrame(self.rows).to_csv(tmp, index=False)
        os.replace(tmp, path)


def plot_curves(csv: Path, png: Path) -> Path:
    """Training loss (left axis) and the validation selection metric (right axis) against samples, a panel
    per stage, from a curves.csv."""
    import matplotlib.style
    import pandas as pd
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from shala_bench.plots import DPI, PNG_METADATA

    df = pd.read_csv(csv)
    stages = list(dict.fromkeys(df["stage"]))
    with matplotlib.style.context("default"):
        fig = Figure(figsize=(4.8 * len(stages), 3.6), dpi=DPI)
        FigureCanvasAgg(fig)
        for i, stage in enumerate(stages, 1):
            ax = fig.add_subplot(1, len(stages), i)
            part = df[df["stage"] == stage]
            train = part[part["kind"] == "train"]
            ax.plot(train["samples"], train["loss"], color="tab:blue", label="training loss")
            ax.set_xlabel("training samples")
            ax.set_ylabel("training loss", color="tab:blue")
            ax.set_title(f"stage {stage}", fontsize=10)
            ax.grid(True, alpha=0.3)
            val = part[part["kind"] == "val"]
            if len(val) and "val_selection" in val:
                ax2 = ax.twinx()
                ax2.plot(val["samples"], val["val_selection"], color="tab:orange", marker="o", label="validation")
                coh = "val_coherence_cond_bal_k1" in val and val["val_coherence_cond_bal_k1"].notna().any()
                ax2.set_ylabel("validation coherence k=1 (balanced)" if coh else "validation: -val_loss",
                               color="tab:orange")
        fig.tight_layout()
        fig.savefig(png, format="png", dpi=DPI, metadata=PNG_METADATA)
    return png


def require_tensorboard() -> None:
    """One clear line when `--log tensorboard` is asked for without the tensorboard package."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        raise ShalaBenchError("--log tensorboard: the tensorboard package is not installed "
                              "(pip install tensorboard), or drop --log tensorboard (curves.csv is always written)") \
            from None


class TensorBoardCallback(Callback):
    """TensorBoard scalars under <run>/tensorboard: `<stage>/<column>` of every log and evaluation row, against
    training samples; a resumed run purges the events past its checkpoint."""

    def __init__(self, folder: Path | None = None):
        require_tensorboard()
        self.folder, self.writer = (Path(folder) if folder is not None else None), None

    def on_fit_start(self, trainer) -> None:
        from torch.utils.tensorboard import SummaryWriter

        resumed = bool(trainer.state.completed or trainer.state.stage)
        self.writer = SummaryWriter(log_dir=str((self.folder or trainer.run_dir) / TENSORBOARD),
                                    purge_step=trainer.samples_seen + 1 if resumed else None)

    def _scalars(self, row: dict) -> None:
        for k, v in row.items():
            if k not in ("stage", "step", "samples") and isinstance(v, (int, float)) and not isinstance(v, bool):
                self.writer.add_scalar(f"{row['stage']}/{k}", v, row["samples"])

    def on_log(self, trainer, row: dict) -> None:
        self._scalars(row)

    def on_eval(self, trainer, row: dict) -> None:
        self._scalars(row)

    def on_checkpoint(self, trainer) -> None:
        self.writer.flush()

    def on_fit_end(self, trainer) -> None:
        self.writer.close()


def make_loggers(names) -> list[Callback]:
    """Callbacks for `--log` names (csv is always on; "tensorboard" needs the package)."""
    bad = [n for n in names if n not in LOGGERS]
    if bad:
        raise ShalaBenchError(f"--log {bad[0]}: unknown logger; accepted: {', '.join(LOGGERS)}")
    return [TensorBoardCallback()] if "tensorboard" in names else []
