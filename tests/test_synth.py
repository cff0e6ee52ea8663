"""Tests of the synthetic archive against independent computations from the files and the truth."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from scipy import ndimage

from pipeline.io.sections import Section
from pipeline.synth import SynthSpec, write_archive
from pipeline.synth.exposure import expose, raw_amplifiers, scene_e
from pipeline.synth.session import draw_session
from pipeline.synth.spec import Stream, rng

SHARED = {
    "INSTRUME",
    "TELESCOP",
    "FILTER",
    "OBSTYPE",
    "DATE-OBS",
    "DAY-OBS",
    "EXPTIME",
    "GAIN",
    "RDNOISE",
    "SATURATE",
    "MAXLIN",
    "CCDSUM",
    "CONFMODE",
    "RLEVEL",
    "OBJECT",
    "BUNIT",
}
PER_AMP = {"GAIN", "RDNOISE", "BIASSEC", "DATASEC", "TRIMSEC", "DETSEC"}
STRUCTURAL = {"XTENSION", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "PCOUNT", "GCOUNT", "BSCALE", "BZERO", "EXTNAME"}


# ----------------------------------------------------------------------------- fixtures & helpers
@pytest.fixture(scope="module")
def muscat(tmp_path_factory) -> list[Path]:
    """Session 0 is MuSCAT3 (g), session 1 MuSCAT4 (r)."""
    return write_archive(tmp_path_factory.mktemp("muscat"), SynthSpec(sessions=2, size=256, frames=3, seed=7))


@pytest.fixture(scope="module")
def mosaic(tmp_path_factory) -> Path:
    spec = SynthSpec(sessions=1, size=256, frames=2, amps=4, seed=11)
    return write_archive(tmp_path_factory.mktemp("mosaic"), spec)[0]


def truth(session: Path) -> tuple[dict, dict]:
    arrays = np.load(session / "truth" / "truth.npz")
    return {k: arrays[k] for k in arrays.files}, json.loads((session / "truth" / "truth.json").read_text())


def raw_path(session: Path) -> Path:
    return session / "data" / f"{session.name}_raw.fits.fz"


def assemble_raw(session: Path, flip: bool = True) -> dict[str, np.ndarray]:
    """Detector-frame raw ADU, gain, overscan level and read noise by the DETSEC rule, from headers."""
    _, params = truth(session)
    levels = {amp["name"]: amp["overscan_level"] for amp in params["amps"]}
    noises = {amp["name"]: amp["rdnoise"] for amp in params["amps"]}
    size = params["size"]
    out = {key: np.zeros((size, size)) for key in ("adu", "gain", "overscan", "rdnoise")}
    with fits.open(raw_path(session)) as hdul:
        for hdu in hdul[1:]:
            datasec, detsec = Section.parse(hdu.header["DATASEC"]), Section.parse(hdu.header["DETSEC"])
            data = hdu.data[datasec.slices]
            out["adu"][detsec.slices] = detsec.orient(data) if flip else data
            out["gain"][detsec.slices] = hdu.header["GAIN"]
            out["overscan"][detsec.slices] = levels[hdu.name]
            out["rdnoise"][detsec.slices] = noises[hdu.name]
    return out


def pulls(session: Path, flip: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(pull, trusted) of the formula-calibrated raw against ``scene_e / gain_nominal``."""
    t, params = truth(session)
    raw = assemble_raw(session, flip)
    gain, exptime = params["gain_nominal"], params["exptime"]
    dark_e = t["dark_e_per_s"] * exptime
    calibrated = ((raw["adu"] - raw["overscan"]) * raw["gain"] - t["bias_e"] - dark_e) / t["flat"] / gain
    variance_e2 = t["scene_e"] * t["flat"] + dark_e + raw["rdnoise"] ** 2 + raw["gain"] ** 2 / 12
    sigma = np.sqrt(variance_e2) / t["flat"] / gain
    trusted = ~(t["saturated"] | t["cosmic_rays"] | t["bad_pixels"] | t["hot_pixels"] | t["low_flat"])
    return (calibrated - t["scene_e"] / gain) / sigma, trusted


