"""Panels that several experiment notebooks draw, in one place.

Plotting only: every function draws arrays and numbers it is given into a matplotlib ``ax``
(an :class:`~matplotlib.axes.Axes`) and returns the artists it added; none computes a result.

- :func:`recovery_panel`: the L_OR curve over recovery steps with an inset histogram of the
  per-orientation errors (figures 10 and 13), from :func:`loss_curve` and :func:`error_histogram`
  (the histogram is seaborn's ``histplot``);
- :func:`fsc_curves`: Fourier shell correlation curves with the 0.5 and 0.143 thresholds
  (figures 11, 13 and the comparison with common lines);
- the schematic figures' pieces (figures 2, 3, 4 and 18): :func:`arrow`, :func:`box`,
  :func:`thumbnail` and :func:`cuboid` (the layer boxes of figures 4 and 18), with
  :func:`top_right` for the extent of what was drawn;
- :func:`head_label`: the one name of each distance head in every figure.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Polygon, Rectangle

__all__ = [
    "BLUE",
    "arrow",
    "box",
    "cuboid",
    "error_histogram",
    "fsc_curves",
    "fsc_results",
    "head_label",
    "loss_curve",
    "recovery_panel",
    "thumbnail",
    "top_right",
]

#: The schematics' accent colour (matplotlib's ``tab:blue``).
BLUE = "#1f77b4"
#: The label of the per-orientation error after alignment.
ERROR_LABEL = "d_q(q_i, T q̂_i) (rad)"
#: Each feature distance (``TrainingConfig.feature_distance``) as figures name it: long, short.
_HEAD_LABELS = {
    "cosine": ("paper's head", "cosine"),
    "squared_cosine": ("squared head", "squared\n(beyond)"),
    "euclidean": ("Euclidean head", "Euclidean"),
}


def head_label(kind: str, *, short: bool = False) -> str:
    """The name of the distance head ``kind`` in legends and captions (``short``: on an axis, where
    the squared head is marked as beyond the paper); an unknown kind is named as it is."""
    long_label, short_label = _HEAD_LABELS.get(kind, (kind, kind))
    return short_label if short else long_label


def _add_patch(ax, patch):
    """Add ``patch`` to an Axes (its data limits follow) or to a Figure (for figure coordinates)."""
    return ax.add_patch(patch) if isinstance(ax, Axes) else ax.add_artist(patch)


# --------------------------------------------------------------------------- recovery


def loss_curve(ax, losses, *, loss_at_truth=None, color="tab:blue", lw=0.8, log=True) -> dict:
    """L_OR per recovery step, with Eq. 4's loss at the true orientations as a dotted line.

    Parameters
    ----------
    ax : matplotlib.axes.Axes
    losses : array_like, shape (steps,)
        The recovery's loss at every step (step 1 first).
    loss_at_truth : float, optional
        The loss at the true orientations; drawn as a horizontal line labelled for the legend.
    color : color
        Of the curve and the line.
    lw : float
        Width of the curve.
    log : bool
        Logarithmic y axis.

    Returns
    -------
    dict
        ``"curve"``: the Line2D of the losses; ``"truth"``: the Line2D at ``loss_at_truth`` (or None).
    """
    losses = np.asarray(losses)
    (curve,) = ax.plot(np.arange(1, len(losses) + 1), losses, color=color, lw=lw)
    truth = None
    if loss_at_truth is not None:
        truth = ax.axhline(loss_at_truth, color=color, ls=":", lw=1, label="L_OR at the true orientations")
    ax.set(xlabel="recovery step", ylabel="L_OR")
    if log:
        ax.set_yscale("log")
    return {"curve": curve, "truth": truth}


def error_histogram(
    ax, errors, *, median=None, mean=None, bins=40, color="tab:red", alpha=0.8, xlabel=ERROR_LABEL, fontsize=7
) -> dict:
    """Histogram of per-orientation errors (seaborn ``histplot``), its median and mean marked.

    Parameters
    ----------
    ax : matplotlib.axes.Axes
    errors : array_like, shape (n,)
        One error per orientation, in radians.
    median, mean : float, optional
        Drawn as a solid and a dashed vertical line (pass the values the record holds).
    bins : int
        Number of bins (equal widths over the range of ``errors``).
    color : color
    alpha : float
    xlabel : str
    fontsize : float
        Of the axis label, the ticks and the legend.

    Returns
    -------
    dict
        ``"bars"``: the bars' Rectangles (one per bin); ``"median"``, ``"mean"``: the Line2Ds (or
        None); ``"legend"``: the Legend (or None, when neither line is drawn).
    """
    before = len(ax.patches)
    sns.histplot(x=np.asarray(errors, dtype=float), bins=bins, color=color, alpha=alpha, ax=ax)
    bars = list(ax.patches[before:])
    lines = {}
    for name, value, style in (("median", median, "-"), ("mean", mean, "--")):
        lines[name] = None if value is None else ax.axvline(value, color="k", lw=1.2, ls=style, label=name)
    ax.set_xlabel(xlabel, fontsize=fontsize)
    ax.set_ylabel("count", fontsize=fontsize)
    ax.tick_params(labelsize=fontsize)
    legend = ax.legend(fontsize=fontsize - 1) if any(v is not None for v in lines.values()) else None
    return {"bars": bars, **lines, "legend": legend}


def recovery_panel(
    ax,
    losses,
    errors,
    *,
    loss_at_truth=None,
    median=None,
    mean=None,
    text=None,
    title=None,
    inset_bounds=(0.55, 0.38, 0.42, 0.38),
    bins=40,
) -> dict:
    """One recovery: L_OR over steps (:func:`loss_curve`), a text box, and an inset histogram of
    the errors after alignment (:func:`error_histogram`). Figures 10 and 13.

    Parameters
    ----------
    ax : matplotlib.axes.Axes
    losses : array_like, shape (steps,)
        L_OR per recovery step.
    errors : array_like, shape (n,)
        Per-orientation errors after alignment, in radians.
    loss_at_truth : float, optional
        Eq. 4's loss at the true orientations (dotted line).
    median, mean : float, optional
        The errors' median and mean, marked on the histogram.
    text : str, optional
        Shown in a box in the lower left corner (e.g. the numbers of the case).
    title : str, optional
    inset_bounds : 4 floats
        The histogram's ``[x0, y0, width, height]`` in axes coordinates.
    bins : int

    Returns
    -------
    dict
        ``"curve"``, ``"truth"`` (:func:`loss_curve`), ``"legend"`` (of the curve's axes),
        ``"text"`` (the Text, or None), ``"inset"`` (the inset Axes) and ``"histogram"`` (what
        :func:`error_histogram` returned).
    """
    artists = loss_curve(ax, losses, loss_at_truth=loss_at_truth)
    if title is not None:
        ax.set_title(title)
    artists["legend"] = ax.legend(loc="upper right", fontsize=8) if loss_at_truth is not None else None
    artists["text"] = None
    if text is not None:
        artists["text"] = ax.text(
            0.03,
            0.04,
            text,
            transform=ax.transAxes,
            fontsize=8,
            va="bottom",
            bbox=dict(boxstyle="round", fc="white", ec="0.7"),
        )
    inset = ax.inset_axes(list(inset_bounds))
    artists["inset"] = inset
    artists["histogram"] = error_histogram(inset, errors, median=median, mean=mean, bins=bins)
    return artists


# --------------------------------------------------------------------------- FSC


def pipeline_case_panel(ax, case, title=None, **options) -> dict:
    """:func:`recovery_panel` of a case of :func:`cryo_orient.workflow.pipeline.run_case`: its
    L_OR curve, its errors, and the numbers of its summary (L_DE of the estimator, L_OR, E_OR).
    ``options`` go to :func:`recovery_panel`."""
    s = case["summary"]
    estimator = s["estimator"]
    text = f"L_OR {s['L_OR']:.4g}\nE_OR median {s['E_OR_median']:.3f}, mean {s['E_OR_mean']:.3f} rad"
    if "final_train_loss" in estimator:  # a trained estimator
        text = f"L_DE train {estimator['final_train_loss']:.3f}, val {estimator['final_val_mae']:.3f}\n" + text
    if (s.get("topology") or {}).get("unwound"):
        text += "\ntopology check: likely unwound"
    return recovery_panel(
        ax,
        case["losses"],
        case["errors"],
        loss_at_truth=s["L_at_true_orientations"],
        median=s["E_OR_median"],
        mean=s["E_OR_mean"],
        title=title,
        text=text,
        **options,
    )


def note(ax, text, *, xy=(0.02, 0.02), fontsize=8, **kwargs):
    """A boxed note in axes coordinates (lower left by default): the figures' side remarks."""
    return ax.annotate(
        text,
        xy=xy,
        xycoords="axes fraction",
        fontsize=fontsize,
        bbox=dict(boxstyle="round", fc="white", ec="0.7"),
        **kwargs,
    )


def fsc_curves(
    ax,
    curves: Iterable[tuple[str, Sequence, Sequence, Mapping]],
    *,
    thresholds=(0.5, 0.143),
    xlabel="spatial frequency (1/Å)",
    title=None,
    lw=1.2,
    legend_kw=None,
) -> dict:
    """FSC curves against spatial frequency, with horizontal lines at the ``thresholds``.

    Parameters
    ----------
    ax : matplotlib.axes.Axes
    curves : iterable of (label, frequency, correlation, style)
        One curve each: its legend label, the shells' frequencies (1/Å) and correlations, and
        keyword arguments of ``ax.plot`` (``color``, ``ls``, ...).
    thresholds : sequence of float
        Drawn as thin dotted lines (the paper's 0.5 and the usual 0.143).
    xlabel : str
    title : str, optional
    lw : float
        Width of the curves.
    legend_kw : dict, optional
        Keyword arguments of ``ax.legend``; None draws no legend.

    Returns
    -------
    dict
        ``"curves"``: the curves' Line2Ds in order; ``"thresholds"``: the threshold lines;
        ``"legend"``: the Legend (or None).
    """
    lines = [
        ax.plot(np.asarray(f), np.asarray(c), lw=lw, label=label, **dict(style))[0] for label, f, c, style in curves
    ]
    marks = [ax.axhline(t, color="0.5", lw=0.6, ls=":") for t in thresholds]
    ax.set(xlabel=xlabel, ylabel="FSC", ylim=(-0.1, 1.02))
    if title is not None:
        ax.set_title(title)
    legend = ax.legend(**legend_kw) if legend_kw is not None else None
    return {"curves": lines, "thresholds": marks, "legend": legend}


def fsc_results(ax, results: Mapping, *, title=None) -> dict:
    """:func:`fsc_curves` of named :class:`~cryo_orient.tomography.fsc.FSCResult` s, each labelled
    with its resolutions at 0.5 and 0.143 (Å), the legend at the lower left."""
    shown = [
        (f"{name}: {c.resolution(0.5)[0]:.1f} / {c.resolution(0.143)[0]:.1f} Å", c.frequency, c.correlation, {})
        for name, c in results.items()
    ]
    legend_kw = dict(fontsize=8, title="resolution at 0.5 / 0.143", title_fontsize=8, loc="lower left")
    return fsc_curves(ax, shown, title=title, legend_kw=legend_kw)


# --------------------------------------------------------------------------- schematics


def arrow(ax, start, end, text=None, *, text_offset=0.1, text_kw=None, transform=None, **style):
    """An arrow from ``start`` to ``end``, with an optional label centred above its middle.

    Parameters
    ----------
    ax : matplotlib.axes.Axes or matplotlib.figure.Figure
        A Figure (with ``transform=fig.transFigure``) draws between panels.
    start, end : (float, float)
    text : str, optional
        Drawn at the middle of the arrow, ``text_offset`` above ``start``'s height.
    text_offset : float
    text_kw : dict, optional
        Keyword arguments of the label's ``text`` (default: centred, 11 pt).
    transform : matplotlib.transforms.Transform, optional
        Coordinates of ``start`` and ``end`` (default: the axes' data coordinates).
    **style
        Of the :class:`~matplotlib.patches.FancyArrowPatch` (default: a black ``-|>`` arrow,
        ``mutation_scale=16``, ``lw=1.5``).

    Returns
    -------
    (FancyArrowPatch, Text or None)
    """
    kw = dict(arrowstyle="-|>", mutation_scale=16, lw=1.5, color="k") | style
    if transform is not None:
        kw["transform"] = transform
    patch = _add_patch(ax, FancyArrowPatch(start, end, **kw))
    label = None
    if text:
        tkw = dict(ha="center", va="bottom", fontsize=11) | (text_kw or {})
        if transform is not None:
            tkw["transform"] = transform
        label = ax.text((start[0] + end[0]) / 2, start[1] + text_offset, text, **tkw)
    return patch, label


def box(ax, x, y, w, h, *, title=None, boxstyle="square,pad=0", title_pad=0.12, title_x=None, title_kw=None, **style):
    """A box with its lower left corner at ``(x, y)``, and an optional title above its left edge.

    Parameters
    ----------
    ax : matplotlib.axes.Axes
    x, y, w, h : float
        In data coordinates.
    title : str, optional
        Drawn ``title_pad`` above the box (default: left-aligned at ``x``, in :data:`BLUE`, 13 pt).
    boxstyle : str
        Of the :class:`~matplotlib.patches.FancyBboxPatch` (e.g. ``"round,pad=0.05,rounding_size=0.3"``).
    title_pad : float
    title_x : float, optional
        Where the title starts (default: ``x``; with ``ha="center"`` in ``title_kw``, its middle).
    title_kw : dict, optional
        Keyword arguments of the title's ``text``.
    **style
        Of the patch (default: white face, :data:`BLUE` edge, ``lw=2.5``).

    Returns
    -------
    (FancyBboxPatch, Text or None)
    """
    kw = dict(fc="white", ec=BLUE, lw=2.5) | style
    patch = ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle=boxstyle, **kw))
    label = None
    if title is not None:
        tkw = dict(color=BLUE, fontsize=13, va="bottom") | (title_kw or {})
        label = ax.text(x if title_x is None else title_x, y + h + title_pad, title, **tkw)
    return patch, label


