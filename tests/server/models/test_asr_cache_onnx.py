"""The cached chunk step on ONNX Runtime (server/models/asr_cache_onnx.py) against the torch chunked encoder on the
tiny trained model: fp32 log-probs within 1e-4 and the same text on held-out utterances chunk by chunk (lookahead
included, first chunks too short for a frame); int8's cached decodes within one CER point of fp32's; the graph
cached by the weights' hash; the ONNX adapter routes cached partials through it and leaves finals unchanged."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from server.models.asr import GigaAmAsr
from server.models.asr_cache import ChunkedEncoder
from server.models.asr_cache_onnx import CHUNK_RECIPES, ChunkGeometry, OnnxChunkedEncoder, ensure_chunk_graph
from server.models.asr_onnx import OnnxGigaAmAsr
from server.models.audit import audit_model
from streaming.work import AsrKind, AsrRequest
from tests.server.models.test_asr import TINY_CKPT, _cer, held_out, rnnt_ckpt  # noqa: F401
from tests.server.models.test_asr_onnx import cache  # noqa: F401  (the model cache fixture, one home)

V3_CTC = Path(__file__).resolve().parents[2] / "assets" / "tiny_v3_e2e_ctc.ckpt"
PIECES = (4000, 6400, 8000, 16000)


@pytest.fixture(scope="module")
def torch_asr() -> GigaAmAsr:
    torch.set_num_threads(2)
    return GigaAmAsr(str(TINY_CKPT), device="cpu")


@pytest.fixture(scope="module")
def fp32(cache: Path) -> OnnxGigaAmAsr:
    return OnnxGigaAmAsr(str(TINY_CKPT), device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def int8(cache: Path) -> OnnxGigaAmAsr:
    return OnnxGigaAmAsr(str(TINY_CKPT), device="cpu", precision="int8")


def _cuts(n: int, piece: int) -> list[tuple[int, int]]:
    starts = [0, 480] + list(range(piece, n, piece))  # 30 ms first: no encoder frame yet (STFT and kernels wait)
    starts = sorted({s for s in starts if s < n})
    return list(zip(starts, starts[1:] + [n]))


def _steps(encoder, audio: np.ndarray, piece: int, final: bool) -> list[np.ndarray]:
    cuts = _cuts(len(audio), piece)
    return [encoder.step(audio[a:b], final and b == len(audio)) for a, b in cuts]


def _text(asr: GigaAmAsr, audio: np.ndarray, piece: int, lookahead: int = 0) -> str:
    """The adapter's cached partials over ``audio`` in ``piece`` chunks: the last one's text (then the final)."""
    result = None
    for k, (a, b) in enumerate(_cuts(len(audio), piece)):
        [result] = asr.run_batch([AsrRequest("c", k, 0, a, audio[a:b], 0, AsrKind.PARTIAL,
                                             cache_lookahead=lookahead)])
        assert result.whole_utterance
    asr.run_batch([AsrRequest("c", 999, 0, 0, audio, 0, AsrKind.FINAL)])  # drops the cache
    assert len(asr.partial_caches) == 0
    return result.text


@pytest.mark.parametrize("lookahead", [0, 2])
@pytest.mark.parametrize("final", [False, True])
def test_fp32_chunk_graph_equals_the_torch_chunked_encoder(torch_asr: GigaAmAsr, fp32: OnnxGigaAmAsr, held_out,
                                                           lookahead: int, final: bool) -> None:
    _, audios = held_out
    for i, audio in enumerate(audios[:6]):
        audio = audio.astype(np.float32)
        piece = PIECES[i % len(PIECES)] if i else 8000
        reference = ChunkedEncoder(torch_asr.model, lookahead)
        want = _steps(reference, audio, piece, final)
        onnx = fp32.chunk_encoder(lookahead)
        got = _steps(onnx, audio, piece, final)
        assert [w.shape[0] for w in want] == [g.shape[0] for g in got]
        for w, g in zip(want, got):
            if len(w):
                assert float(np.abs(w - g).max()) <= 1e-4
                assert np.array_equal(w.argmax(-1), g.argmax(-1))
        assert (onnx.frames_out, onnx.frames_encoded) == (reference.frames_out, reference.frames_encoded)


def test_v3_conv1d_subsampling_chunk_graph_equals_torch(cache: Path) -> None:
    torch_v3 = GigaAmAsr(str(V3_CTC), device="cpu")
    onnx_v3 = OnnxGigaAmAsr(str(V3_CTC), device="cpu", precision="fp32")
    audio = (np.random.default_rng(1).standard_normal(30000) * 0.1).astype(np.float32)
    want = _steps(ChunkedEncoder(torch_v3.model, 1), audio, 4000, True)
    got = _steps(onnx_v3.chunk_encoder(1), audio, 4000, True)
    assert sum(len(w) for w in want) > 0 and [len(w) for w in want] == [len(g) for g in got]
    assert max(float(np.abs(w - g).max()) for w, g in zip(want, got) if len(w)) <= 1e-4


def test_cached_partials_on_the_onnx_engine_give_the_torch_text(torch_asr: GigaAmAsr, fp32: OnnxGigaAmAsr,
                                                                held_out) -> None:
    _, audios = held_out
    audios = [a.astype(np.float32) for a in audios[:8]]
    for lookahead in (0, 1):
        assert [_text(fp32, a, 8000, lookahead) for a in audios] == \
               [_text(torch_asr, a, 8000, lookahead) for a in audios]


def test_int8_cached_partials_keep_the_held_out_cer_within_one_point(fp32: OnnxGigaAmAsr, int8: OnnxGigaAmAsr,
                                                                     held_out) -> None:
    texts, audios = held_out
    audios = [a.astype(np.float32) for a in audios]
    chars = sum(len(t) for t in texts)
    cer = {name: sum(_cer(t, _text(asr, a, 16000)) for t, a in zip(texts, audios)) / chars
           for name, asr in (("fp32", fp32), ("int8", int8))}
    assert cer["fp32"] <= 0.15
    assert cer["int8"] <= cer["fp32"] + 0.01, cer


def test_the_onnx_adapter_routes_cached_partials_and_keeps_finals(fp32: OnnxGigaAmAsr, torch_asr: GigaAmAsr,
                                                                  held_out) -> None:
    _, audios = held_out
    audio = audios[0].astype(np.float32)
    final = AsrRequest("r", 3, 0, 0, audio, 1, AsrKind.FINAL)
    before = fp32.run_batch([final])[0]
    plain = AsrRequest("r", 1, 0, 8000, audio[8000:], 1, AsrKind.PARTIAL)
    first = AsrRequest("r", 2, 0, 0, audio[:8000], 1, AsrKind.PARTIAL, cache_lookahead=1)
    [window, cached] = fp32.run_batch([plain, first])
    assert not window.whole_utterance and cached.whole_utterance and cached.text
    assert len(fp32.partial_caches) == 1
    after = fp32.run_batch([final])[0]
    assert (after.text, after.words) == (before.text, before.words) and len(fp32.partial_caches) == 0
    assert after.text == torch_asr.run_batch([final])[0].text
    assert "onnx_chunk_step" in fp32.modules() and audit_model("asr", fp32, "cpu").devices == ("cpu",)
    assert fp32.describe()["chunk_graph"] == fp32.chunk_graph.name


def test_chunk_graphs_are_cached_by_weights_and_precision(cache: Path, fp32: OnnxGigaAmAsr,
                                                          int8: OnnxGigaAmAsr) -> None:
    assert fp32.chunk_graph.parent == cache / "onnx" and int8.chunk_graph.parent == cache / "onnx"
    assert CHUNK_RECIPES["fp32"] in fp32.chunk_graph.name and CHUNK_RECIPES["int8"] in int8.chunk_graph.name
    built = fp32.chunk_graph.stat().st_mtime_ns
    net = GigaAmAsr(str(TINY_CKPT), device="cpu").model
    assert ensure_chunk_graph(net, "fp32") == fp32.chunk_graph and fp32.chunk_graph.stat().st_mtime_ns == built
    with torch.no_grad():
        net.head.decoder_layers[0].bias += 1.0  # other weights, another graph
    assert ensure_chunk_graph(net, "fp32") != fp32.chunk_graph
    assert not list(Path(__file__).resolve().parents[3].glob("**/gigaam-chunk-*.onnx"))
    assert isinstance(ChunkGeometry(net).kernels, list) and isinstance(fp32.chunk_encoder(0), OnnxChunkedEncoder)


def test_a_cached_chunk_graph_is_found_without_building_modules(cache: Path, int8: OnnxGigaAmAsr,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Startup: finding the cached int8 graph builds no new module (no weight initialisation, whose first call
    imports torch's decompositions) and no taps copy; the key is the plain step's weights and the recipe."""
    net = GigaAmAsr(str(TINY_CKPT), device="cpu").model

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a module was built to find a cached graph")

    monkeypatch.setattr(torch.nn.Conv2d, "reset_parameters", refuse)
    monkeypatch.setattr(torch.nn.Conv1d, "reset_parameters", refuse)
    monkeypatch.setattr("server.models.asr_cache_onnx.with_tap_convs", refuse)
    assert ensure_chunk_graph(net, "int8") == int8.chunk_graph


