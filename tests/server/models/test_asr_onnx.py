"""The ONNX Runtime GigaAM engine against the torch path on the tiny trained model (and the small RNNT built from it):
the same log-probs within 1e-4 and the same text on held-out utterances in ragged batches (fp32, both graph forms);
int8 within one CER point of fp32; graphs cached by the weights' hash outside the repository; the audit reads the session's device."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from server.models.asr import GigaAmAsr
from server.models.asr_onnx import CONV_OPS, MATMUL_CONVS, OnnxGigaAmAsr, ensure_graph, weights_key
from server.models.audit import PlacementError, audit_model
from server.models.base import Interrupt, set_current_interrupt
from streaming.work import AsrKind, AsrRequest
from tests.server.models.test_asr import TINY_CKPT, _cer, _requests, held_out, needs_espeak, rnnt_ckpt  # noqa: F401

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("rechka-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RECHKA_CACHE", str(root))
        yield root


@pytest.fixture(scope="module")
def torch_asr() -> GigaAmAsr:
    torch.set_num_threads(2)
    return GigaAmAsr(str(TINY_CKPT), device="cpu", max_batch=8)


@pytest.fixture(scope="module")
def fp32(cache: Path) -> OnnxGigaAmAsr:
    return OnnxGigaAmAsr(str(TINY_CKPT), device="cpu", max_batch=8, precision="fp32")


@pytest.fixture(scope="module")
def fp32_taps(cache: Path) -> OnnxGigaAmAsr:
    """fp32 of the graph form int8 is quantized from (convolutions as MatMuls per tap)."""
    return OnnxGigaAmAsr(str(TINY_CKPT), device="cpu", max_batch=8, precision="fp32", recipe=MATMUL_CONVS)


@pytest.fixture(scope="module")
def int8(cache: Path) -> OnnxGigaAmAsr:
    return OnnxGigaAmAsr(str(TINY_CKPT), device="cpu", max_batch=8, precision="int8")


def _log_probs(asr: GigaAmAsr, audios: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.inference_mode():
        encoded, lengths = asr._encode([torch.from_numpy(a) for a in audios])
        return asr.model.head(encoder_output=encoded.transpose(1, 2)), lengths


@needs_espeak
@pytest.mark.parametrize("graph", ["fp32", "fp32_taps"])
def test_fp32_log_probs_and_text_equal_torch_on_ragged_batches(torch_asr: GigaAmAsr, graph: str, held_out,
                                                              request: pytest.FixtureRequest) -> None:
    fp32: OnnxGigaAmAsr = request.getfixturevalue(graph)
    _, audios = held_out
    assert len({len(a) for a in audios}) > 1
    for batch in (audios, audios[:5], audios[5:8], [audios[3]]):  # ragged batches of several sizes, and one row
        want, want_len = _log_probs(torch_asr, batch)
        got, got_len = _log_probs(fp32, batch)
        assert torch.equal(want_len, got_len)
        for row, n in enumerate(want_len.tolist()):
            assert float((want[row, :n] - got[row, :n]).abs().max()) <= 1e-4
    onnx = fp32.run_batch(_requests(audios))
    reference = torch_asr.run_batch(_requests(audios))
    assert all(r.text for r in onnx)
    assert [r.text for r in onnx] == [r.text for r in reference]
    assert [r.words for r in onnx] == [r.words for r in reference]


@needs_espeak
def test_int8_keeps_the_held_out_cer_within_one_point_of_fp32(fp32: OnnxGigaAmAsr, int8: OnnxGigaAmAsr,
                                                             held_out) -> None:
    texts, audios = held_out
    chars = sum(len(t) for t in texts)
    cer = {name: sum(_cer(t, r.text) for t, r in zip(texts, asr.run_batch(_requests(audios)))) / chars
           for name, asr in (("fp32", fp32), ("int8", int8))}
    assert cer["int8"] <= cer["fp32"] + 0.01, cer
    assert int8.graph.stat().st_size < fp32.graph.stat().st_size  # the weights really are int8


@needs_espeak
def test_rnnt_on_onnx_gives_the_torch_text_on_ragged_batches(rnnt_ckpt: Path, cache: Path, held_out) -> None:
    _, audios = held_out
    onnx = OnnxGigaAmAsr(str(rnnt_ckpt), max_batch=8, precision="fp32")
    reference = GigaAmAsr(str(rnnt_ckpt), max_batch=8)
    assert onnx.describe()["head"] == "rnnt"
    got = onnx.run_batch(_requests(audios))
    assert [r.text for r in got] == [r.text for r in reference.run_batch(_requests(audios))]
    assert [r.text for r in got[:4]] == [r.text for r in onnx.run_batch(_requests(audios[:4]))]


def test_graphs_are_cached_by_weights_hash_outside_the_repository(fp32: OnnxGigaAmAsr, torch_asr: GigaAmAsr,
                                                                 cache: Path) -> None:
    assert fp32.graph.parent == cache / "onnx" and weights_key(torch_asr.model.encoder, CONV_OPS)[:24] in fp32.graph.name
    assert not str(fp32.graph).startswith(str(ROOT))
    before = fp32.graph.stat().st_mtime_ns
    again = ensure_graph(torch_asr.model.encoder, 64, "fp32")
    assert again == fp32.graph and again.stat().st_mtime_ns == before  # reused, not exported again
    changed = GigaAmAsr(str(TINY_CKPT)).model.encoder
    with torch.no_grad():
        next(changed.parameters()).add_(1e-3)
    assert weights_key(changed, CONV_OPS) != weights_key(torch_asr.model.encoder, CONV_OPS)
    with pytest.raises(ValueError, match="fp32, int8"):
        ensure_graph(changed, 64, "int4")


def test_int8_graph_quantizes_the_channel_mixing_convolutions_and_recipes_are_cached_apart(
        fp32: OnnxGigaAmAsr, int8: OnnxGigaAmAsr, torch_asr: GigaAmAsr, cache: Path) -> None:
    assert (int8.recipe, fp32.recipe) == (MATMUL_CONVS, CONV_OPS) == ("masked-taps-v2", "masked-v1")
    old = ensure_graph(torch_asr.model.encoder, 64, "int8", recipe=CONV_OPS)
    assert old != int8.graph and weights_key(torch_asr.model.encoder, CONV_OPS) != weights_key(
        torch_asr.model.encoder, MATMUL_CONVS)  # an int8 graph of the earlier recipe is never taken for the new one
    new, before, layers = _ops(int8.graph), _ops(old), torch_asr.spec.encoder.n_layers
    assert new["/pre_encode/Conv"] == 1 and before["/pre_encode/Conv"] == 2  # the one-channel first stays a Conv
    assert (new["Conv"], before["Conv"]) == (1 + layers, 2 + 3 * layers)  # per layer: only the depthwise one stays
    # quantized MatMuls instead: 9 taps of the second subsampling convolution, each layer's 2 pointwise convolutions
    assert new["MatMulInteger"] == before["MatMulInteger"] + 9 + 2 * layers
    with pytest.raises(ValueError, match="masked-taps-v2, masked-v1"):
        weights_key(torch_asr.model.encoder, "masked-v0")


def _ops(graph: Path) -> Counter:
    """Op types of an ONNX graph, and ``/pre_encode/<op>`` for the subsampling's nodes."""
    import onnx

    nodes = onnx.load(str(graph)).graph.node
    return Counter([n.op_type for n in nodes] + [f"/pre_encode/{n.op_type}" for n in nodes
                                                 if n.name.startswith("/pre_encode/")])


