"""Oracle embeddings: each reference speaker's share of the embedded audio; other requests pass through in order."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("pyannote.core")

from pyannote.core import Annotation, Segment  # noqa: E402

from benchmarks.oracle_embeddings import OracleEmbeddings  # noqa: E402
from streaming.work import EmbeddingRequest, SegmentationRequest, SegmentationResult  # noqa: E402

SR = 16000


def reference() -> Annotation:
    ref = Annotation()
    ref[Segment(0.0, 1.0), 0] = "B"
    ref[Segment(1.0, 2.0), 1] = "A"
    ref[Segment(1.5, 2.5), 2] = "B"
    return ref


def never(_: list) -> list:
    raise AssertionError("only embedding requests here")


def test_one_speaker_gives_its_own_axis_and_a_mixture_its_proportions() -> None:
    oracle = OracleEmbeddings(reference(), never)
    assert oracle.labels == ["A", "B"]
    np.testing.assert_allclose(oracle.vector([(0, SR)]), [0.0, 1.0, 0.0])          # B alone
    np.testing.assert_allclose(oracle.vector([(SR, SR + SR // 2)]), [1.0, 0.0, 0.0])  # A alone
    mixed = oracle.vector([(SR // 2, SR + SR // 2)])                                 # 0.5 s of B, then 0.5 s of A
    np.testing.assert_allclose(mixed, [np.sqrt(0.5), np.sqrt(0.5), 0.0])
    split = oracle.vector([(0, SR // 4), (SR + SR // 4, SR + SR // 2)])             # spans, not their hull
    np.testing.assert_allclose(split, [np.sqrt(0.5), np.sqrt(0.5), 0.0])


def test_audio_without_reference_speech_gets_the_nobody_axis() -> None:
    oracle = OracleEmbeddings(reference(), never)
    np.testing.assert_allclose(oracle.vector([(3 * SR, 4 * SR)]), [0.0, 0.0, 1.0])
    half = oracle.vector([(2 * SR, 3 * SR)])                                           # B until 2.5 s, then nobody
    np.testing.assert_allclose(half, [0.0, np.sqrt(0.5), np.sqrt(0.5)])
    np.testing.assert_allclose(oracle.vector([]), [0.0, 0.0, 1.0])


def test_other_requests_go_to_the_wrapped_runner_and_order_is_kept() -> None:
    seen: list = []

    def run(requests: list) -> list:
        seen.extend(requests)
        return [SegmentationResult(r.session_id, r.seq, np.zeros((2, 3)), 320.0, 640.0) for r in requests]

    oracle = OracleEmbeddings(reference(), run)
    audio = np.zeros(SR, np.float32)
    requests = [EmbeddingRequest("s", 5, 0, 0, audio, spans=((0, SR),)), SegmentationRequest("s", 6, 0, 0, audio),
                EmbeddingRequest("s", 7, 0, SR, audio[:SR // 2], spans=((SR, SR + SR // 2),))]
    results = oracle(requests)
    assert [r.seq for r in results] == [5, 6, 7] and [r.seq for r in seen] == [6]
    assert isinstance(results[1], SegmentationResult)
    np.testing.assert_allclose(results[2].embedding, [1.0, 0.0, 0.0], atol=1e-6)
    with pytest.raises(ValueError, match="no spans"):
        oracle([EmbeddingRequest("s", 8, 0, 0, audio)])
