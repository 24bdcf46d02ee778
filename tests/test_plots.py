"""The shared figure panels draw what they are given, and return the artists they added."""

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Polygon, Rectangle

from cryo_orient.workflow import plots


@pytest.fixture
def ax():
    """Axes of an Agg figure (no pyplot, no global backend), drawn once the test is done."""
    fig = Figure()
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    yield ax
    fig.canvas.draw()  # every artist the test added can be rendered


def test_loss_curve(ax):
    losses = np.geomspace(1.0, 1e-3, 50)
    drawn = plots.loss_curve(ax, losses, loss_at_truth=0.01)
    assert len(ax.lines) == 2
    x, y = drawn["curve"].get_data()
    np.testing.assert_array_equal(x, np.arange(1, 51))
    np.testing.assert_array_equal(y, losses)
    assert drawn["truth"].get_ydata()[0] == 0.01 and drawn["truth"].get_label() == "L_OR at the true orientations"
    assert ax.get_yscale() == "log" and ax.get_xlabel() == "recovery step"
    assert plots.loss_curve(ax, losses)["truth"] is None  # no line without the value
    assert len(ax.lines) == 3


def test_error_histogram(ax):
    errors = np.random.default_rng(0).uniform(0, 0.5, 300)
    drawn = plots.error_histogram(ax, errors, median=0.25, mean=0.24, bins=40)
    assert len(drawn["bars"]) == 40 and all(isinstance(b, Rectangle) for b in drawn["bars"])
    assert sum(b.get_height() for b in drawn["bars"]) == 300  # counts: every error in one bar
    assert [line.get_label() for line in ax.lines] == ["median", "mean"]
    assert drawn["median"].get_xdata()[0] == 0.25 and drawn["mean"].get_linestyle() == "--"
    assert [t.get_text() for t in drawn["legend"].get_texts()] == ["median", "mean"]


def test_error_histogram_without_marks(ax):
    drawn = plots.error_histogram(ax, [0.1, 0.2, 0.2, 0.3], bins=3)
    assert len(drawn["bars"]) == 3 and drawn["median"] is None and drawn["legend"] is None and not ax.lines


def test_recovery_panel(ax):
    drawn = plots.recovery_panel(
        ax,
        np.linspace(1, 0.1, 20),
        np.linspace(0, 1, 100),
        loss_at_truth=0.2,
        median=0.5,
        mean=0.5,
        text="L_OR 0.1",
        title="(a) case",
    )
    assert len(ax.lines) == 2 and ax.get_title() == "(a) case"
    assert [t.get_text() for t in ax.texts] == ["L_OR 0.1"]
    inset = drawn["inset"]
    assert inset in ax.child_axes
    assert len(inset.patches) == 40 and len(inset.lines) == 2
    assert drawn["histogram"]["bars"] == list(inset.patches)


def test_fsc_curves(ax):
    f = np.linspace(0, 0.5, 30)
    curves = [
        ("truth: 8.0 / 6.0 Å", f, np.exp(-5 * f), dict(color="k")),
        ("random", f, np.zeros_like(f), dict(color="0.6", ls="--")),
    ]
    drawn = plots.fsc_curves(ax, curves, title="FSC", legend_kw=dict(fontsize=7))
    assert len(drawn["curves"]) == 2 and len(drawn["thresholds"]) == 2 and len(ax.lines) == 4
    assert sorted(line.get_ydata()[0] for line in drawn["thresholds"]) == [0.143, 0.5]
    assert drawn["curves"][1].get_linestyle() == "--"
    np.testing.assert_array_equal(drawn["curves"][0].get_ydata(), np.exp(-5 * f))
    assert [t.get_text() for t in drawn["legend"].get_texts()] == ["truth: 8.0 / 6.0 Å", "random"]
    assert ax.get_ylim() == (-0.1, 1.02) and ax.get_ylabel() == "FSC" and ax.get_title() == "FSC"
    assert plots.fsc_curves(ax, [], thresholds=(0.5,))["legend"] is None