def centroid(image: np.ndarray, centre: np.ndarray, radius: float) -> np.ndarray:
    """Background-subtracted first moment inside ``radius`` (annulus median as background)."""
    half = int(np.ceil(radius)) + 4
    y0, x0 = np.rint(centre).astype(int)
    window = image[y0 - half : y0 + half + 1, x0 - half : x0 + half + 1].astype(float)
    yy, xx = np.mgrid[y0 - half : y0 + half + 1, x0 - half : x0 + half + 1]
    r = np.hypot(yy - centre[0], xx - centre[1])
    weight = np.where(r <= radius, window - np.median(window[r > radius]), 0.0)
    return np.array([(weight * yy).sum(), (weight * xx).sum()]) / weight.sum()


# ----------------------------------------------------------------------------- layout
def test_layout_and_names(muscat, mosaic):
    assert [p.relative_to(p.parents[1]).as_posix() for p in muscat] == [
        "muscat3_g/20240315_007_000",
        "muscat4_r/20240315_007_001",
    ]
    assert mosaic.parent.name == "mosaic_g"
    for session, site in [(muscat[0], "ogg"), (muscat[1], "coj")]:
        obs = session.name
        files = {p.relative_to(session).as_posix() for p in session.rglob("*") if p.is_file()}
        assert files == {f"calib/{kind}_{obs}.fits.fz" for kind in ("BIAS", "DARK", "SKYFLAT", "BPM")} | {
            f"data/{obs}_{kind}.fits.fz" for kind in ("raw", "os", "calib", "mean", "mask")
        } | {f"e91/{site}-ep04-20240315-{k:04d}-e91.fits.fz" for k in range(3)} | {
            "info.json",
            "calib.json",
            "truth/truth.npz",
            "truth/truth.json",
        }
    assert not list(muscat[0].parent.parent.rglob(".*.tmp"))


def test_every_fits_file_opens_with_expected_hdus(muscat):
    session = muscat[0]
    paths = sorted(session.rglob("*.fits.fz"))
    assert len(paths) == 4 + 5 + 3  # masters, data products, e91 frames
    for path in paths:
        with fits.open(path) as hdul:
            assert hdul[0].data is None
            for hdu in hdul[1:]:
                assert isinstance(hdu, fits.CompImageHDU)
                assert hdu.data.shape[0] == 256
        with fits.open(path, disable_image_compression=True) as tables:
            for table in tables[1:]:  # no lossless gzip fallback: it stamps the time into the file
                if "GZIP_COMPRESSED_DATA" in table.columns.names:
                    assert not any(len(tile) for tile in table.data["GZIP_COMPRESSED_DATA"])
                assert table.header["ZTILE2"] == 1
    for kind, bunit in [("BIAS", "electron"), ("DARK", "electron/s"), ("SKYFLAT", "")]:
        with fits.open(session / "calib" / f"{kind}_{session.name}.fits.fz") as hdul:
            assert [h.name for h in hdul[1:]] == ["SCI", "ERR"]
            assert hdul["SCI"].header["OBSTYPE"] == kind
            assert hdul["SCI"].header["BUNIT"] == bunit
            assert (hdul["SCI"].header["INSTRUME"], hdul["SCI"].header["FILTER"]) == ("muscat3", "g")
            assert hdul["SCI"].data.dtype == np.float32 and hdul["ERR"].data.dtype == np.float32
            assert np.all(hdul["ERR"].data > 0)
    with fits.open(session / "calib" / f"BPM_{session.name}.fits.fz") as hdul:
        assert hdul[1].name == "BPM" and hdul[1].data.dtype == np.uint8
        assert hdul[1].header["OBSTYPE"] == "BPM"


