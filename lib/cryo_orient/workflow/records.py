"""A notebook's last step: its figure saved and its record written, with the parameters it ran with.

Every figure and table target ends the same way: the figure goes to ``<out_dir>/<target>.png``
and the record ``<out_dir>/<target>.json`` (:func:`cryo_orient.artifacts.write_record`) holds the
values of the notebook's ``parameters`` cell as it ran (:func:`cryo_orient.workflow.profiles.run_parameters`),
any resolved settings beside them, the numbers it shows and the files it wrote.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from cryo_orient import artifacts
from cryo_orient.validation import InputError
from cryo_orient.workflow import profiles

__all__ = ["publish"]


def publish(target: str, namespace: Mapping, *, figure=None, outputs=None, parameters=None, results=None) -> Path:
    """Save ``figure`` (if given) as ``<out_dir>/<target>.png`` and write the target's record.

    Parameters
    ----------
    target : str
        The notebook's name (``experiments/<target>.py``).
    namespace : mapping
        The running notebook's ``globals()``: ``out_dir`` and its parameters are read from it.
    figure : matplotlib.figure.Figure, optional
    outputs : list of str, optional
        The files the target wrote into ``out_dir`` (default: the figure's).
    parameters : dict, optional
        Settings recorded beside the notebook's parameters (e.g. a resolved config).
    results : dict, optional
        The numbers the target shows.

    Returns
    -------
    Path
        The record.
    """
    out = Path(namespace["out_dir"])
    if figure is not None:
        artifacts.save_figure(figure, out / f"{target}.png")
    if outputs is None:
        if figure is None:
            raise InputError(f"{target}: give the outputs it wrote, or the figure to save")
        outputs = [f"{target}.png"]
    recorded = profiles.run_parameters(target, namespace) | dict(parameters or {})
    return artifacts.write_record(out, target, outputs=outputs, parameters=recorded, results=results)