def test_describe_and_the_audit_read_the_session(fp32: OnnxGigaAmAsr) -> None:
    info = fp32.describe()
    assert (info["engine"], info["precision"], info["providers"]) == ("onnx", "fp32", ["CPUExecutionProvider"])
    assert info["parameters"] > sum(p.numel() for p in fp32.model.parameters())  # the graph's weights counted
    placement = audit_model("asr", fp32, "cpu")
    assert placement.devices == ("cpu",)

    class OnCuda:
        def modules(self) -> dict:
            return {"onnx_encoder": FakeSession()}

    class FakeSession:
        def run(self, *args: object) -> None: ...

        def get_providers(self) -> list[str]:
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]

        def get_provider_options(self) -> dict:
            return {"CUDAExecutionProvider": {"device_id": "1"}}

    with pytest.raises(PlacementError, match="cuda:1"):
        audit_model("asr", OnCuda(), "cpu")


def test_the_session_keeps_no_memory_per_request_shape(fp32: OnnxGigaAmAsr, int8: OnnxGigaAmAsr) -> None:
    # every request has its own shape: a memory pattern cached per shape would make a long-running server's RSS
    # grow without bound (benchmarks/asr_memory.py, the soak in docs/reliability.md); the arena stays (speed)
    for asr in (fp32, int8):
        options = asr.session.get_session_options()
        assert options.enable_mem_pattern is False and options.enable_cpu_mem_arena is True
        assert options.intra_op_num_threads >= 1 and options.inter_op_num_threads == 1