def test_json_metadata(muscat):
    session = muscat[1]
    info = json.loads((session / "info.json").read_text())
    calib = json.loads((session / "calib.json").read_text())
    with fits.open(raw_path(session)) as hdul:
        header = hdul[1].header
    assert info == {
        "obs_id": session.name,
        "instrument": "muscat4",
        "band": "r",
        "object": header["OBJECT"],
        "date_obs": header["DATE-OBS"],
        "exptime": header["EXPTIME"],
        "n_e91": 3,
    }
    assert calib["gain"] == header["GAIN"] and calib["rdnoise"] == header["RDNOISE"]
    for kind, key in [("BIAS", "bias"), ("DARK", "dark"), ("SKYFLAT", "flat")]:
        assert (session / "calib" / calib[key]["file"]).name == f"{kind}_{session.name}.fits.fz"
    assert calib["flat"]["level"] == pytest.approx(1.0, abs=1e-6)


# ----------------------------------------------------------------------------- raw frames
def test_single_amp_raw_keywords_and_shape(muscat):
    for session, telescope in zip(muscat, ["2m0-01", "2m0-02"]):
        with fits.open(raw_path(session)) as hdul:
            assert len(hdul) == 2 and len(hdul[0].header) < 6  # empty primary
            header, data = hdul[1].header, hdul[1].data
        assert data.dtype == np.uint16 and data.shape == (256, 256 + 32)
        assert SHARED | PER_AMP <= set(header)
        assert header["TELESCOP"] == telescope
        assert header["BIASSEC"] == "[257:288,1:256]"
        assert header["DATASEC"] == header["TRIMSEC"] == header["DETSEC"] == "[1:256,1:256]"
        assert (header["OBSTYPE"], header["BUNIT"], header["CCDSUM"], header["RLEVEL"]) == ("EXPOSE", "adu", "1 1", 0)
        assert header["MAXLIN"] < header["SATURATE"] < 65535
        assert 30 <= header["EXPTIME"] <= 120


def test_raw_is_lossless_row_tiled_rice_and_bit_exact(muscat):
    session = muscat[1]
    with fits.open(raw_path(session), disable_image_compression=True) as hdul:
        table = hdul[1].header
        assert table["ZCMPTYPE"] == "RICE_1" and "ZQUANTIZ" not in table
        assert (table["ZTILE1"], table["ZTILE2"]) == (256 + 32, 1)
    spec = SynthSpec(sessions=2, size=256, frames=3, seed=7)
    model = draw_session(spec, 1)
    raw_rng = rng(spec.seed, Stream.RAW, 1)
    sky, stars = scene_e(model)
    expected = raw_amplifiers(model, expose(model, sky + stars, raw_rng), raw_rng)
    with fits.open(raw_path(session)) as hdul:
        np.testing.assert_array_equal(hdul[1].data, expected[0])


@pytest.mark.parametrize("which", ["muscat", "mosaic"])
def test_overscan_level_and_noise(which, muscat, mosaic):
    session = muscat[0] if which == "muscat" else mosaic
    _, params = truth(session)
    with fits.open(raw_path(session)) as hdul:
        for hdu, amp in zip(hdul[1:], params["amps"], strict=True):
            overscan = hdu.data[Section.parse(hdu.header["BIASSEC"]).slices].astype(float)
            sigma_adu = amp["rdnoise"] / amp["gain"]
            assert overscan.mean() == pytest.approx(amp["overscan_level"], abs=4 * sigma_adu / np.sqrt(overscan.size))
            assert overscan.std() == pytest.approx(sigma_adu, rel=0.05)
            assert 950 <= amp["overscan_level"] <= 1050


@pytest.mark.parametrize("which", ["muscat3", "muscat4", "mosaic"])
def test_calibration_formula_recovers_scene(which, muscat, mosaic):
    session = {"muscat3": muscat[0], "muscat4": muscat[1], "mosaic": mosaic}[which]
    pull, trusted = pulls(session)
    mask = fits.getdata(session / "data" / f"{session.name}_mask.fits.fz")
    background = trusted & (mask == 1)
    assert background.sum() > 0.5 * background.size
    assert abs(pull[background].mean()) < 0.03
    assert pull[background].std() == pytest.approx(1.0, abs=0.03)
    assert np.abs(pull[trusted]).max() < 6.0  # stars too: every amplifier landed where it belongs


