"""Figures drawn off-screen, without pyplot: its state is the caller's (a notebook's backend was
switched to Agg when a report was written from Python, an outside probe found)."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # matplotlib is imported when a figure is drawn, not with the package
    from matplotlib.figure import Figure


def new_figure(**kwargs: Any) -> Figure:
    """A :class:`matplotlib.figure.Figure` of its own, outside pyplot's list of figures
    (``kwargs`` as ``Figure`` takes them: ``figsize``, ``constrained_layout``, ...)."""
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def figure_bytes(figure: Figure, fmt: str = "png", dpi: int = 110) -> bytes:
    """The bytes of ``figure`` saved in the format ``fmt``."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format=fmt, dpi=dpi)
    return buffer.getvalue()