def test_rnnt_decoding_continued_from_the_committed_state_equals_one_pass(rnnt_ckpt: Path, held_out) -> None:
    asr = GigaAmAsr(str(rnnt_ckpt), device="cpu")
    _, audios = held_out
    with torch.inference_mode():
        frames = ChunkedEncoder(asr.model).push(audios[0].astype(np.float32), final=True).numpy()
    whole, _ = asr.rnnt_continue(frames, None, 0)
    first, state = asr.rnnt_continue(frames[:17], None, 0)
    rest, _ = asr.rnnt_continue(frames[17:], state, 17)
    assert whole and first + rest == whole
    assert [t[0] for t in whole] == [t[0] for t in asr._rnnt_tokens(torch.from_numpy(frames)[None],
                                                                    torch.tensor([len(frames)]))[0]]


def test_rnnt_cached_partials_on_both_engines(rnnt_ckpt: Path, cache: Path, held_out) -> None:
    """RNNT has cached partials too: the ONNX chunk graph gives the torch chunked encoder's frames (the graph
    without the CTC head), and both adapters' cached partials read the same text, close to the final's."""
    torch_rnnt = GigaAmAsr(str(rnnt_ckpt), device="cpu")
    onnx_rnnt = OnnxGigaAmAsr(str(rnnt_ckpt), device="cpu", precision="fp32")
    assert torch_rnnt.partial_caches is not None and onnx_rnnt.partial_caches is not None
    _, audios = held_out
    audio = audios[1].astype(np.float32)
    want = _steps(ChunkedEncoder(torch_rnnt.model, 1), audio, 8000, False)
    got = _steps(onnx_rnnt.chunk_encoder(1), audio, 8000, False)
    assert max(float(np.abs(w - g).max()) for w, g in zip(want, got) if len(w)) <= 1e-4
    texts = [_text(asr, a.astype(np.float32), 8000, 1) for asr in (torch_rnnt, onnx_rnnt) for a in audios[:4]]
    assert texts[:4] == texts[4:] and all(texts)
    finals = [r.text for r in torch_rnnt.run_batch([AsrRequest("f", i, 0, 0, a.astype(np.float32), i, AsrKind.FINAL)
                                                    for i, a in enumerate(audios[:4])])]
    assert np.mean([_cer(f, t) / max(len(f), 1) for f, t in zip(finals, texts)]) <= 0.25