def test_mosaic_amplifiers_really_are_flipped(mosaic):
    with fits.open(raw_path(mosaic)) as hdul:
        detsecs = [Section.parse(h.header["DETSEC"]) for h in hdul[1:]]
    assert [(s.flip_x, s.flip_y) for s in detsecs] == [(False, False), (True, False), (False, True), (True, True)]
    unflipped, trusted = pulls(mosaic, flip=False)
    assert np.abs(unflipped[trusted]).max() > 50  # ignoring the flips misplaces stars and bias structure


def test_saturated_pixels_read_saturate(muscat, mosaic):
    for session in (muscat[0], mosaic):
        t, params = truth(session)
        adu = assemble_raw(session)["adu"]
        assert t["saturated"].sum() == params["n_saturated"] > 0
        assert np.all(adu[t["saturated"]] == params["saturate"])
        assert np.all(adu[~t["saturated"]] < params["saturate"])


def test_mosaic_headers_use_inheritance(tmp_path):
    session = write_archive(tmp_path, SynthSpec(sessions=1, size=128, frames=1, amps=8, overscan=8))[0]
    with fits.open(raw_path(session)) as hdul:
        primary = hdul[0].header
        assert hdul[0].data is None and SHARED <= set(primary)
        assert primary["INSTRUME"] == "mosaic" and primary["DETSIZE"] == "[1:128,1:128]"
        assert [h.header["EXTNAME"] for h in hdul[1:]] == [f"im{n}" for n in range(1, 9)]
        gains = []
        for hdu in hdul[1:]:
            assert set(hdu.header) - STRUCTURAL == PER_AMP | {"INHERIT"}
            assert hdu.header["INHERIT"] is True
            assert hdu.data.shape == (64, 32 + 8)
            gains.append(hdu.header["GAIN"])
    assert len(set(gains)) == 8
    assert all(0.95 * primary["GAIN"] <= g <= 1.05 * primary["GAIN"] for g in gains)


# ----------------------------------------------------------------------------- masters & products
def test_masters_match_truth(muscat):
    session = muscat[0]
    t, _ = truth(session)

    def sci(kind):
        return fits.getdata(session / "calib" / f"{kind}_{session.name}.fits.fz", 1)

    np.testing.assert_allclose(sci("BIAS"), t["bias_e"], atol=0.05)
    np.testing.assert_allclose(sci("DARK"), t["dark_e_per_s"], atol=1e-3)
    flat = sci("SKYFLAT")
    np.testing.assert_allclose(flat, t["flat"], atol=1e-3)
    assert flat[64:192, 64:192].mean() == pytest.approx(1.0, abs=1e-4)
    assert flat.min() < 0.2 and np.array_equal(flat < 0.2, t["low_flat"])
    assert 0.005 < np.std(flat[64:192, 64:192] / t["flat"][64:192, 64:192].mean()) < 0.05
    bpm = sci("BPM")
    assert np.array_equal(bpm == 1, t["bad_pixels"]) and np.all(bpm <= 1)
    assert t["bad_pixels"].all(axis=0).sum() == 2 and t["bad_pixels"].sum() == 2 * 256
    assert t["hot_pixels"].any() and np.all(t["dark_e_per_s"][t["hot_pixels"]] > 0.3)


def test_muscat4_bias_is_muscat3_rotated(muscat):
    bias3, bias4 = truth(muscat[0])[0]["bias_e"], truth(muscat[1])[0]["bias_e"]
    np.testing.assert_array_equal(bias4, np.rot90(bias3, 2))
    assert not np.allclose(bias4, bias3, atol=1.0)


def test_products_follow_from_raw(muscat):
    session = muscat[0]
    t, params = truth(session)
    raw = assemble_raw(session)
    data = session / "data"
    os_adu = raw["adu"] - raw["overscan"]
    np.testing.assert_allclose(fits.getdata(data / f"{session.name}_os.fits.fz"), os_adu, atol=0.5)
    calibrated = (os_adu * raw["gain"] - t["bias_e"] - t["dark_e_per_s"] * params["exptime"]) / t["flat"]
    np.testing.assert_allclose(
        fits.getdata(data / f"{session.name}_calib.fits.fz"), calibrated / params["gain_nominal"], atol=1.0
    )
    e91 = [fits.getdata(p, "SCI") for p in sorted((session / "e91").glob("*.fits.fz"))]
    np.testing.assert_allclose(fits.getdata(data / f"{session.name}_mean.fits.fz"), np.mean(e91, axis=0), atol=1.0)


