"""Audio in: client bytes → float32 channels at 16 kHz, and a bounded per-channel sample buffer.

:class:`AudioDecoder` accepts chunks of any length (a sample or frame split across two chunks is carried over),
decodes PCM s16/f32, G.711 μ-law and A-law, de-interleaves up to 8 channels and resamples each channel to 16 kHz
with its own streaming soxr resampler, so decoding a stream chunk by chunk gives the same samples as decoding it
whole. :class:`AudioBuffer` holds one channel's samples addressed by absolute offset.
"""

from __future__ import annotations

import numpy as np
import soxr

from streaming.config import SAMPLE_RATE, AudioFormat
from streaming.errors import InvalidAudio, UnsupportedFormat
from streaming.wire import ENCODINGS

MIN_RATE = 8000
MAX_RATE = 48000
MAX_CHANNELS = 8

_BYTES_PER_SAMPLE = {"pcm_s16le": 2, "pcm_f32le": 4, "mulaw": 1, "alaw": 1}


def _mulaw_table() -> np.ndarray:
    """ITU-T G.711 μ-law: the 256 code words → linear 16-bit values (±32124), as float32 in [-1, 1)."""
    codes = ~np.arange(256, dtype=np.int32) & 0xFF  # code words are transmitted inverted
    exponent = (codes >> 4) & 0x07
    mantissa = codes & 0x0F
    magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84
    linear = np.where(codes & 0x80, -magnitude, magnitude)
    return (linear / 32768.0).astype(np.float32)


def _alaw_table() -> np.ndarray:
    """ITU-T G.711 A-law: the 256 code words → linear 16-bit values (±32256), as float32 in [-1, 1)."""
    codes = np.arange(256, dtype=np.int32) ^ 0x55  # even bits are transmitted inverted
    exponent = (codes >> 4) & 0x07
    mantissa = codes & 0x0F
    magnitude = np.where(exponent == 0, (mantissa << 4) + 8, ((mantissa << 4) + 0x108) << np.maximum(exponent - 1, 0))
    linear = np.where(codes & 0x80, magnitude, -magnitude)  # in A-law a set sign bit means positive
    return (linear / 32768.0).astype(np.float32)


MULAW_TABLE = _mulaw_table()
ALAW_TABLE = _alaw_table()


def validate_format(fmt: AudioFormat) -> None:
    """Raise :class:`UnsupportedFormat` naming the fix if the server cannot take ``fmt``."""
    if fmt.encoding not in _BYTES_PER_SAMPLE:
        raise UnsupportedFormat(f"unsupported encoding {fmt.encoding!r}; use one of {', '.join(ENCODINGS)}")
    if not MIN_RATE <= fmt.sample_rate <= MAX_RATE:
        raise UnsupportedFormat(f"sample_rate must be between {MIN_RATE} and {MAX_RATE} Hz")
    if not 1 <= fmt.channels <= MAX_CHANNELS:
        raise UnsupportedFormat(f"channels must be between 1 and {MAX_CHANNELS}")


class AudioDecoder:
    """Bytes in the client's :class:`AudioFormat` → ``(channels, n)`` float32 at 16 kHz.

    ``decode(data)`` takes any number of bytes; an incomplete frame at the end waits for the next chunk.
    ``flush()`` ends the stream: it returns the resamplers' remaining output and drops an incomplete frame.
    """

    def __init__(self, fmt: AudioFormat) -> None:
        validate_format(fmt)
        self.format = fmt
        self.channels = fmt.channels
        self._sample_bytes = _BYTES_PER_SAMPLE[fmt.encoding]
        self._frame_bytes = self._sample_bytes * fmt.channels
        self._carry = b""
        self._resamplers = (
            [soxr.ResampleStream(fmt.sample_rate, SAMPLE_RATE, 1, dtype="float32", quality="HQ")
             for _ in range(fmt.channels)]
            if fmt.sample_rate != SAMPLE_RATE else None
        )

    def decode(self, data: bytes) -> np.ndarray:
        """Decode one chunk; raises :class:`InvalidAudio` on NaN or infinite float samples."""
        buf = self._carry + bytes(data)
        usable = len(buf) - len(buf) % self._frame_bytes
        self._carry = buf[usable:]
        interleaved = self._to_float(buf[:usable])
        frames = interleaved.reshape(-1, self.channels).T  # (channels, n) at the client's rate
        return self._resample(frames, last=False)

    def flush(self) -> np.ndarray:
        """The last samples held inside the resamplers (empty at 16 kHz input)."""
        self._carry = b""
        return self._resample(np.zeros((self.channels, 0), dtype=np.float32), last=True)

    def _to_float(self, raw: bytes) -> np.ndarray:
        enc = self.format.encoding
        if enc == "pcm_s16le":
            return np.frombuffer(raw, dtype="<i2").astype(np.float32) / np.float32(32768.0)
        if enc == "pcm_f32le":
            x = np.frombuffer(raw, dtype="<f4").astype(np.float32)
            if not np.isfinite(x).all():
                raise InvalidAudio("pcm_f32le audio contains NaN or infinite samples")
            return x
        codes = np.frombuffer(raw, dtype=np.uint8)
        return (MULAW_TABLE if enc == "mulaw" else ALAW_TABLE)[codes]

    def _resample(self, frames: np.ndarray, last: bool) -> np.ndarray:
        if self._resamplers is None:
            return np.ascontiguousarray(frames, dtype=np.float32)
        outs = [r.resample_chunk(np.ascontiguousarray(frames[c]), last=last) for c, r in enumerate(self._resamplers)]
        n = min(len(o) for o in outs)  # the channels' resamplers run in lockstep; guard anyway
        return np.stack([o[:n] for o in outs]).astype(np.float32, copy=False)