def test_relative_positions_chunk_graph_equals_torch(torch_asr: GigaAmAsr, tmp_path: Path) -> None:
    """v1's Transformer-XL relative positions in the chunk graph: the position table's rows picked by index."""
    from tests.server.models.test_asr_cache import _rel_pos_net

    net = _rel_pos_net(torch_asr)
    from server.models.asr_cache_onnx import chunk_session

    session = chunk_session(ensure_chunk_graph(net, "fp32", tmp_path), 1, ["CPUExecutionProvider"])
    audio = (np.random.default_rng(2).standard_normal(30000) * 0.1).astype(np.float32)
    want = _steps(ChunkedEncoder(net, 2), audio, 6400, True)
    got = _steps(OnnxChunkedEncoder(session, ChunkGeometry(net), net.preprocessor, 2), audio, 6400, True)
    assert [len(w) for w in want] == [len(g) for g in got] and sum(len(w) for w in want) > 0
    assert max(float(np.abs(w - g).max()) for w, g in zip(want, got) if len(w)) <= 1e-4


class _CountingSession:
    """An ONNX Runtime session that counts its runs and the rows of each."""

    def __init__(self, session) -> None:
        self.session, self.rows = session, []

    def run(self, names, feeds):
        self.rows.append(feeds["features"].shape[0])
        return self.session.run(names, feeds)