def test_source_mask_from_true_stars(muscat):
    session = muscat[0]
    t, params = truth(session)
    sky = params["sky"]
    centre = (params["size"] - 1) / 2
    y, x = np.mgrid[: params["size"], : params["size"]] - centre
    sky_e = sky["level_e"] + sky["slope_e_per_px"][0] * y + sky["slope_e_per_px"][1] * x
    star_e = t["scene_e"] - sky_e
    mask = fits.getdata(session / "data" / f"{session.name}_mask.fits.fz")
    assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 1}
    assert np.all(mask[star_e > np.sqrt(sky_e)] == 0)
    assert np.all(mask[star_e < 0.25 * np.sqrt(sky_e)] == 1)
    assert 300 <= sky_e.min() and sky_e.max() <= 2000


# ----------------------------------------------------------------------------- e91 frames
def sky_adu(params: dict, shift=(0.0, 0.0)) -> np.ndarray:
    """The true background in ADU with its gradient evaluated at shifted coordinates."""
    sky, size = params["sky"], params["size"]
    y, x = np.mgrid[:size, :size] - (size - 1) / 2
    y, x = y - shift[0], x - shift[1]
    level_e = sky["level_e"] + sky["slope_e_per_px"][0] * y + sky["slope_e_per_px"][1] * x
    return level_e / params["gain_nominal"]


def test_e91_frames(muscat):
    session = muscat[0]
    t, params = truth(session)
    source = fits.getdata(session / "data" / f"{session.name}_mask.fits.fz") == 0
    far_from_stars = ~ndimage.binary_dilation(source, iterations=8)
    for k, path in enumerate(sorted((session / "e91").glob("*.fits.fz"))):
        with fits.open(path) as hdul:
            assert [h.name for h in hdul[1:]] == ["SCI", "BPM", "ERR"]
            header = hdul["SCI"].header
            sci, bpm, err = hdul["SCI"].data, hdul["BPM"].data, hdul["ERR"].data
        assert header["EXPTIME"] == params["exptime"] and header["GAIN"] == params["gain_nominal"]
        assert header["BUNIT"] == "adu"
        assert (header["INSTRUME"], header["FILTER"], header["RLEVEL"]) == ("muscat3", "g", 91)
        assert sci.dtype == err.dtype == np.float32 and bpm.dtype == np.uint8
        assert np.array_equal(bpm & 1 == 1, t["bad_pixels"])
        assert np.array_equal(bpm & 4 == 4, t["low_flat"])
        assert not np.any(bpm & ~np.uint8(7)) and np.any(bpm & 2)  # the bright stars saturate
        hits = t["e91_cosmic_rays"][t["e91_cosmic_rays"][:, 0] == k]
        assert len(hits) > 0
        pull = (sci - sky_adu(params, t["drift"][k])) / err
        assert np.median(pull[hits[:, 1], hits[:, 2]]) > 10  # cosmic rays are there, unflagged
        background = far_from_stars & (bpm == 0) & ~t["hot_pixels"]
        background[hits[:, 1], hits[:, 2]] = False
        assert abs(pull[background].mean()) < 0.05
        assert pull[background].std() == pytest.approx(1.0, abs=0.03)  # no PRNU left, ERR right
    dates = [fits.getheader(p, "SCI")["DATE-OBS"] for p in sorted((session / "e91").glob("*.fits.fz"))]
    assert dates == sorted(set(dates)) and dates[0] > info_date(session)


def info_date(session: Path) -> str:
    return json.loads((session / "info.json").read_text())["date_obs"]


