"""streaming/audio.py: decoding, unaligned chunks, streaming resampling, validation, the bounded buffer."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import soxr

from streaming.audio import ALAW_TABLE, MULAW_TABLE, AudioBuffer, AudioDecoder, downmix
from streaming.config import AudioFormat
from streaming.errors import InvalidAudio, UnsupportedFormat

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    try:
        import audioop  # the standard library's G.711 codec (Python < 3.13), as an independent reference
    except ImportError:  # pragma: no cover - newer Pythons
        audioop = None


def decode_in_chunks(fmt: AudioFormat, data: bytes, sizes: list[int]) -> np.ndarray:
    dec = AudioDecoder(fmt)
    parts, pos, i = [], 0, 0
    while pos < len(data):
        n = sizes[i % len(sizes)]
        parts.append(dec.decode(data[pos:pos + n]))
        pos += n
        i += 1
    parts.append(dec.flush())
    return np.concatenate(parts, axis=1)


def test_pcm_s16le_decodes_to_scaled_floats_and_deinterleaves() -> None:
    rng = np.random.default_rng(1)
    ints = rng.integers(-32768, 32768, size=(1000, 3), dtype=np.int16)
    out = AudioDecoder(AudioFormat("pcm_s16le", 16000, 3)).decode(ints.astype("<i2").tobytes())
    assert out.dtype == np.float32 and out.shape == (3, 1000)
    np.testing.assert_array_equal(out, ints.T.astype(np.float32) / 32768.0)


def test_pcm_f32le_passes_values_through() -> None:
    x = np.linspace(-1, 1, 999, dtype=np.float32)
    out = AudioDecoder(AudioFormat("pcm_f32le")).decode(x.astype("<f4").tobytes())
    np.testing.assert_array_equal(out[0], x)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_floats_are_invalid_audio(bad: float) -> None:
    x = np.zeros(10, dtype=np.float32)
    x[7] = bad
    with pytest.raises(InvalidAudio):
        AudioDecoder(AudioFormat("pcm_f32le")).decode(x.tobytes())


@pytest.mark.skipif(audioop is None, reason="audioop is not available")
@pytest.mark.parametrize("encoding, table, reference",
                         [("mulaw", MULAW_TABLE, "ulaw2lin"), ("alaw", ALAW_TABLE, "alaw2lin")])
def test_g711_tables_match_the_reference_codec(encoding: str, table: np.ndarray, reference: str) -> None:
    codes = bytes(range(256))
    expected = np.frombuffer(getattr(audioop, reference)(codes, 2), dtype="<i2") / 32768.0
    np.testing.assert_array_equal(table, expected.astype(np.float32))
    out = AudioDecoder(AudioFormat(encoding, 16000, 1)).decode(codes)
    np.testing.assert_array_equal(out[0], expected.astype(np.float32))


def test_g711_tables_are_symmetric_and_bounded() -> None:
    for table in (MULAW_TABLE, ALAW_TABLE):
        assert np.abs(table).max() < 1.0
        assert sorted(np.round(table * 32768).astype(int)) == sorted(-np.round(table * 32768).astype(int))


@pytest.mark.parametrize("encoding", ["pcm_s16le", "pcm_f32le", "mulaw", "alaw"])
def test_unaligned_chunks_give_the_same_samples_as_one_chunk(encoding: str) -> None:
    rng = np.random.default_rng(2)
    width = {"pcm_s16le": 2, "pcm_f32le": 4, "mulaw": 1, "alaw": 1}[encoding]
    if encoding == "pcm_f32le":
        data = rng.uniform(-1, 1, 2 * 500).astype("<f4").tobytes()
    else:
        data = rng.integers(0, 256, 2 * 500 * width, dtype=np.uint8).tobytes()
    fmt = AudioFormat(encoding, 16000, 2)
    whole = AudioDecoder(fmt).decode(data)
    chunked = decode_in_chunks(fmt, data, [1, 3, 7, 5, 13])
    np.testing.assert_array_equal(chunked, whole)
    assert whole.shape == (2, 500)


@pytest.mark.parametrize("rate", [8000, 11025, 22050, 44100, 48000])
def test_chunked_resampling_equals_whole_signal_resampling(rate: int) -> None:
    rng = np.random.default_rng(rate)
    n = rate  # one second per channel
    x = (0.3 * rng.standard_normal((n, 2))).clip(-1, 1)
    data = (x * 32767).astype("<i2").tobytes()
    fmt = AudioFormat("pcm_s16le", rate, 2)
    chunked = decode_in_chunks(fmt, data, [333, 1001, 77, 4095])
    ints = np.frombuffer(data, dtype="<i2").reshape(-1, 2).astype(np.float32) / 32768.0
    for c in range(2):
        whole = soxr.resample(ints[:, c], rate, 16000, quality="HQ")
        assert len(chunked[c]) == len(whole)
        np.testing.assert_allclose(chunked[c], whole, atol=1e-5)
    assert abs(chunked.shape[1] - 16000) <= 1


def test_resampling_keeps_each_channel_apart() -> None:
    t = np.arange(44100) / 44100
    stereo = np.stack([0.5 * np.sin(2 * np.pi * 300 * t), 0.5 * np.sin(2 * np.pi * 1200 * t)], axis=1)
    out = decode_in_chunks(AudioFormat("pcm_f32le", 44100, 2), stereo.astype("<f4").tobytes(), [4410 * 8 + 4])
    for c, freq in enumerate((300, 1200)):
        spectrum = np.abs(np.fft.rfft(out[c]))
        assert abs(np.argmax(spectrum) * 16000 / len(out[c]) - freq) < 2


def test_flush_drops_an_incomplete_frame_and_ends_the_stream() -> None:
    dec = AudioDecoder(AudioFormat("pcm_s16le", 16000, 2))
    assert dec.decode(b"\x01\x00\x02").shape == (2, 0)
    assert dec.flush().shape == (2, 0)
    assert dec.decode(b"\x01\x00\x02\x00").shape == (2, 1)


@pytest.mark.parametrize("fmt", [AudioFormat("opus"), AudioFormat("PCM_S16LE"), AudioFormat(sample_rate=7999),
                                 AudioFormat(sample_rate=48001), AudioFormat(channels=0), AudioFormat(channels=9)])
def test_unsupported_formats_are_rejected(fmt: AudioFormat) -> None:
    with pytest.raises(UnsupportedFormat):
        AudioDecoder(fmt)


def test_downmix_is_the_channel_mean() -> None:
    x = np.array([[1.0, 0.0, -1.0], [0.0, 0.5, 1.0]], dtype=np.float32)
    np.testing.assert_allclose(downmix(x), [[0.5, 0.25, 0.0]])
    np.testing.assert_array_equal(downmix(x[:1]), x[:1])


# ------------------------------------------------------------------------------------------------ AudioBuffer
def test_buffer_reads_by_absolute_offset_across_appends() -> None:
    buf = AudioBuffer(capacity=100_000)
    signal = np.arange(50_000, dtype=np.float32)
    for a in range(0, 50_000, 3_333):
        buf.append(signal[a:a + 3_333])
    assert (buf.start, buf.end, len(buf)) == (0, 50_000, 50_000)
    np.testing.assert_array_equal(buf.read(12_345, 23_456), signal[12_345:23_456])


def test_buffer_discard_and_out_of_range_reads() -> None:
    buf = AudioBuffer(capacity=1000)
    buf.append(np.arange(600, dtype=np.float32))
    buf.discard_before(250)
    assert buf.start == 250 and buf.end == 600
    with pytest.raises(ValueError):
        buf.read(249, 300)
    with pytest.raises(ValueError):
        buf.read(500, 601)
    buf.discard_before(10)  # never moves back
    assert buf.start == 250
    buf.discard_before(10_000)  # never past the end
    assert buf.start == buf.end == 600


def test_buffer_read_returns_a_copy() -> None:
    buf = AudioBuffer(capacity=100)
    buf.append(np.ones(10, dtype=np.float32))
    out = buf.read(0, 10)
    out[:] = 5
    np.testing.assert_array_equal(buf.read(0, 10), np.ones(10))


def test_buffer_capacity_drops_the_oldest_samples() -> None:
    buf = AudioBuffer(capacity=1000)
    signal = np.arange(5_000, dtype=np.float32)
    for a in range(0, 5_000, 300):
        buf.append(signal[a:a + 300])
        assert len(buf) <= 1000
    assert buf.end == 5_000 and buf.start == 4_000
    np.testing.assert_array_equal(buf.read(4_000, 5_000), signal[4_000:])
    buf.append(np.arange(2_500, dtype=np.float32))  # one append larger than the capacity
    assert (buf.start, buf.end) == (6_500, 7_500)
    np.testing.assert_array_equal(buf.read(6_500, 7_500), np.arange(1_500, 2_500))
