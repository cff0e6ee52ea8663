"""A human summary of a store: its sessions, their shapes and completeness."""

from __future__ import annotations

from pathlib import Path

from .store import index


def describe(store: Path | str) -> str:
    """A table of the store's sessions from its index (no array is read)."""
    if not Path(store).exists():
        raise FileNotFoundError(f"no store at {store}")
    sessions = index(store)
    if not sessions:
        return f"{store}: no sessions recorded"
    width = max(len(k) for k in sessions)
    lines = [f"{store}: {len(sessions)} session(s)",
             f"{'session':<{width}}  {'shape':>11}  {'frames':>6}  {'unregistered':>12}  complete"]  # fmt: skip
    for key, record in sessions.items():
        shape = "x".join(str(v) for v in record.get("shape", []))
        lines.append(f"{key:<{width}}  {shape:>11}  {record.get('n_frames', 0):>6}  "
                     f"{record.get('registration_failures', 0):>12}  {'yes' if record.get('complete') else 'no'}")  # fmt: skip
    return "\n".join(lines)