def test_e91_drift_matches_star_centroids(tmp_path):
    session = write_archive(tmp_path, SynthSpec(sessions=1, size=512, frames=3, seed=5))[0]
    t, params = truth(session)
    yx, flux = t["star_yx"], t["star_flux_e"]
    radius = 2 * params["psf"]["fwhm_px"]

    def usable(i):
        y, x = np.rint(yx[i]).astype(int)
        near = (np.hypot(*(yx - yx[i]).T) < 25) & (np.arange(len(flux)) != i)
        return (
            np.all((yx[i] > 30) & (yx[i] < 482))
            and not t["saturated"][y - 8 : y + 9, x - 8 : x + 9].any()
            and not np.any(flux[near] > 0.01 * flux[i])
            and not t["bad_pixels"][y, x - 12 : x + 13].any()
        )

    star = next(i for i in np.argsort(flux)[::-1] if usable(i))
    assert flux[star] > 3e5
    reference = centroid(t["scene_e"], yx[star], radius)
    assert np.allclose(reference, yx[star], atol=0.02)
    for k, path in enumerate(sorted((session / "e91").glob("*.fits.fz"))):
        sci = fits.getdata(path, "SCI")
        moved = centroid(sci, yx[star] + t["drift"][k], radius) - reference
        np.testing.assert_allclose(moved, t["drift"][k], atol=0.05)
    assert t["drift"].shape == (3, 2) and np.all(np.abs(t["drift"]) <= 4.0)
    assert len(np.unique(np.round(t["drift"], 6))) == 6  # real-valued, all different


def test_scene_shift_convention():
    """Content at (y, x) unshifted appears at (y + dy, x + dx): checked on integer shifts."""
    from pipeline.synth import scene

    sky = scene.Sky(1000.0, (0.7, -1.3))
    psf = scene.Moffat(4.0, 3.0)
    stars = scene.Stars(np.array([[30.2, 40.7], [50.0, 20.5]]), np.array([1e5, 3e4]))
    for render in (lambda s: scene.sky_e(96, sky, s), lambda s: scene.stars_e(96, stars, psf, s)):
        np.testing.assert_allclose(render((3.0, -2.0))[3:, :-2], render((0.0, 0.0))[:-3, 2:], rtol=1e-5, atol=1e-3)
    image = scene.stars_e(96, stars, psf)
    assert image.sum() == pytest.approx(stars.flux_e.sum(), rel=0.01)
    assert np.allclose(centroid(image, stars.yx[0], 8.0), stars.yx[0], atol=0.01)


# ----------------------------------------------------------------------------- determinism & spec
def _contents(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_deterministic_from_seed(tmp_path):
    spec = SynthSpec(sessions=2, size=64, frames=2, amps=2, overscan=8, seed=3)
    write_archive(tmp_path / "a", spec)
    write_archive(tmp_path / "b", spec, workers=2)
    write_archive(tmp_path / "c", SynthSpec(sessions=2, size=64, frames=2, amps=2, overscan=8, seed=4))
    a, b = _contents(tmp_path / "a"), _contents(tmp_path / "b")
    assert a.keys() == b.keys() and [k for k in a if a[k] != b[k]] == []  # every byte, truth included
    other = fits.getdata(next((tmp_path / "c").rglob("*_000_raw.fits.fz")), 1)
    mine = fits.getdata(next((tmp_path / "a").rglob("*_000_raw.fits.fz")), 1)
    assert not np.array_equal(other, mine)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"amps": 3},
        {"amps": 0},
        {"size": 70, "amps": 8},
        {"size": 30},
        {"sessions": 0},
        {"frames": 0},
        {"seed": -1},
        {"overscan": 0},
        {"max_drift": -1.0},
        {"max_drift": 100.0, "size": 128},
        {"size": 256.0},
        {"amps": True},
    ],
)
def test_spec_validation(kwargs):
    with pytest.raises(ValueError):
        SynthSpec(**kwargs)


def test_interrupted_write_leaves_nothing_under_the_final_name(tmp_path, monkeypatch):
    from pipeline.synth import files

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np.lib.format, "write_array", crash)
    with pytest.raises(OSError, match="disk full"):
        files.write_npz(tmp_path / "truth.npz", {"a": np.zeros(3)})
    assert list(tmp_path.iterdir()) == []


def test_spec_accepts_all_amp_grids():
    for amps in (1, 2, 4, 8):
        assert SynthSpec(amps=amps, size=64).grid[0] * SynthSpec(amps=amps, size=64).grid[1] == amps
