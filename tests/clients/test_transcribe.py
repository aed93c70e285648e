"""rechka-transcribe: whole files through the real models in-process (tiny GigaAM checkpoint, CPU), files parsed
back; several files side by side; bad arguments."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from clients import formats
from clients.transcribe import main

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
CHECKPOINT = REPO / "tests" / "assets" / "tiny_gigaam_ctc.ckpt"
FIRST, SECOND, THIRD = "один два три", "четыре пять", "привет пока спасибо"


def words(text: str) -> list[str]:
    return re.findall(r"[а-яё]+", text.lower())


def test_files_are_transcribed_in_process_with_speakers_into_every_format(speech_wav, tmp_path: Path,
                                                                         capsys) -> None:
    one, _ = speech_wav([(FIRST, "ru"), (SECOND, "ru")], gap=1.0, name="one.wav")
    two, _ = speech_wav([(THIRD, "ru")], name="two.wav")
    out = tmp_path / "out"
    code = main([str(one), str(two), "--out-dir", str(out), "--asr-model", str(CHECKPOINT), "--device", "cpu",
                 "--asr-batch", "4"])
    assert code == 0, capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{s}.{k}" for s in ("one", "two")
                                                           for k in ("json", "srt", "vtt", "rttm", "txt"))
    for stem, spoken in (("one", FIRST + " " + SECOND), ("two", THIRD)):
        doc = json.loads((out / f"{stem}.json").read_text())
        heard = [w for f in doc["finals"] for w in words(f["text"])]
        assert heard == words(spoken), [f["text"] for f in doc["finals"]]
        assert doc["mode"] == "whole-file" and doc["speakers"] and doc["end"]["audio_seconds"] > 1
        cues = formats.parse_srt((out / f"{stem}.srt").read_text())
        assert [w for c in cues for w in words(c.text)] == heard
        assert all(c.speaker and re.fullmatch(r"S\d+", c.speaker) for c in cues)
        assert formats.parse_vtt((out / f"{stem}.vtt").read_text())
        assert all(t.speaker.startswith("S") for _, t in formats.parse_rttm((out / f"{stem}.rttm").read_text()))
        txt = (out / f"{stem}.txt").read_text().splitlines()
        assert [w for line in txt for w in words(line.split("] ", 1)[1])] == heard
    assert "RTF" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["missing.wav", "--out-dir", "x"], "no such file"),
    (["{wav}", "--out-dir", "x", "--formats", "docx"], "unknown output format"),
    (["{wav}", "--out-dir", "x", "--asr-batch", "0"], "--asr-batch"),
])
def test_bad_arguments_exit_2_with_a_reason(argv: list[str], message: str, tmp_path: Path, capsys) -> None:
    wav = tmp_path / "a.wav"
    wav.write_bytes(b"")
    with pytest.raises(SystemExit) as exit_info:
        main([a.replace("{wav}", str(wav)) for a in argv])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
