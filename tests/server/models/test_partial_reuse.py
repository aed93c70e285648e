"""server.models.partial_reuse: grid partials, reused per stream within the tolerance, never across other audio."""

from __future__ import annotations

import numpy as np
import pytest

from server.models.embedding import ResemblyzerEmbedding, volume_gain
from server.models.partial_reuse import GRID, PARTIAL, PartialReuse
from streaming.work import EmbeddingRequest


class Recorder:
    """A fake encoder: each partial → a unit vector from its content; records what it was asked."""

    def __init__(self) -> None:
        self.calls: list[np.ndarray] = []

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.calls.append(batch.copy())
        x = batch.astype(np.float64)
        out = np.stack([x.sum(axis=1), (x ** 2).sum(axis=1), x[:, ::7].sum(axis=1), np.ones(len(x))], axis=1)
        return (out / np.linalg.norm(out, axis=1, keepdims=True)).astype(np.float32)

    @property
    def partials(self) -> int:
        return sum(len(c) for c in self.calls)


def stream_audio(seconds: float = 20.0, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(int(seconds * 16000)) * 0.1).astype(np.float32)


def request(audio: np.ndarray, spans: tuple[tuple[int, int], ...], seq: int = 0, session: str = "s",
            channel: int = 0) -> EmbeddingRequest:
    samples = np.concatenate([audio[a:b] for a, b in spans])
    return EmbeddingRequest(session, seq, channel, spans[0][0], samples, spans=spans)


def embed(reuse: PartialReuse, requests: list[EmbeddingRequest]) -> list:
    return reuse.embed(requests, [r.audio for r in requests])


def test_requests_without_usable_spans_are_left_to_the_caller() -> None:
    encoder = Recorder()
    reuse = PartialReuse(encoder, lambda _: 1.0)
    audio = stream_audio()
    short = request(audio, ((16000, 30000),))  # 0.9 s: no grid partial is 75 % covered
    bad = EmbeddingRequest("s", 1, 0, 0, audio[:32000], spans=((0, 16000),))  # spans do not add up
    none = EmbeddingRequest("s", 2, 0, 0, audio[:32000])
    assert embed(reuse, [short, bad, none]) == [None, None, None] and encoder.partials == 0


def test_grid_partials_hold_the_covered_samples_and_zeros_elsewhere() -> None:
    encoder = Recorder()
    reuse = PartialReuse(encoder, lambda _: 2.0)
    audio = stream_audio()
    spans = ((GRID + 1000, GRID + 20000), (GRID + 22000, 3 * GRID + PARTIAL))
    (vector,) = embed(reuse, [request(audio, spans)])
    (batch,) = encoder.calls
    assert len(batch) == 3  # grid points GRID, 2 GRID, 3 GRID; 0 is covered < 75 %
    first = batch[0]
    np.testing.assert_array_equal(first[:1000], 0.0)
    np.testing.assert_array_equal(first[1000:20000], 2.0 * audio[GRID + 1000:GRID + 20000])
    np.testing.assert_array_equal(first[20000:22000], 0.0)  # the gap is silence, not cut out
    np.testing.assert_array_equal(first[22000:], 2.0 * audio[GRID + 22000:GRID + PARTIAL])
    mean = encoder(batch).mean(axis=0)
    np.testing.assert_allclose(vector, mean / np.linalg.norm(mean), atol=1e-6)


def test_a_later_window_reuses_partials_within_the_tolerance_only() -> None:
    encoder = Recorder()
    reuse = PartialReuse(encoder, lambda _: 1.0, tolerance=800)
    audio = stream_audio()
    first = embed(reuse, [request(audio, ((0, 4 * GRID),))])[0]
    computed = encoder.partials
    # the same segment cut 500 samples later at its start: every partial but the first is reused exactly
    again = embed(reuse, [request(audio, ((500, 4 * GRID),), seq=1)])[0]
    assert encoder.partials == computed and reuse.partials_reused == computed
    np.testing.assert_allclose(again, first, atol=1e-6)
    # 0.1 s changed in the first partial: beyond the tolerance, that one is computed anew
    embed(reuse, [request(audio, ((1600, 4 * GRID),), seq=2)])
    assert encoder.partials == computed + 1
    # grown by one grid step: the new partial at 3 GRID, and the one at 2 GRID whose last 960 samples it now holds
    embed(reuse, [request(audio, ((0, 5 * GRID),), seq=3)])
    assert encoder.partials == computed + 3


