"""The leaderboard PNGs: written, non-empty, the expected size, byte-reproducible, without metadata."""

from __future__ import annotations

import math
import re

from shala_bench.plots import DPI, SIZE, line_plot, model_colors

SERIES = {"mvae": ([2, 3, 5], [0.5, 0.45, 0.3], [0.02, 0.01, 0.03]),
          "shala": ([2, 3, 5, 8], [0.7, 0.66, 0.6, 0.5], [0.01, math.nan, 0.02, 0.02])}


def _plot(path, series=SERIES):
    return line_plot(path, series, xlabel="number of modalities M", ylabel="coherence_joint ↑",
                     title="toy: coherence_joint vs M\nprofile quick, protocol v1", xticks=[2, 3, 5, 8])


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_line_plot_writes_a_nonempty_png_of_the_expected_size(tmp_path):
    path = _plot(tmp_path / "sub" / "curve.png")
    data = path.read_bytes()
    assert len(data) > 5000
    assert _png_size(data) == (round(SIZE[0] * DPI), round(SIZE[1] * DPI))


def test_png_is_byte_identical_and_carries_no_metadata(tmp_path):
    a, b = _plot(tmp_path / "a.png").read_bytes(), _plot(tmp_path / "b.png").read_bytes()
    assert a == b
    assert not re.search(rb"tEXt|iTXt|zTXt|tIME", a)  # no software version, no timestamp


def test_the_plot_depends_on_the_data(tmp_path):
    shifted = {m: (xs, [y + 0.1 for y in ys], sd) for m, (xs, ys, sd) in SERIES.items()}
    assert _plot(tmp_path / "a.png").read_bytes() != _plot(tmp_path / "b.png", shifted).read_bytes()


def test_user_matplotlibrc_does_not_change_the_bytes(tmp_path):
    import matplotlib

    ref = _plot(tmp_path / "ref.png").read_bytes()
    with matplotlib.rc_context({"lines.linewidth": 7.0, "axes.facecolor": "black", "font.size": 20}):
        assert _plot(tmp_path / "styled.png").read_bytes() == ref


def test_each_model_keeps_its_colour_whatever_the_order():
    a = model_colors(["shala", "mvae", "mopoe"])
    b = model_colors(["mopoe", "mvae", "shala"])
    assert a == b and len(set(a.values())) == 3


def test_a_chance_level_draws_a_line(tmp_path):
    plain = _plot(tmp_path / "a.png").read_bytes()
    with_chance = line_plot(tmp_path / "b.png", SERIES, xlabel="M", ylabel="coherence_cond_mean ↑", title="t",
                            xticks=[2, 3, 5, 8], chance=0.1).read_bytes()
    no_chance = line_plot(tmp_path / "c.png", SERIES, xlabel="M", ylabel="coherence_cond_mean ↑", title="t",
                          xticks=[2, 3, 5, 8]).read_bytes()
    assert with_chance != no_chance and plain != with_chance
