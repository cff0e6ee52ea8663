"""A picture of one session: ``os``, ``calib``, ``mean`` and ``mask`` side by side (``skyprep preview``).

Images are scaled as astronomers look at them: the ZScale interval (IRAF's display limits)
with an asinh stretch; the mask shows which pixels carry any flag bit. Each panel has a colour bar.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr

from ..io.index import complete_sessions
from ..io.objects import ObjectPath, location, writable_file, zarr_store

PANELS = ("os", "calib", "mean", "mask")
PANEL_IN = 4.0  # width of one panel, inches
DPI = 100


def figure_size_px(n_panels: int) -> tuple[int, int]:
    """``(width, height)`` of the written PNG, pixels."""
    return int(n_panels * PANEL_IN * DPI), int(PANEL_IN * 1.1 * DPI)


def preview(store: Path | ObjectPath | str, session: str, out: Path | ObjectPath | str) -> Path | ObjectPath:
    """Write the session's panels (those it holds) to ``out`` (PNG) and return its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from astropy.visualization import AsinhStretch, ImageNormalize, ZScaleInterval

    if session not in complete_sessions(store):
        raise FileNotFoundError(f"{store}: no complete session {session!r}")
    group = zarr.open_group(zarr_store(store), path=session, mode="r", zarr_format=3)
    names = [name for name in PANELS if name in group]
    width, height = figure_size_px(len(names))
    fig, axes = plt.subplots(1, len(names), figsize=(width / DPI, height / DPI), dpi=DPI, squeeze=False)
    for ax, name in zip(axes[0], names):
        data = np.asarray(group[name][...])
        if name == "mask":
            image = ax.imshow(data != 0, origin="lower", cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
            ax.set_title("mask (any flag)")
        elif not np.isfinite(data).any():
            image = ax.imshow(np.zeros(data.shape), origin="lower", cmap="gray", vmin=0, vmax=1)
            ax.set_title(f"{name} (no finite pixel)")
        else:
            norm = ImageNormalize(data[np.isfinite(data)], interval=ZScaleInterval(), stretch=AsinhStretch())
            image = ax.imshow(data, origin="lower", cmap="gray", norm=norm, interpolation="nearest")
            ax.set_title(f"{name} (ADU, zscale asinh)")
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.02)
    fig.suptitle(f"{session}")
    out = location(out)
    with writable_file(out) as local:
        fig.savefig(local, dpi=DPI, format="png")
    plt.close(fig)
    return out
