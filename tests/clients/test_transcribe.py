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


def test_rechka_transcribe_applies_speaker_merges_to_every_file(tmp_path: Path) -> None:
    """The whole-file path (``transcribe`` → ``drive_whole`` → ``LiveCaptions`` → ``write_outputs``) with fake models:
    one voice founds a second label that is merged back, and no output file shows the retired label."""
    import dataclasses
    import wave
    from types import SimpleNamespace

    import numpy as np

    from clients.stream import write_outputs
    from clients.transcribe import transcribe
    from streaming.config import DiarizationOptions, SessionConfig
    from tests.fakes import FakeAsr, FakeVad
    from tests.fakes_diarization import (SPREAD_MERGE, SPREAD_VOICE, SPREAD_VOICE_LENGTH, FakeSegmentation, spread_voice,
                                         synthesize)

    audio = synthesize(SPREAD_VOICE, SPREAD_VOICE_LENGTH)
    path = tmp_path / "voice.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes((audio * 32767).astype("<i2").tobytes())
    models = SimpleNamespace(vad=SimpleNamespace(run_batch=FakeVad()), asr=SimpleNamespace(run_batch=FakeAsr()),
                             segmentation=SimpleNamespace(run_batch=FakeSegmentation()),
                             embedding=SimpleNamespace(run_batch=spread_voice()))
    diarizer = dataclasses.replace(DiarizationOptions(), **SPREAD_MERGE)
    config = SessionConfig(interim_results=False, diarization=True, speaker_turns=True, diarizer=diarizer)
    (captions,) = transcribe([path], models, config)
    assert captions.merges >= 1 and captions.speakers == ["S1"] and captions.end is not None
    write_outputs(captions, tmp_path / "out", "voice")
    files = {p.suffix: p.read_text() for p in (tmp_path / "out").iterdir()}
    assert sorted(files) == [".json", ".rttm", ".srt", ".txt", ".vtt"]
    assert all("S2" not in text for text in files.values())
    assert json.loads(files[".json"])["speakers"] == ["S1"]
    assert [f["text"] for f in json.loads(files[".json"])["finals"]] == ["w300", "w500", "w300"]
    assert {t.speaker for _, t in formats.parse_rttm(files[".rttm"])} == {"S1"}
    assert np.isclose(sum(t.end - t.start for _, t in formats.parse_rttm(files[".rttm"])) / 16000, 22.5, atol=1.5)


def test_whole_files_diarize_at_twice_the_live_step_unless_told() -> None:
    from types import SimpleNamespace

    from clients.transcribe import WHOLE_FILE_STEP, session_config
    from streaming.config import DiarizationOptions, ms

    models = SimpleNamespace(segmentation=SimpleNamespace(window=ms(5000)), embedding=SimpleNamespace())
    live = DiarizationOptions().step
    assert session_config(models).diarizer.step == ms(1000 * WHOLE_FILE_STEP) == 2 * live
    assert session_config(models, step=None).diarizer.step == live
    config = session_config(models, step=0.5)
    assert config.diarizer.step == live and not config.interim_results and not config.speculative_finals


AMI = Path(__file__).resolve().parents[3] / "shared" / "speech" / "conv" / "ami_ES2004a_60s" / "ami_ES2004a_60s_mix.wav"


@pytest.mark.skipif(not AMI.is_file() or not CHECKPOINT.is_file(), reason="shared/speech or the tiny GigaAM is absent")
def test_the_overlapped_whole_file_driver_gives_the_sequential_events_on_a_real_recording() -> None:
    """A real meeting minute (and its first half as a second file) through the real VAD, diarization and the tiny
    GigaAM, with small chunks, pool and lead so the lanes really run side by side: each kind of event is the
    sequential driver's, and every final has a speaker."""
    from clients.sources import decode_file
    from clients.transcribe import session_config
    from server.models.registry import load_models
    from server.offline import drive_whole, run_requests_by_kind
    from streaming import wire
    from streaming.session import Session
    from streaming.work import AsrRequest, EmbeddingRequest, SegmentationRequest, VadRequest

    models = load_models(str(CHECKPOINT), device="cpu", max_batch=4, threads=1)
    run = run_requests_by_kind({VadRequest: models.vad.run_batch, SegmentationRequest: models.segmentation.run_batch,
                                EmbeddingRequest: models.embedding.run_batch, AsrRequest: models.asr.run_batch})
    config = session_config(models)
    audio = decode_file(AMI)
    runs = {}
    for overlap in (False, True):
        sessions = [Session(f"f{i}", config) for i in range(2)]
        events = drive_whole(sessions, [audio, audio[:len(audio) // 2]], run, chunk_bytes=2 * 16_000 * 4,
                             asr_batch=3, asr_pool=4, overlap=overlap, diarization_lead=8.0)
        runs[overlap] = [{kind: [e for e in es if type(e).__name__ == kind]
                          for kind in ("Final", "SpeakerTurns", "SpeakerMerge", "SpeechStarted", "End")}
                         for es in events]
    assert runs[True] == runs[False]
    finals = runs[True][0]["Final"]
    assert len(finals) >= 5 and all(f.speaker for f in finals)
    assert isinstance(runs[True][1]["End"][0], wire.End) and runs[True][1]["Final"]