def thumbnail(ax, image, x, y, size, *, edge="0.2", lw=0.8, cmap="gray", zorder=3, frame_zorder=None):
    """An image drawn in the square ``[x, x + size] × [y, y + size]``, with an optional frame.

    Parameters
    ----------
    ax : matplotlib.axes.Axes
    image : array_like, shape (s, s)
    x, y, size : float
        Lower left corner and side, in data coordinates.
    edge : color or None
        Colour of the frame; None draws none.
    lw : float
        Width of the frame.
    cmap : str
    zorder : float
        Of the image.
    frame_zorder : float, optional
        Of the frame (default: ``zorder``).

    Returns
    -------
    (AxesImage, Rectangle or None)
    """
    shown = ax.imshow(np.asarray(image), cmap=cmap, extent=(x, x + size, y, y + size), zorder=zorder)
    frame = None
    if edge is not None:
        frame = ax.add_patch(
            Rectangle(
                (x, y), size, size, fill=False, ec=edge, lw=lw, zorder=zorder if frame_zorder is None else frame_zorder
            )
        )
    return shown, frame


def cuboid(ax, x, yc, w, h, color, *, depth=0.2, rise=0.6, edge="0.25", lw=0.8, alpha=0.95, zorder=3):
    """A layer box: a front face ``w × h`` centred on height ``yc``, with a top and a right face in
    perspective (the second spatial axis). The boxes of figures 4 and 18.

    Parameters
    ----------
    ax : matplotlib.axes.Axes
    x, yc, w, h : float
        Left edge, vertical centre, width and height of the front face (data coordinates).
    color : color
    depth : float
        Horizontal depth of the faces in perspective, as a fraction of ``h``.
    rise : float
        Their vertical rise, as a fraction of the depth.
    edge : color
    lw : float
    alpha : float
        Of the front face; the top and side faces are paler (0.75 and 0.55 of it).
    zorder : float

    Returns
    -------
    list of Polygon
        The front, top and side faces (:func:`top_right` gives the box's right and top extents).
    """
    d = depth * h
    y0 = yc - h / 2
    top = y0 + h + rise * d
    faces = []
    for pts, shade in (
        ([(x, y0), (x + w, y0), (x + w, y0 + h), (x, y0 + h)], 1.0),
        ([(x, y0 + h), (x + d, top), (x + w + d, top), (x + w, y0 + h)], 0.75),
        ([(x + w, y0), (x + w + d, y0 + rise * d), (x + w + d, top), (x + w, y0 + h)], 0.55),
    ):
        faces.append(
            ax.add_patch(Polygon(pts, closed=True, fc=color, ec=edge, lw=lw, alpha=alpha * shade, zorder=zorder))
        )
    return faces


def top_right(artists) -> tuple[float, float]:
    """The largest x and y of the vertices of polygons (e.g. :func:`cuboid`'s faces), in data coordinates."""
    points = np.vstack([np.asarray(a.get_xy()) for a in artists])
    return float(points[:, 0].max()), float(points[:, 1].max())