def test_set_threads_reopens_the_graph_with_that_many_intra_op_threads(cache: Path) -> None:
    asr = OnnxGigaAmAsr(str(TINY_CKPT), device="cpu", max_batch=2, precision="fp32", threads=1)
    audio = [np.random.default_rng(3).normal(scale=0.1, size=n).astype(np.float32) for n in (16_000, 9_000)]
    before = _log_probs(asr, audio)[0]
    first = asr.session
    asr.set_threads(1)
    assert asr.session is first  # the same count: nothing reopened
    asr.set_threads(2)
    assert asr.threads == 2 and asr.session.get_session_options().intra_op_num_threads == 2
    torch.testing.assert_close(_log_probs(asr, audio)[0], before, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match=">= 1"):
        asr.set_threads(0)


def test_unknown_precision_is_refused(cache: Path) -> None:
    with pytest.raises(ValueError, match="fp32, int8"):
        OnnxGigaAmAsr(str(TINY_CKPT), precision="int4")


class _CountingSession:
    """Wraps an ONNX Runtime session and counts its runs."""

    def __init__(self, session: object) -> None:
        self.session, self.runs = session, 0

    def run(self, *args: object) -> object:
        self.runs += 1
        return self.session.run(*args)  # type: ignore[attr-defined]


@needs_espeak
def test_batches_of_finals_run_on_their_own_session_with_the_same_results(fp32: OnnxGigaAmAsr, cache: Path,
                                                                          held_out) -> None:
    lanes = OnnxGigaAmAsr(str(TINY_CKPT), device="cpu", max_batch=8, precision="fp32", threads=1, final_threads=2)
    assert lanes.final_session is not lanes.session and lanes.describe()["final_threads"] == 2
    assert lanes.final_session.get_session_options().intra_op_num_threads == 2
    assert lanes.session.get_session_options().intra_op_num_threads == 1
    assert "onnx_encoder_finals" in lanes.modules() and audit_model("asr", lanes, "cpu").devices == ("cpu",)
    audios = held_out[1][:3]
    finals = [AsrRequest("s", i, 0, 0, a, 0, AsrKind.FINAL) for i, a in enumerate(audios)]
    partials = [AsrRequest("s", 10 + i, 0, 0, a, 0, AsrKind.PARTIAL) for i, a in enumerate(audios)]
    lanes.session, lanes.final_session = _CountingSession(lanes.session), _CountingSession(lanes.final_session)
    got_finals, got_partials = lanes.run_batch(finals), lanes.run_batch(partials + finals[:1])
    assert (lanes.final_session.runs, lanes.session.runs) == (1, 1)  # a batch with a partial runs on the shared one
    reference = fp32.run_batch(finals)
    assert [r.text for r in got_finals] == [r.text for r in reference] == [r.text for r in got_partials[:3]]
    assert fp32.final_session is fp32.session  # no final_threads: one session for all


def test_an_interrupted_call_stops_in_onnx_runtime_and_the_next_one_decodes(fp32: OnnxGigaAmAsr, held_out) -> None:
    """The batcher's Interrupt reaches ONNX Runtime (RunOptions.terminate): a call interrupted before or while it runs
    raises instead of decoding; an untriggered one gives the plain result."""
    requests = [AsrRequest("s", 0, 0, 0, held_out[1][0], 0, AsrKind.FINAL)]
    reference = fp32.run_batch(requests)
    stopped = Interrupt()
    stopped.trigger()
    set_current_interrupt(stopped)
    try:
        with pytest.raises(Exception, match="terminate"):
            fp32.run_batch(requests)
        set_current_interrupt(Interrupt())
        assert [r.text for r in fp32.run_batch(requests)] == [r.text for r in reference]
    finally:
        set_current_interrupt(None)