@pytest.mark.parametrize("lookahead", [0, 2])
def test_chunks_of_several_utterances_in_one_run_equal_each_run_alone(fp32: OnnxGigaAmAsr, held_out,
                                                                      lookahead: int) -> None:
    """Rows of different lengths (features, held frames, cached frames, new frames) padded into one run of the
    chunk graph give each utterance what its own run gives, chunk after chunk, and the same caches."""
    _, audios = held_out
    audios = [a.astype(np.float32) for a in audios[:4]]
    pieces = [4000, 6400, 8000, 16000]  # each utterance its own chunk size: every row a different shape
    cuts = [_cuts(len(a), p) for a, p in zip(audios, pieces)]
    alone = [fp32.chunk_encoder(lookahead) for _ in audios]
    together = [fp32.chunk_encoder(lookahead) for _ in audios]
    counting = _CountingSession(fp32.chunk_session)
    for e in together:
        e.session = counting
    for k in range(max(len(c) for c in cuts)):
        live = [i for i, c in enumerate(cuts) if k < len(c)]
        chunks = [audios[i][slice(*cuts[i][k])] for i in live]
        finals = [k == len(cuts[i]) - 1 for i in live]
        want = [alone[i].step(a, f) for i, a, f in zip(live, chunks, finals)]
        got = OnnxChunkedEncoder.step_many([together[i] for i in live], chunks, finals)
        for w, g in zip(want, got):
            assert w.shape == g.shape
            if len(w):
                assert float(np.abs(w - g).max()) <= 1e-4
                assert np.array_equal(w.argmax(-1), g.argmax(-1))
    for a, t in zip(alone, together):
        assert (a.frames_out, a.frames_encoded) == (t.frames_out, t.frames_encoded)
        assert float(np.abs(a.keys - t.keys).max()) <= 1e-4
    assert max(counting.rows) == 4  # the rows did share runs


def test_the_adapter_runs_a_batch_of_cached_partials_in_one_chunk_run(fp32: OnnxGigaAmAsr, held_out) -> None:
    """Cached partials of several streams in one batch: one chunk-graph run of up to ``chunk_rows`` rows (one on
    the CPU), the texts and words each stream gets alone; two partials of one stream channel in a batch are
    stepped in turn, in order."""
    _, audios = held_out
    audios = [a.astype(np.float32) for a in audios[:3]]

    def requests(k: int) -> list[AsrRequest]:
        return [AsrRequest(f"s{i}", k, 0, k * 8000, a[k * 8000:(k + 1) * 8000], 5, AsrKind.PARTIAL,
                           cache_lookahead=2) for i, a in enumerate(audios) if (k + 1) * 8000 <= len(a)]

    alone = [[fp32.run_batch([r])[0] for r in requests(k)] for k in range(3)]
    for r in requests(0):
        fp32.run_batch([AsrRequest(r.session_id, 99, 0, 0, r.audio, 5, AsrKind.FINAL)])
    assert len(fp32.partial_caches) == 0
    counting = _CountingSession(fp32.chunk_session)
    real, fp32.chunk_session = fp32.chunk_session, counting
    assert fp32.chunk_rows == 1  # the CPU default: one row per run (rows did not pay there)
    fp32.chunk_rows = 8  # as on CUDA: a batch's worth of rows per run
    try:
        together = [fp32.run_batch(requests(k)) for k in range(3)]
        assert counting.rows == [len(requests(k)) for k in range(3)]
        texts = lambda results: [(r.text, r.words) for r in results]  # noqa: E731
        assert [texts(t) for t in together] == [texts(a) for a in alone]
        # one stream's two windows in one batch: the second continues the first, as in two batches
        a = audios[0]
        pair = [AsrRequest("p", 1, 0, 0, a[:4000], 6, AsrKind.PARTIAL, cache_lookahead=2),
                AsrRequest("p", 2, 0, 4000, a[4000:8000], 6, AsrKind.PARTIAL, cache_lookahead=2)]
        restarts = fp32.partial_caches.restarts
        both = fp32.run_batch(pair)
        assert counting.rows[-2:] == [1, 1] and fp32.partial_caches.restarts == restarts
        fp32.run_batch([AsrRequest("p", 3, 0, 0, a[:8000], 6, AsrKind.FINAL)])
        one_by_one = [fp32.run_batch([r])[0] for r in pair]
        assert texts(both) == texts(one_by_one) and both[1].whole_utterance
        fp32.run_batch([AsrRequest("p", 3, 0, 0, a[:8000], 6, AsrKind.FINAL)])
        fp32.chunk_rows = 1
        fp32.run_batch([AsrRequest(r.session_id, 98, 0, 0, r.audio, 5, AsrKind.FINAL) for r in requests(0)])
        before = len(counting.rows)
        assert texts([fp32.run_batch(requests(0))][0]) == texts(alone[0])
        assert counting.rows[before:] == [1] * len(requests(0))
    finally:
        fp32.chunk_session, fp32.chunk_rows = real, 1
        fp32.run_batch([AsrRequest(f"s{i}", 99, 0, 0, a, 5, AsrKind.FINAL) for i, a in enumerate(audios)])
