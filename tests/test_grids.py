import numpy as np
import torch
from PIL import Image

from evalctx import smoke_ctx  # noqa: F401 (fixture)
from shala_bench.metrics.grids import GENERATED, GRID_ROWS, OBSERVED, PAD, sample_grids, tile


def test_grids_are_written_with_the_expected_pixel_size(smoke_ctx):
    ctx = smoke_ctx()
    assert sample_grids(ctx) == {}
    assert ctx.artifacts == {"samples_joint": "samples_joint.png", "samples_cross": "samples_cross.png"}
    M, cell = 3, 28 + 2 * PAD
    joint = Image.open(ctx.run_dir / "samples_joint.png")
    assert joint.size == (M * cell, GRID_ROWS * cell) and joint.mode == "RGB"
    cross = Image.open(ctx.run_dir / "samples_cross.png")
    n_subsets = 3 + 3  # M = 3: three subsets of size 1 and three of size 2
    assert cross.size == (M * cell, (1 + n_subsets) * cell)


def test_cross_grid_shows_the_real_tuple_first_and_frames_observed_modalities(smoke_ctx):
    ctx = smoke_ctx()
    sample_grids(ctx)
    cross = np.asarray(Image.open(ctx.run_dir / "samples_cross.png"))
    real = ctx.data.splits["test"].data["m1"][0].permute(1, 2, 0).numpy()  # (28, 28, 3) uint8
    cell = 28 + 2 * PAD
    np.testing.assert_array_equal(cross[PAD:PAD + 28, cell + PAD:cell + PAD + 28], real)
    # row 1 is the subset {m0}: m0 observed (green frame), m1 generated (grey frame)
    assert tuple(cross[cell, 0]) == OBSERVED and tuple(cross[cell, cell]) != OBSERVED


def test_tile_places_each_image_inside_its_frame():
    a, b = torch.zeros(3, 5, 5), torch.ones(1, 5, 5)  # a grey-scale image is drawn in RGB
    out = tile([[a, b]])
    w = 5 + 2 * PAD
    assert out.shape == (w, 2 * w, 3)
    assert (out[PAD:PAD + 5, PAD:PAD + 5] == 0).all() and (out[PAD:PAD + 5, w + PAD:w + PAD + 5] == 255).all()
    assert (out[0, :w] == GENERATED).all()  # the frame
