"""A/B of local FITS reads against another git revision of the package: what object-storage
support costs plain paths.

    python benchmarks/bench_fits_ab.py REV [--pairs 8]

``git archive REV pipeline`` is unpacked into a temporary folder; then, alternately (the order swapping
every pair), a fresh process of each version reads the same two 2048 x 2080 uint16 RICE_1 frames (one-row tiles and
128 x 128 tiles): the pipeline's path (512-row strips from a closed file) and a 256 x 256
cutout from an open one, best of 7 CPU times of the reading thread each. Prints the medians
over the pairs and the ratios this / REV. ``REV`` = ``HEAD`` measures the noise.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

READER = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from pipeline.io import fits_files
from pipeline.io.fits_headers import list_images
from pipeline.io.fits_reader import read_cutout, read_rows
out = {}
for name in sys.argv[2:]:
    (ref,) = list_images(name)
    full = cutout = float("inf")
    for _ in range(7):
        fits_files.close_open_files()
        t = time.thread_time()
        for y0 in range(0, ref.shape[0], 512):
            read_rows(ref, y0, min(y0 + 512, ref.shape[0]))
        full = min(full, time.thread_time() - t)
        t = time.thread_time()
        for _ in range(20):
            read_cutout(ref, 896, 1152, 912, 1168)
        cutout = min(cutout, (time.thread_time() - t) / 20)
    out[Path(name).name] = {"full_ms": full * 1e3, "cutout_ms": cutout * 1e3}
print(json.dumps(out))
"""


def frames(folder: Path) -> list[Path]:
    import numpy as np
    from astropy.io import fits

    pixels = np.random.default_rng(0).poisson(1100, (2080, 2048)).astype(np.uint16)
    paths = [folder / "one-row.fits.fz", folder / "tiles-128.fits.fz"]
    for path, tiles in zip(paths, (None, (128, 128))):
        hdu = fits.CompImageHDU(pixels, compression_type="RICE_1", **({"tile_shape": tiles} if tiles else {}))
        fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(path)
    return paths


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("rev")
    p.add_argument("--pairs", type=int, default=8)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base"
        archive = subprocess.run(["git", "archive", args.rev, "pipeline"], cwd=ROOT, check=True, capture_output=True)
        tarfile.open(fileobj=BytesIO(archive.stdout)).extractall(base, filter="data")
        files = [str(f) for f in frames(Path(tmp))]
        runs = {"this": [], args.rev: []}
        for i in range(args.pairs):
            order = (("this", ROOT), (args.rev, base))
            for label, code in order[:: 1 if i % 2 else -1]:  # the order swaps every pair
                done = subprocess.run([sys.executable, "-c", READER, str(code), *files], check=True,
                                      capture_output=True, text=True)  # fmt: skip
                runs[label].append(json.loads(done.stdout))
        for name in (Path(f).name for f in files):
            for what in ("full_ms", "cutout_ms"):
                this, other = (statistics.median(r[name][what] for r in runs[k]) for k in ("this", args.rev))
                print(f"{name:<18} {what:<10} this {this:7.2f}  {args.rev} {other:7.2f}  ratio {this / other:.3f}")


if __name__ == "__main__":
    main()
