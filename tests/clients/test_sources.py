"""clients.sources: ffmpeg decoding (resampling, channels, errors), the replay buffer, pacing and the mic message."""

from __future__ import annotations

import asyncio
import builtins
import subprocess
from pathlib import Path

import numpy as np
import pytest

from clients import sources
from clients.sources import FileSource, FrameFormat, MicSource, Pacer, ReplayBuffer, SourceError


def collect(source: FileSource) -> bytes:
    async def run() -> bytes:
        return b"".join([c async for c in source.chunks()])

    return asyncio.run(run())


def test_file_is_resampled_to_16k_mono_in_whole_frame_chunks(tmp_path: Path) -> None:
    path = tmp_path / "tone.ogg"  # a compressed 44.1 kHz stereo file with a 440 Hz tone
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100:duration=1.5",
                    "-ac", "2", "-c:a", "libvorbis", str(path)], check=True)
    source = FileSource(path, chunk_ms=100)
    assert source.format == FrameFormat("pcm_s16le", 16000, 1)
    chunks: list[bytes] = []

    async def run() -> None:
        async for c in source.chunks():
            chunks.append(c)

    asyncio.run(run())
    assert all(len(c) == 3200 for c in chunks[:-1]) and len(chunks[-1]) % 2 == 0
    x = np.frombuffer(b"".join(chunks), "<i2").astype(np.float64)
    assert abs(len(x) - 24000) <= 400
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    assert abs(np.argmax(spectrum) * 16000 / len(x) - 440) < 2


def test_multichannel_keeps_channels(tmp_path: Path) -> None:
    path = tmp_path / "three.wav"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "anullsrc=r=8000:cl=3.0", "-t", "0.5",
                    str(path)], check=True)
    source = FileSource(path, multichannel=True)
    assert source.format.channels == 3 and source.format.frame_bytes == 6
    assert len(collect(source)) == 8000 * 6


def test_missing_and_undecodable_files_raise_source_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no such file"):
        FileSource(tmp_path / "absent.wav")
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"this is not audio" * 10)
    with pytest.raises(SourceError, match="cannot read audio|could not decode"):
        collect(FileSource(junk, multichannel=True))
    with pytest.raises(SourceError, match="could not decode"):
        collect(FileSource(junk))


def test_missing_ffmpeg_is_explained(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sources.shutil, "which", lambda name: None)
    path = tmp_path / "x.wav"
    path.write_bytes(b"")
    with pytest.raises(SourceError, match="install ffmpeg"):
        collect(FileSource(path))


def test_mic_without_sounddevice_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def fake_import(name: str, *args, **kwargs):  # type: ignore[no-untyped-def]
        if name == "sounddevice":
            raise ImportError("No module named 'sounddevice'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(SourceError, match=r"rechka\[mic\]"):
        MicSource()


def test_frame_format_conversions() -> None:
    mulaw = FrameFormat("mulaw", 8000, 2)
    assert mulaw.frame_bytes == 2 and mulaw.frames_to_samples(8000) == 16000
    assert mulaw.samples_to_frames(16000) == 8000 and mulaw.frames_for_ms(20) == 160
    with pytest.raises(ValueError, match="encoding"):
        FrameFormat("opus")


def test_replay_buffer_addresses_frames_and_bounds_memory() -> None:
    buf = ReplayBuffer(frame_bytes=2, max_frames=4)
    buf.append(b"aabbcc")
    assert (buf.start, buf.end) == (0, 3) and buf.read(1, 5) == b"bbcc"
    buf.append(b"ddee")  # 5 frames > 4: the oldest is dropped
    assert (buf.start, buf.end, buf.dropped) == (1, 5, 1) and buf.read(1, 2) == b"bbcc"
    buf.discard_before(3)
    assert buf.read(3, 10) == b"ddee"
    with pytest.raises(ValueError, match="not retained"):
        buf.read(2, 1)
    with pytest.raises(ValueError, match="whole frames"):
        buf.append(b"x")


def test_pacer_sleeps_until_frames_are_due(monkeypatch: pytest.MonkeyPatch) -> None:
    """Real time: after 0.5 s of frames the pacer asks to sleep about 0.5 s; at speed 2 about half."""
    requested: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        requested.append(seconds)

    monkeypatch.setattr(sources.asyncio, "sleep", fake_sleep)

    async def run(speed: float | None) -> None:
        pacer = Pacer(16000, speed)
        await pacer.wait(8000)

    asyncio.run(run(1.0))
    asyncio.run(run(2.0))
    asyncio.run(run(None))
    assert len(requested) == 2
    assert 0.45 < requested[0] <= 0.5 and 0.2 < requested[1] <= 0.25
    with pytest.raises(ValueError, match="speed"):
        Pacer(16000, 0)