def test_same_positions_with_other_audio_or_another_stream_are_not_reused() -> None:
    encoder = Recorder()
    reuse = PartialReuse(encoder, lambda _: 1.0)
    one, other = stream_audio(seed=1), stream_audio(seed=2)
    spans = ((0, 3 * GRID),)
    a = embed(reuse, [request(one, spans)])[0]
    n = encoder.partials
    b = embed(reuse, [request(other, spans, seq=1)])[0]  # another file under the same session id
    assert encoder.partials == 2 * n and not np.allclose(a, b)
    embed(reuse, [request(one, spans, seq=2, channel=1), request(one, spans, seq=3, session="t")])
    assert encoder.partials == 4 * n
    embed(reuse, [request(one, spans, seq=4, session="t")])  # the same stream again: reused
    assert encoder.partials == 4 * n


def test_a_stream_later_in_the_same_batch_reuses_the_earlier_request() -> None:
    encoder = Recorder()
    reuse = PartialReuse(encoder, lambda _: 1.0)
    audio = stream_audio()
    a, b = embed(reuse, [request(audio, ((0, 3 * GRID),)), request(audio, ((0, 3 * GRID),), seq=1)])
    assert len(encoder.calls) == 1 and reuse.partials_computed == reuse.partials_reused
    np.testing.assert_array_equal(a, b)


def test_old_partials_are_dropped_and_streams_are_bounded() -> None:
    encoder = Recorder()
    reuse = PartialReuse(encoder, lambda _: 1.0, horizon=4 * PARTIAL, streams=2)
    audio = stream_audio(30.0)
    embed(reuse, [request(audio, ((0, 2 * GRID + PARTIAL),))])
    embed(reuse, [request(audio, ((20 * GRID, 22 * GRID + PARTIAL),), seq=1)])
    (stream,) = reuse._streams.values()
    assert min(stream.partials) >= stream.base > 0 and len(stream.audio) <= 4 * PARTIAL + GRID
    embed(reuse, [request(audio, ((0, PARTIAL),), seq=2, session=name) for name in "abc"])
    assert list(reuse._streams) == [("b", 0), ("c", 0)]
    with pytest.raises(ValueError):
        PartialReuse(encoder, lambda _: 1.0, coverage=0.0)


def test_resemblyzer_reuses_partials_only_when_asked() -> None:
    audio = stream_audio(8.0) * np.float32(0.05)
    requests = [request(audio, ((3000, 70000),)), request(audio, ((11000, 76000),), seq=1)]
    plain = ResemblyzerEmbedding("cpu")
    assert plain.reuse is None and plain.describe()["reuse_partials"] is False
    assert ResemblyzerEmbedding("cpu", reuse_partials="edge").describe()["reuse_partials"] == "edge"
    with pytest.raises(ValueError):
        ResemblyzerEmbedding("cpu", reuse_partials="sometimes")
    reusing = ResemblyzerEmbedding("cpu", reuse_partials=True)
    assert reusing.describe()["reuse_partials"] is True
    ours, theirs = reusing.run_batch(requests), plain.run_batch(requests)
    assert reusing.reuse is not None and reusing.reuse.partials_reused > 0
    for a, b in zip(ours, theirs):
        assert a.embedding.shape == (256,) and a.embedding.dtype == np.float32
        assert abs(float(np.linalg.norm(a.embedding)) - 1.0) < 1e-5
        assert float(a.embedding @ b.embedding) > 0.9  # the same audio, other partial boundaries
    assert volume_gain(np.zeros(10, np.float32)) == 1.0 and volume_gain(audio) > 1.0


def test_edge_only_takes_just_the_requests_a_window_cut() -> None:
    encoder = Recorder()
    reuse = PartialReuse(encoder, lambda _: 1.0, edge_only=True)
    audio = stream_audio()
    inside = request(audio, ((5000, 3 * GRID),))
    cut = EmbeddingRequest("s", 1, 0, 5000, inside.audio, spans=inside.spans, window_edge=True)
    assert embed(reuse, [inside])[0] is None and encoder.partials == 0
    assert embed(reuse, [cut])[0] is not None and encoder.partials > 0
