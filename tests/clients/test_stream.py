"""The rechka-stream CLI against the scripted server: output files parsed back, exit codes, messages."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from streaming import wire

from clients import formats
from clients.stream import main

S = wire.SAMPLE_RATE
REPO = Path(__file__).resolve().parents[2]


def test_cli_writes_every_format_consistently(scripted_server, counting_wav, tmp_path: Path, capsys) -> None:
    server = scripted_server()
    wav = counting_wav(3, name="talk.wav")
    code = main([str(wav), "--url", server.url, "--as-fast-as-possible", "--out-dir", str(tmp_path / "out"),
                 "--no-live"])
    assert code == 0
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["talk.json", "talk.rttm", "talk.srt", "talk.txt", "talk.vtt"]
    doc = json.loads((out / "talk.json").read_text())
    texts = [f["text"] for f in doc["finals"]]
    assert texts == ["1000", "1001", "1002"] and doc["complete"] is True and doc["end"]["audio_seconds"] == 3.0
    srt = formats.parse_srt((out / "talk.srt").read_text())
    vtt = formats.parse_vtt((out / "talk.vtt").read_text())
    expected = [(k * S, (k + 1) * S, t, f"S{1 + int(t) % 2}") for k, t in enumerate(texts)]
    assert [(c.start, c.end, c.text, c.speaker) for c in srt] == expected
    assert [(c.start, c.end, c.text, c.speaker) for c in vtt] == expected
    rttm = formats.parse_rttm((out / "talk.rttm").read_text())
    assert [(f, t.speaker, t.start, t.end) for f, t in rttm] == [("talk", s, a, b) for a, b, _, s in expected]
    txt = (out / "talk.txt").read_text().splitlines()
    assert txt[1] == "[00:00:01.000 - 00:00:02.000] S2: 1001"
    printed = capsys.readouterr().out
    assert "[00:01.000] S2  1001" in printed and "● done" in printed


def test_cli_applies_speaker_revisions_to_the_view_and_every_format(scripted_server, counting_wav, tmp_path: Path,
                                                                    capsys) -> None:
    server = scripted_server(revise=True)
    wav = counting_wav(3, name="talk.wav")
    assert main([str(wav), "--url", server.url, "--as-fast-as-possible", "--out-dir", str(tmp_path), "--no-live"]) == 0
    revised = [(k * S, (k + 1) * S, str(1000 + k), f"S{2 - k % 2}") for k in range(3)]  # S1 <-> S2 swapped
    doc = json.loads((tmp_path / "talk.json").read_text())
    assert [(f["text"], f["speaker"], [w["speaker"] for w in f["words"]]) for f in doc["finals"]] == [
        (t, s, [s]) for _, _, t, s in revised]
    for parse, name in ((formats.parse_srt, "talk.srt"), (formats.parse_vtt, "talk.vtt")):
        assert [(c.start, c.end, c.text, c.speaker) for c in parse((tmp_path / name).read_text())] == revised
    rttm = formats.parse_rttm((tmp_path / "talk.rttm").read_text())
    assert [(t.speaker, t.start, t.end) for _, t in rttm] == [(s, a, b) for a, b, _, s in revised]
    assert (tmp_path / "talk.txt").read_text().splitlines()[0] == "[00:00:00.000 - 00:00:01.000] S2: 1000"
    printed = capsys.readouterr().out.splitlines()
    assert "[00:00.000] S1  1000" in printed and "↻ [00:00.000] S2  1000" in printed  # the line, then its correction


def test_cli_applies_a_speaker_merge_to_the_view_and_every_format(scripted_server, counting_wav, tmp_path: Path,
                                                                  capsys) -> None:
    server = scripted_server(merge=True)  # finals alternate S1/S2, then S1 is merged into S2
    wav = counting_wav(4, name="talk.wav")
    assert main([str(wav), "--url", server.url, "--as-fast-as-possible", "--out-dir", str(tmp_path), "--no-live"]) == 0
    merged = [(k * S, (k + 1) * S, str(1000 + k), "S2") for k in range(4)]
    doc = json.loads((tmp_path / "talk.json").read_text())
    assert [(f["text"], f["speaker"], [w["speaker"] for w in f["words"]]) for f in doc["finals"]] == [
        (t, "S2", ["S2"]) for _, _, t, _ in merged]
    assert doc["speakers"] == ["S2"] and doc["end"]["speakers"] == ["S2"]
    for parse, name in ((formats.parse_srt, "talk.srt"), (formats.parse_vtt, "talk.vtt")):
        assert [(c.start, c.end, c.text, c.speaker) for c in parse((tmp_path / name).read_text())] == merged
    rttm = formats.parse_rttm((tmp_path / "talk.rttm").read_text())
    assert [(t.speaker, t.start, t.end) for _, t in rttm] == [("S2", 0, 4 * S)]  # one speaker, one merged turn
    assert [line.split("] ", 1)[1] for line in (tmp_path / "talk.txt").read_text().splitlines()] == [
        f"S2: {1000 + k}" for k in range(4)]
    printed = capsys.readouterr().out.splitlines()
    assert "[00:00.000] S1  1000" in printed and "↻ S1 is S2: lines above labelled S1 are S2's" in printed


def test_cli_reports_a_refusal_and_exits_1(scripted_server, counting_wav, tmp_path: Path, capsys) -> None:
    server = scripted_server(token="secret")
    code = main([str(counting_wav(1)), "--url", server.url, "--out-dir", str(tmp_path), "--no-live",
                 "--as-fast-as-possible"])
    assert code == 1
    assert "--token" in capsys.readouterr().out
    assert not list(tmp_path.glob("*.srt"))  # nothing transcribed, nothing written


@pytest.mark.parametrize("argv, words", [
    ([], "either a FILE or --mic"), (["x.wav", "--mic"], "either a FILE or --mic"),
    (["x.wav", "--speed", "0"], "--speed"), (["x.wav", "--formats", "srt,doc"], "unknown output format doc"),
    (["x.wav", "--url", "http://h/v1/stream"], "ws://"), (["x.wav", "--max-speakers", "0"], "--max-speakers"),
])
def test_bad_arguments_exit_2_with_a_reason(argv: list[str], words: str, capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert words in capsys.readouterr().err


def test_module_entry_point_streams_to_a_pipe(scripted_server, counting_wav, tmp_path: Path) -> None:
    server = scripted_server()
    wav = counting_wav(2, name="pipe.wav")
    proc = subprocess.run([sys.executable, "-m", "clients.stream", str(wav), "--url", server.url, "--speed", "20",
                           "--formats", "txt", "--out-dir", str(tmp_path)], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[:2] == ["[00:00.000] S1  1000", "[00:01.000] S2  1001"]
    assert (tmp_path / "pipe.txt").read_text().count("\n") == 2


def test_ctrl_c_stops_the_audio_and_keeps_the_finals(scripted_server, counting_wav, tmp_path: Path) -> None:
    server = scripted_server()
    wav = counting_wav(30, name="long.wav")
    proc = subprocess.Popen([sys.executable, "-m", "clients.stream", str(wav), "--url", server.url,
                             "--formats", "json", "--out-dir", str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    try:
        first = proc.stdout.readline()  # real time: the first final arrives after about a second
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"the client did not stop within 120 s of Ctrl-C:\n{out}\n{err}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out + err
    assert first.startswith("[00:00.000] S1  1000") and "stopping" in out
    doc = json.loads((tmp_path / "long.json").read_text())
    assert doc["complete"] is True and 1 <= len(doc["finals"]) < 30  # stopped early, finals kept
    assert doc["end"]["audio_seconds"] < 30