def test_arrow_on_axes_and_between_panels(ax):
    patch, text = plots.arrow(ax, (0, 0), (1, 0), "step 1")
    assert isinstance(patch, FancyArrowPatch) and patch in ax.patches
    assert text.get_text() == "step 1" and text.get_position() == (0.5, 0.1) and text in ax.texts
    patch, text = plots.arrow(ax, (0, 1), (1, 1))
    assert text is None and len(ax.patches) == 2
    fig = ax.figure
    patch, text = plots.arrow(
        fig, (0.1, 0.5), (0.3, 0.5), "recover", transform=fig.transFigure, text_offset=0.03, color="tab:blue"
    )
    assert patch in fig.artists and text in fig.texts and text.get_position() == pytest.approx((0.2, 0.53))
    assert patch.get_transform() == fig.transFigure


def test_box(ax):
    patch, title = plots.box(ax, 1, 2, 3, 4, title="Step 1")
    assert isinstance(patch, FancyBboxPatch) and (patch.get_x(), patch.get_y(), patch.get_width()) == (1, 2, 3)
    assert title.get_text() == "Step 1" and title.get_position() == pytest.approx((1, 6.12))
    patch, title = plots.box(ax, 0, 0, 2, 1, title="centred", title_x=1, title_kw=dict(ha="center"), fc="0.9")
    assert title.get_position() == pytest.approx((1, 1.12)) and title.get_ha() == "center"
    assert plots.box(ax, 0, 0, 1, 1)[1] is None
    assert len(ax.patches) == 3 and len(ax.texts) == 2


def test_thumbnail(ax):
    image, frame = plots.thumbnail(ax, np.eye(8), 1, 2, 0.5, edge="red", lw=3, zorder=4, frame_zorder=2)
    assert image.get_extent() == [1, 1.5, 2, 2.5] and image.get_zorder() == 4
    assert isinstance(frame, Rectangle) and frame.get_linewidth() == 3 and frame.get_zorder() == 2
    image, frame = plots.thumbnail(ax, np.eye(8), 0, 0, 1, edge=None)
    assert frame is None and len(ax.images) == 2 and len(ax.patches) == 1


def test_cuboid_and_its_extent(ax):
    faces = plots.cuboid(ax, 1.0, 0.0, 0.5, 2.0, "#f7c67f")
    assert len(faces) == 3 and all(isinstance(f, Polygon) for f in faces) and len(ax.patches) == 3
    # Front face 0.5 x 2 centred on 0; depth 0.2 * 2 = 0.4 to the right, rising 0.6 * 0.4.
    right, top = plots.top_right(faces)
    assert (right, top) == pytest.approx((1.0 + 0.5 + 0.4, 1.0 + 0.24))
    assert [f.get_alpha() for f in faces] == pytest.approx([0.95, 0.95 * 0.75, 0.95 * 0.55])


def test_pipeline_case_panel_shows_the_case_summary(ax):
    rng = np.random.default_rng(1)
    summary = {
        "L_at_true_orientations": 0.02,
        "E_OR_median": 0.1,
        "E_OR_mean": 0.12,
        "L_OR": 0.015,
        "estimator": {"final_train_loss": 0.3, "final_val_mae": 0.25},
    }
    case = {"summary": summary, "losses": np.geomspace(1, 1e-2, 30), "errors": rng.uniform(0, 0.3, 100)}
    drawn = plots.pipeline_case_panel(ax, case, "(a) a case")
    text = drawn["text"].get_text()
    assert "L_DE train 0.300, val 0.250" in text and "E_OR median 0.100, mean 0.120 rad" in text
    assert ax.get_title() == "(a) a case"
    # An estimator without training (exact distances) has no L_DE line.
    case["summary"] = dict(summary, estimator={"name": "exact", "key": "exact"})
    assert "L_DE" not in plots.pipeline_case_panel(ax, case)["text"].get_text()


def test_note(ax):
    note = plots.note(ax, "a remark")
    assert note.get_text() == "a remark" and note in ax.texts and note.get_bbox_patch() is not None


def test_head_label_names_each_head_once_and_marks_ours_as_beyond_the_paper():
    assert plots.head_label("cosine") == "paper's head"
    assert plots.head_label("squared_cosine") == "squared head"
    assert "beyond" in plots.head_label("squared_cosine", short=True)
    assert "beyond" not in plots.head_label("cosine", short=True)
    assert plots.head_label("something_new") == "something_new"  # an unknown head keeps its name
