"""A human summary of a store: its sessions, their shapes and completeness."""

from __future__ import annotations

from pathlib import Path

from ..io.index import index
from ..io.objects import ObjectPath, location


def describe(store: Path | ObjectPath | str) -> str:
    """A table of the store's sessions from its index (no array is read)."""
    if not location(store).exists():
        raise FileNotFoundError(f"no store at {store}")
    sessions = index(store)
    if not sessions:
        return f"{store}: no sessions recorded"
    width = max(len(k) for k in sessions)
    lines = [
        f"{store}: {len(sessions)} session(s)",
        f"{'session':<{width}}  {'shape':>11}  {'frames':>6}  {'unregistered':>12}  {'split':>5}  complete",
    ]
    for key, record in sessions.items():
        shape = "x".join(str(v) for v in record.get("shape", []))
        lines.append(
            f"{key:<{width}}  {shape:>11}  {record.get('n_frames', 0):>6}  "
            f"{record.get('registration_failures', 0):>12}  {record.get('split') or '-':>5}  "
            f"{'yes' if record.get('complete') else 'no'}"
        )
    return "\n".join(lines + _reference_lines(sessions, width) + _noise_lines(sessions, width))


def _reference_lines(sessions: dict, width: int) -> list[str]:
    """Agreement with the archive's own products: median and robust spread of the difference, ADU."""
    checked = {key: r["reference_check"] for key, r in sessions.items() if r.get("reference_check")}
    if not checked:
        return []
    lines = [
        "",
        "agreement with the archive's products (ADU, median / robust spread 1.4826 MAD):",
        f"{'session':<{width}}  {'os - ref_os':>19}  {'calib - ref_calib':>19}",
    ]
    for key, check in checked.items():
        cells = [_median_spread(check.get(product)) for product in ("os", "calib")]
        lines.append(f"{key:<{width}}  {cells[0]:>19}  {cells[1]:>19}")
    return lines


def _noise_lines(sessions: dict, width: int) -> list[str]:
    """The fitted noise models' summaries (docs/synthesis.md)."""
    fitted = {key: r["noise"] for key, r in sessions.items() if r.get("noise")}
    if not fitted:
        return []
    lines = ["", "noise model (gain e-/ADU: header / photon transfer curve; noise e-; cosmic rays per px per s):",
             f"{'session':<{width}}  {'gain':>13}  {'read':>6}  {'row':>6}  {'cosmic rate':>11}"]  # fmt: skip
    for key, noise in fitted.items():
        ptc = noise.get("gain_ptc_e_per_adu")
        gain = f"{noise['gain_e_per_adu']:.3f} / " + (f"{ptc:.3f}" if ptc is not None else "-")
        lines.append(f"{key:<{width}}  {gain:>13}  {noise['read_noise_e']:>6.2f}  {noise['row_noise_e']:>6.2f}  "
                     f"{noise['cosmic_rate_per_px_s']:>11.3g}")  # fmt: skip
    return lines


def _median_spread(stats: dict | None) -> str:
    if not stats or stats.get("median") is None:
        return "-"
    return f"{stats['median']:+.3g} / {stats['robust_std']:.3g}"