def downmix(channels: np.ndarray) -> np.ndarray:
    """``(channels, n)`` → ``(1, n)``: the mean of the channels."""
    if channels.shape[0] == 1:
        return channels
    return channels.mean(axis=0, dtype=np.float32, keepdims=True)


class AudioBuffer:
    """Float32 mono samples of one channel addressed by absolute offset, holding at most ``capacity`` samples.

    ``end`` counts every sample ever appended; ``start`` is the oldest retained one. When an append would exceed
    ``capacity`` the oldest samples are discarded (``start`` moves on); owners normally call
    :meth:`discard_before` long before that, the bound only caps memory.
    """

    def __init__(self, capacity: int, start: int = 0) -> None:
        if capacity <= 0:
            raise ValueError("AudioBuffer.capacity must be a positive number of samples")
        self.capacity = capacity
        self._data = np.zeros(min(capacity, SAMPLE_RATE), dtype=np.float32)
        self._base = start  # absolute offset of _data[0]
        self._lo = 0  # index in _data of `start`
        self._hi = 0  # index in _data one past `end`

    @property
    def start(self) -> int:
        return self._base + self._lo

    @property
    def end(self) -> int:
        return self._base + self._hi

    def __len__(self) -> int:
        return self._hi - self._lo

    def append(self, x: np.ndarray) -> None:
        x = np.asarray(x, dtype=np.float32).reshape(-1)
        if len(x) >= self.capacity:  # only the newest `capacity` samples can stay
            self._base += self._hi + len(x) - self.capacity
            self._data = x[-self.capacity:].copy()
            self._lo, self._hi = 0, self.capacity
            return
        overflow = len(self) + len(x) - self.capacity
        if overflow > 0:
            self._lo += overflow
        if self._hi + len(x) > len(self._data):
            self._compact(len(self) + len(x))
        self._data[self._hi:self._hi + len(x)] = x
        self._hi += len(x)

    def read(self, a: int, b: int) -> np.ndarray:
        """A copy of samples ``[a, b)``; ``ValueError`` if any of them is not retained."""
        if not self.start <= a <= b <= self.end:
            raise ValueError(f"samples [{a}, {b}) are not in the buffer, which holds [{self.start}, {self.end})")
        return self._data[a - self._base:b - self._base].copy()

    def read_retained(self, a: int, b: int) -> tuple[int, np.ndarray]:
        """What is still held of ``[a, b)``: ``(first, samples)`` with ``first >= a`` (empty when none is).

        For readers whose audio may have been dropped or evicted meanwhile; they cut their span to what remains."""
        first = min(max(a, self.start), self.end)
        return first, self.read(first, max(first, min(b, self.end)))

    def discard_before(self, n: int) -> None:
        """Forget samples before absolute offset ``n`` (no-op for offsets already gone; never past ``end``)."""
        self._lo = max(self._lo, min(n, self.end) - self._base)

    def _compact(self, needed: int) -> None:
        size = max(needed, min(self.capacity, 2 * len(self._data)))
        data = np.zeros(size, dtype=np.float32)
        data[:len(self)] = self._data[self._lo:self._hi]
        self._base += self._lo
        self._hi -= self._lo
        self._lo = 0
        self._data = data
