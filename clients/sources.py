"""Audio sources for the clients: any file ffmpeg can read, the microphone, and a replay buffer for reconnects.

Sources yield raw frames in the format they announce (:class:`FrameFormat`) in chunks of whole frames. A file
source can wait (it is not live); a microphone cannot, so :class:`ReplayBuffer` bounds what it keeps.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator, Optional

from streaming import wire

__all__ = [
    "FrameFormat", "SourceError", "FileSource", "MicSource", "Pacer", "PacedSource", "ReplayBuffer",
    "probe_channels",
]

_SAMPLE_BYTES = {"pcm_s16le": 2, "pcm_f32le": 4, "mulaw": 1, "alaw": 1}


class SourceError(RuntimeError):
    """The audio source cannot be opened or read; the message says what to install or fix."""


@dataclass(frozen=True)
class FrameFormat:
    """Raw audio as sent to the server. A frame is one sample of every channel."""

    encoding: str = "pcm_s16le"
    sample_rate: int = wire.SAMPLE_RATE
    channels: int = 1

    def __post_init__(self) -> None:
        if self.encoding not in _SAMPLE_BYTES:
            raise ValueError(f"encoding must be one of {', '.join(_SAMPLE_BYTES)}")
        if self.sample_rate <= 0 or self.channels <= 0:
            raise ValueError("sample_rate and channels must be positive")

    @property
    def frame_bytes(self) -> int:
        return _SAMPLE_BYTES[self.encoding] * self.channels

    def frames_to_samples(self, frames: int) -> int:
        """Frames at this rate → samples at 16 kHz (the protocol's time unit)."""
        return frames * wire.SAMPLE_RATE // self.sample_rate

    def samples_to_frames(self, samples: int) -> int:
        """Samples at 16 kHz → frames at this rate (rounded down)."""
        return samples * self.sample_rate // wire.SAMPLE_RATE

    def frames_for_ms(self, ms: float) -> int:
        return max(1, int(round(self.sample_rate * ms / 1000)))


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise SourceError(f"{tool} is not installed; install ffmpeg (e.g. apt-get install ffmpeg) to stream files")
    return path


def probe_channels(path: Path) -> int:
    """Channel count of the first audio stream of ``path`` (ffprobe)."""
    cmd = [_need("ffprobe"), "-v", "error", "-select_streams", "a:0", "-show_entries", "stream=channels",
           "-of", "json", str(path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    try:
        return int(json.loads(proc.stdout)["streams"][0]["channels"])
    except (ValueError, KeyError, IndexError, TypeError):
        detail = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "no audio stream"
        raise SourceError(f"cannot read audio from {path}: {detail}") from None


def _ffmpeg_command(path: Path, channels: int) -> list[str]:
    """ffmpeg decoding the first audio stream of ``path`` to 16 kHz PCM s16le with ``channels`` on stdout."""
    return [_need("ffmpeg"), "-nostdin", "-v", "error", "-i", str(path), "-map", "0:a:0", "-f", "s16le",
            "-acodec", "pcm_s16le", "-ar", str(wire.SAMPLE_RATE), "-ac", str(channels), "-"]


def decode_file(path: Path) -> bytes:
    """The whole of ``path`` as 16 kHz mono PCM s16le; :class:`SourceError` if it is missing or ffmpeg fails."""
    path = Path(path)
    if not path.is_file():
        raise SourceError(f"no such file: {path}")
    proc = subprocess.run(_ffmpeg_command(path, 1), stdin=subprocess.DEVNULL, capture_output=True)
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip()
        raise SourceError(f"ffmpeg could not decode {path}: {err or 'exit ' + str(proc.returncode)}")
    return proc.stdout[:len(proc.stdout) // 2 * 2]


class FileSource:
    """Decodes a file with an ffmpeg subprocess to 16 kHz PCM s16le, mono or (``multichannel``) all channels."""

    live = False

    def __init__(self, path: Path, multichannel: bool = False, chunk_ms: float = 100.0) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise SourceError(f"no such file: {self.path}")
        channels = probe_channels(self.path) if multichannel else 1
        self.format = FrameFormat("pcm_s16le", wire.SAMPLE_RATE, channels)
        self.chunk_bytes = self.format.frames_for_ms(chunk_ms) * self.format.frame_bytes
        self._proc: Optional[asyncio.subprocess.Process] = None
        self._closed = False

    async def chunks(self) -> AsyncIterator[bytes]:
        """Yield chunks of whole frames until the file ends; raise :class:`SourceError` if ffmpeg fails."""
        cmd = _ffmpeg_command(self.path, self.format.channels)
        self._proc = proc = await asyncio.create_subprocess_exec(
            *cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert proc.stdout is not None and proc.stderr is not None
        try:
            while not self._closed:
                try:
                    data = await proc.stdout.readexactly(self.chunk_bytes)
                except asyncio.IncompleteReadError as e:
                    data = e.partial[: len(e.partial) - len(e.partial) % self.format.frame_bytes]
                    if data and not self._closed:
                        yield data
                    break
                if self._closed:
                    break
                yield data
            err = (await proc.stderr.read()).decode(errors="replace").strip()
            if await proc.wait() != 0 and not self._closed:
                raise SourceError(f"ffmpeg could not decode {self.path}: {err or 'exit ' + str(proc.returncode)}")
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()

    def close(self) -> None:
        """Stop early, as if the file ended here (the chunk being read is dropped)."""
        self._closed = True
        if self._proc is not None and self._proc.returncode is None:
            self._proc.kill()  # not terminate: ffmpeg blocked on a full pipe would never see it


class MicSource:
    """The default microphone via ``sounddevice`` (``pip install 'rechka[mic]'``), 16 kHz s16le mono."""

    live = True

    def __init__(self, chunk_ms: float = 100.0, device: Optional[str] = None) -> None:
        try:
            import sounddevice  # noqa: F401  (optional dependency, imported only for --mic)
        except ImportError:
            raise SourceError("--mic needs the sounddevice package: pip install 'rechka[mic]' "
                              "(and the PortAudio library, e.g. apt-get install libportaudio2)") from None
        except OSError as e:  # PortAudio missing
            raise SourceError(f"sounddevice cannot load PortAudio ({e}); install libportaudio2") from None
        self.format = FrameFormat("pcm_s16le", wire.SAMPLE_RATE, 1)
        self.chunk_frames = self.format.frames_for_ms(chunk_ms)
        self.device = device
        self._closed = asyncio.Event()

    async def chunks(self) -> AsyncIterator[bytes]:
        import sounddevice

        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[bytes] = asyncio.Queue()

        def callback(data: object, frames: int, time: object, status: object) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, bytes(data))  # type: ignore[call-overload]

        stream = sounddevice.RawInputStream(samplerate=self.format.sample_rate, channels=1, dtype="int16",
                                            blocksize=self.chunk_frames, device=self.device, callback=callback)
        with stream:
            while not self._closed.is_set():
                getter = asyncio.ensure_future(queue.get())
                closer = asyncio.ensure_future(self._closed.wait())
                done, _ = await asyncio.wait({getter, closer}, return_when=asyncio.FIRST_COMPLETED)
                closer.cancel()
                if getter in done:
                    yield getter.result()
                else:
                    getter.cancel()

    def close(self) -> None:
        """Stop capturing; the stream then ends normally (finals are flushed)."""
        self._closed.set()


class Pacer:
    """Sleeps so that frames go out at ``speed`` × real time; after a stall longer than ``max_burst`` seconds it
    restarts its clock instead of bursting to catch up."""

    def __init__(self, sample_rate: int, speed: Optional[float], max_burst: float = 1.0) -> None:
        if speed is not None and speed <= 0:
            raise ValueError("speed must be > 0 (or None for as fast as possible)")
        self.sample_rate = sample_rate
        self.speed = speed
        self.max_burst = max_burst
        self._base: Optional[float] = None
        self._frames = 0

    async def wait(self, frames: int) -> None:
        """Account for ``frames`` more frames, sleeping until they are due."""
        if self.speed is None:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self._base is None:
            self._base = now
        self._frames += frames
        due = self._base + self._frames / (self.sample_rate * self.speed)
        if due > now:
            await asyncio.sleep(due - now)
        elif now - due > self.max_burst:
            self._base = now - self._frames / (self.sample_rate * self.speed)


class PacedSource:
    """Wraps a source so its chunks come out at ``speed`` × real time (``None``: as fast as they are read)."""

    def __init__(self, source: "FileSource | MicSource", speed: Optional[float]) -> None:
        self.source = source
        self.format = source.format
        self.live = source.live
        self._pacer = Pacer(source.format.sample_rate, speed)

    async def chunks(self) -> AsyncIterator[bytes]:
        async for chunk in self.source.chunks():
            await self._pacer.wait(len(chunk) // self.format.frame_bytes)
            yield chunk

    def close(self) -> None:
        self.source.close()


class ReplayBuffer:
    """Bytes of whole frames addressed by absolute frame index, kept for resending after a reconnect.

    Holds at most ``max_frames``; older frames are dropped first (:attr:`dropped` counts them).
    """

    def __init__(self, frame_bytes: int, max_frames: int) -> None:
        if frame_bytes <= 0 or max_frames <= 0:
            raise ValueError("frame_bytes and max_frames must be positive")
        self.frame_bytes = frame_bytes
        self.max_frames = max_frames
        self.start = 0  # oldest retained frame
        self.dropped = 0
        self.finished = False
        self._data = bytearray()
        self._changed = asyncio.Event()

    @property
    def end(self) -> int:
        """Frames ever appended."""
        return self.start + len(self._data) // self.frame_bytes

    def append(self, data: bytes) -> None:
        if len(data) % self.frame_bytes:
            raise ValueError(f"audio chunks must hold whole frames of {self.frame_bytes} bytes")
        self._data += data
        excess = len(self._data) // self.frame_bytes - self.max_frames
        if excess > 0:
            self.discard_before(self.start + excess)
            self.dropped += excess
        self._changed.set()

    def finish(self) -> None:
        """No more audio will be appended."""
        self.finished = True
        self._changed.set()

    def read(self, frame: int, max_frames: int) -> bytes:
        """Up to ``max_frames`` frames from absolute ``frame`` (which must be retained)."""
        if frame < self.start or frame > self.end:
            raise ValueError(f"frame {frame} is not retained (have {self.start}..{self.end})")
        a = (frame - self.start) * self.frame_bytes
        return bytes(self._data[a: a + max_frames * self.frame_bytes])

    def discard_before(self, frame: int) -> None:
        n = min(max(0, frame - self.start), len(self._data) // self.frame_bytes)
        del self._data[: n * self.frame_bytes]
        self.start += n

    async def changed(self) -> None:
        """Wait until audio is appended or the buffer is finished."""
        await self._changed.wait()
        self._changed.clear()
