import os
import pathlib

import pytest

from pipeline.errors import InputError
from pipeline.io.discover import SessionError, find_sessions, load_session

from .conftest import SESSION_KEYS


def test_finds_every_session_with_its_products(archive):
    sessions, problems = find_sessions(archive)
    assert problems == []
    assert [s.key for s in sessions] == list(SESSION_KEYS)
    s = sessions[1]
    assert (s.instrument, s.band, s.obs_id) == ("muscat3", "g", "20240315_000_000")
    assert set(s.masters) == {"BIAS", "DARK", "SKYFLAT", "BPM"}
    assert set(s.references) == {"os", "calib", "mean", "mask"}
    assert len(s.e91) == 6 and set(s.metadata) == {"info", "calib"}
    assert s.raw in s.inputs and all(p.exists() for p in s.inputs)


def test_glob_selects_sessions(archive):
    sessions, _ = find_sessions(archive, "muscat*/*")
    assert {s.instrument for s in sessions} == {"muscat3", "muscat4"}


@pytest.mark.parametrize(
    "damage,reason",
    [
        (lambda d: (d / "data" / f"{d.name}_raw.fits.fz").unlink(), "no raw frame"),
        (lambda d: next((d / "calib").glob("DARK_*")).unlink(), "missing calibration: no calib/DARK"),
        (lambda d: (d / "info.json").write_text("{not json"), "info.json: invalid JSON"),
    ],
)
def test_unusable_sessions_are_reported_with_the_reason(archive_copy, damage, reason):
    directory = archive_copy / "muscat3_g" / "20240315_000_000"
    damage(directory)
    with pytest.raises(SessionError, match=reason) as raised:
        load_session(directory)
    assert isinstance(raised.value, InputError)  # the file (or folder) at fault and the reason
    assert str(raised.value) == f"{raised.value.path}: {raised.value.reason}"
    assert raised.value.path.startswith(str(directory)) and not raised.value.reason.startswith(str(directory))
    sessions, problems = find_sessions(archive_copy)
    assert len(sessions) == 2 and problems[0][0] == directory and reason in problems[0][1]


def test_missing_archive_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        find_sessions(tmp_path / "nope")


def _unreadable(monkeypatch, folder):
    """Make ``folder`` unlistable (tests run as root, where chmod does not)."""
    real = os.scandir

    def scandir(path="."):
        if os.fspath(path) == os.fspath(folder):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)


@pytest.mark.parametrize("folder", ["e91", "calib", "data"])
def test_an_unreadable_folder_makes_the_session_fail_rather_than_lose_its_files(archive_copy, monkeypatch, folder):
    directory = archive_copy / "muscat3_g" / "20240315_000_000"
    _unreadable(monkeypatch, directory / folder)
    with pytest.raises(SessionError, match=rf"{folder}: cannot list the folder \(Permission denied\)"):
        load_session(directory)


def test_an_unreadable_info_json_fails_its_session_only(archive_copy, monkeypatch):
    directory = archive_copy / "muscat3_g" / "20240315_000_000"
    info = directory / "info.json"
    real = pathlib.Path.read_text

    def read_text(self, *args, **kwargs):
        if self == info:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "read_text", read_text)
    sessions, problems = find_sessions(archive_copy)
    assert len(sessions) == 2
    assert [(d, reason) for d, reason in problems] == [(directory, f"{info}: cannot read (Permission denied)")]
