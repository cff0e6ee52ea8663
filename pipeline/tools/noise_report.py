"""``skyprep noise``: how a session's synthesized frames compare with its real ``os`` (PNG + figures).

Three panels, over background pixels (stack source mask 1, no mask bit, at least 2 frames in
the stack) of the central ``MAX_SIDE_PX`` square (whole rows of it for the spectra):

1. Photon transfer curve: variance against expected signal in flux bins (of the smoothed
   expectation, ``noise_realism.smooth_signal_adu``), of ``os`` and of ``syn`` about the
   stack-based expectation (``noise_realism.expected_os_adu``; the stack's own variance
   removed from ``os``'s and added to ``syn``'s), the noise model's line ``signal / gain +
   read variance``, and the model's own e91-pair points.
2. Residual histograms of ``os`` and ``syn`` about the expectation, log scale (uncorrected:
   ``os``'s is wider by twice the stack's own variance, ``1 / count`` of a frame's, with the
   base-noise subtraction on).
3. Row-noise power spectra of both residuals (row means, white floor removed).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr

from ..io.index import complete_sessions
from ..io.objects import ObjectPath, location, writable_file, zarr_store
from ..steps import noise_realism as realism
from ..steps.noise_fit import QUANTISATION_VAR_ADU2
from ..steps.noise_model import NoiseModel

MAX_SIDE_PX = 1024
FLUX_BINS = 8
DPI = 100


@dataclass(frozen=True)
class NoiseFigures:
    """The comparison's numbers: per flux bin ``syn``/``os`` variance ratio minus 1, and the row
    power ratio minus 1."""

    variance_ratio_minus_1: tuple[float, ...]
    row_power_ratio_minus_1: float
    pixels: int


def noise_report(
    store: Path | ObjectPath | str, session: str, out: Path | ObjectPath | str, realization: int = 0
) -> NoiseFigures:
    """Write the report of ``session`` to ``out`` (PNG); return its figures."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if session not in complete_sessions(store):
        raise FileNotFoundError(f"{store}: no complete session {session!r}")
    group = zarr.open_group(zarr_store(store), path=session, mode="r", zarr_format=3)
    if "syn" not in group or "noise_model" not in group.attrs:
        raise FileNotFoundError(f"{store}: session {session!r} has no syn (no e91 frames, or realizations 0)")
    if not 0 <= realization < group["syn"].shape[0]:
        raise ValueError(f"realization {realization}: the session holds {group['syn'].shape[0]}")
    model = NoiseModel.from_attrs(dict(group.attrs["noise_model"]))
    ny, nx = group["mean"].shape
    rows = slice(max(0, (ny - MAX_SIDE_PX) // 2), max(0, (ny - MAX_SIDE_PX) // 2) + min(ny, MAX_SIDE_PX))
    cols = slice(max(0, (nx - MAX_SIDE_PX) // 2), max(0, (nx - MAX_SIDE_PX) // 2) + min(nx, MAX_SIDE_PX))
    a = {name: group[name][rows, cols] for name in ("os", "mean", "flat", "dark", "bias", "count", "std", "mask",
                                                    "source_mask")}  # fmt: skip
    syn = group["syn"][realization, rows, cols]
    gain = np.full(a["mean"].shape, np.nan)
    for amp in model.amps:
        y0, y1, x0, x1 = amp.region
        gain[max(y0 - rows.start, 0) : max(y1 - rows.start, 0), max(x0 - cols.start, 0) : max(x1 - cols.start, 0)] = (
            amp.gain_e_per_adu
        )
    expected = realism.expected_os_adu(
        a["mean"], a["flat"], a["dark"], a["bias"], gain, model.darktime_s, model.gain_nominal_e_per_adu
    )
    base = realism.base_variance_adu2(a["std"], a["count"], a["flat"])
    use = (a["source_mask"] == 1) & (a["mask"] == 0) & np.isfinite(expected) & np.isfinite(base) & np.isfinite(syn)
    if use.sum() < 1000:
        raise ValueError(f"{session}: only {int(use.sum())} background pixels to compare")
    signal = realism.smooth_signal_adu(expected, use)
    use &= np.isfinite(signal)
    edges = realism.flux_bin_edges(signal, use, FLUX_BINS)
    os_var = realism.binned_variance(a["os"] - expected, signal, use, edges, -base)
    syn_var = realism.binned_variance(syn - expected, signal, use, edges, base)
    os_rows = realism.row_power(a["os"] - expected, use)
    syn_rows = realism.row_power(syn - expected, use)

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5), dpi=DPI)
    ax = axes[0]
    ax.plot(os_var.signal_adu, os_var.variance_adu2, "o", label="os (real)")
    ax.plot(syn_var.signal_adu, syn_var.variance_adu2, "s", mfc="none", label="syn")
    amp = model.amps[0]
    read_var = amp.read.white_adu**2 + amp.read.row_adu**2 + QUANTISATION_VAR_ADU2
    line = np.linspace(0, edges[-1], 50)
    ax.plot(line, line / amp.synthesis_gain_e_per_adu + read_var, "k-", lw=1,
            label=f"model: g = {amp.synthesis_gain_e_per_adu:.3f} e-/ADU")  # fmt: skip
    if amp.gain_ptc is not None:
        ptc = amp.gain_ptc
        ax.errorbar(ptc.signal_adu, np.add(ptc.variance_adu2, read_var), ptc.variance_err_adu2, fmt=".", color="grey",
                    label="e91 pairs (fit)")  # fmt: skip
    ax.set(xlabel="expected signal (ADU)", ylabel="variance (ADU$^2$)", title="photon transfer curve")
    ax.legend(fontsize=8)
    ax = axes[1]
    spread = np.sqrt(np.nanmedian(os_var.variance_adu2))
    bins = np.linspace(-8 * spread, 8 * spread, 161)
    for values, label in ((a["os"] - expected, "os"), (syn - expected, "syn")):
        ax.hist(values[use], bins=bins, histtype="step", log=True, label=label)
    ax.set(xlabel="residual about expectation (ADU)", ylabel="pixels", title="background residuals")
    ax.legend(fontsize=8)
    ax = axes[2]
    for power, label in ((os_rows, "os"), (syn_rows, "syn")):
        ax.loglog(
            power.freq[1:], np.clip(power.psd_adu2[1:], 1e-6, None), label=f"{label}: {power.row_var_adu2:.3g} ADU$^2$"
        )
    ax.set(xlabel="frequency (cycles / row)", ylabel="row-mean power (ADU$^2$)", title="row noise")
    ax.legend(fontsize=8)
    fig.suptitle(f"{session}: noise model vs real os (realization {realization})")
    fig.tight_layout()
    with writable_file(location(out)) as local:
        fig.savefig(local, format="png")
    plt.close(fig)
    return NoiseFigures(
        tuple(float(v) for v in syn_var.variance_adu2 / os_var.variance_adu2 - 1),
        float(syn_rows.row_var_adu2 / os_rows.row_var_adu2 - 1) if os_rows.row_var_adu2 > 0 else float("nan"),
        int(use.sum()),
    )
