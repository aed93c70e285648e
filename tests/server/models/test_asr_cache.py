"""server/models/asr_cache.py: the cached chunked GigaAM encoder behind ``PartialOptions.cached_context``.

One final chunk is the ordinary forward; the front end and subsampling fed in pieces compute exactly the whole
utterance's frames; chunks of real (held-out espeak-ng) speech decode close to the full forward; the adapter keeps
one cache per session channel, drops it at the final, and answers cached partials with the whole utterance."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from server.models.asr import GigaAmAsr
from server.models.asr_cache import ChunkedEncoder
from server.models.gigaam_compat import encode_batch, features_batch
from server.models.gigaam_net import GigaAmNet
from server.models.gigaam_spec import EncoderSpec
from streaming.work import AsrKind, AsrRequest
from tests.server.models.test_asr import TINY_CKPT, held_out  # noqa: F401

ASSETS = Path(__file__).resolve().parents[2] / "assets"
V3_CTC = ASSETS / "tiny_v3_e2e_ctc.ckpt"


@pytest.fixture(scope="module")
def v2() -> GigaAmAsr:
    torch.set_num_threads(1)
    return GigaAmAsr(str(TINY_CKPT), device="cpu")


@pytest.fixture(scope="module")
def v3() -> GigaAmAsr:
    return GigaAmAsr(str(V3_CTC), device="cpu")


def _noise(seconds: float, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(int(seconds * 16000) + 37) * 0.1).astype(np.float32)


def _full(net: GigaAmNet, audio: np.ndarray) -> torch.Tensor:
    with torch.inference_mode():
        frames, n = encode_batch(net, [torch.from_numpy(audio)])
    return frames[0, : int(n[0])]


def _rel_pos_net(v2: GigaAmAsr) -> GigaAmNet:
    """The tiny model's shape with Transformer-XL relative positions (v1's attention), random weights."""
    spec = v2.spec
    encoder = EncoderSpec(**{**spec.encoder.__dict__, "self_attention_model": "rel_pos"})
    torch.manual_seed(0)
    net = GigaAmNet(type(spec)(**{**spec.__dict__, "encoder": encoder})).eval()
    for layer in net.encoder.layers:
        torch.nn.init.normal_(layer.self_attn.pos_bias_u, std=0.1)
        torch.nn.init.normal_(layer.self_attn.pos_bias_v, std=0.1)
    return net


@pytest.mark.parametrize("model", ["v2", "v3", "rel_pos"])
def test_one_final_chunk_is_the_full_forward(model: str, request: pytest.FixtureRequest) -> None:
    net = _rel_pos_net(request.getfixturevalue("v2")) if model == "rel_pos" else request.getfixturevalue(model).model
    audio = _noise(3.0)
    full = _full(net, audio)
    chunked = ChunkedEncoder(net).push(audio, final=True)
    assert chunked.shape == full.shape
    assert (chunked - full).abs().max().item() <= 1e-4


@pytest.mark.parametrize("model", ["v2", "v3"])
@pytest.mark.parametrize("piece", [160, 1234, 8000])
def test_the_subsampling_fed_in_pieces_gives_exactly_the_whole_utterances_frames(
        model: str, piece: int, request: pytest.FixtureRequest) -> None:
    net = request.getfixturevalue(model).model
    audio = _noise(2.3, seed=piece)
    with torch.inference_mode():
        x, lengths = features_batch(net, [torch.from_numpy(audio)])
        whole, n = net.encoder.pre_encode(x, lengths)
        encoder = ChunkedEncoder(net)
        parts = [encoder.subsample(audio[a:a + piece], a + piece >= len(audio)) for a in range(0, len(audio), piece)]
    pieces = torch.cat(parts, dim=1)
    assert pieces.shape[1] == int(n[0])
    assert (pieces - whole).abs().max().item() <= 1e-4  # float rounding of the STFT on slices: ~1e-5
    # frames come out as soon as their inputs are complete: before the last piece, at most its own frames and
    # the kernels' and the STFT window's reach (a few frames) are still held back
    held = int(n[0]) - sum(p.shape[1] for p in parts[:-1])
    last = len(audio) - (len(audio) - 1) // piece * piece
    assert held <= -(-last // net.spec.samples_per_frame) + 3


def test_later_chunks_attend_to_the_cached_frames_not_only_their_own() -> None:
    """A chunk after a cached one differs from the same audio encoded alone (it has left context)."""
    net = GigaAmAsr(str(TINY_CKPT), device="cpu").model
    audio = _noise(2.0, seed=3)
    encoder = ChunkedEncoder(net)
    encoder.push(audio[:16000])
    second = encoder.push(audio[16000:], final=True)
    assert encoder.frames_encoded == encoder.frames_out == _full(net, audio).shape[0]
    assert len(encoder.keys[0][0, 0]) == encoder.frames_out
    alone = ChunkedEncoder(net).push(audio[16000:], final=True)
    assert (second[-alone.shape[0]:] - alone).abs().max().item() > 1e-2


def test_lookahead_frames_pass_the_layers_again_and_are_not_cached(v2: GigaAmAsr) -> None:
    audio = _noise(2.0, seed=4)
    encoder = ChunkedEncoder(v2.model, lookahead=2)
    first = encoder.push(audio[:8000])
    assert encoder.frames_out == first.shape[0] - 2 and encoder.keys[0].shape[2] == encoder.frames_out
    rest = encoder.push(audio[8000:], final=True)
    total = _full(v2.model, audio).shape[0]
    assert encoder.frames_out == total and first.shape[0] - 2 + rest.shape[0] == total
    assert encoder.frames_encoded == total + 2


def _cer(reference: str, hypothesis: str) -> float:
    from tests.server.models.test_asr import _cer as distance
    return distance(reference, hypothesis) / max(len(reference), 1)


def _chunked_text(asr: GigaAmAsr, audio: np.ndarray, chunk: int, lookahead: int = 0) -> str:
    """The adapter's cached partials over ``audio`` in ``chunk`` pieces: the last one's text."""
    result = None
    for k, a in enumerate(range(0, len(audio), chunk)):
        [result] = asr.run_batch([AsrRequest("c", k, 0, a, audio[a:a + chunk], 0, AsrKind.PARTIAL,
                                             cache_lookahead=lookahead)])
        assert result.whole_utterance
    asr.run_batch([AsrRequest("c", 99, 0, 0, audio, 0, AsrKind.FINAL)])  # drops the cache
    return result.text


def test_chunked_decodes_of_held_out_speech_stay_close_to_the_full_forward(
        v2: GigaAmAsr, held_out: tuple[list[str], list[np.ndarray]]) -> None:  # noqa: F811
    """Chunks of 0.5 s with cached context decode near the full forward (measured: mean CER against the full
    decode 0.048 without lookahead, 0.008 with 2 frames); encoded alone, the same chunks give 0.27."""
    _, audios = held_out
    audios = [a.astype(np.float32) for a in audios[:8]]
    full = [r.text for r in v2.run_batch([AsrRequest("s", i, 0, 0, a, i, AsrKind.FINAL)
                                          for i, a in enumerate(audios)])]
    cached = np.mean([_cer(f, _chunked_text(v2, a, 8000)) for f, a in zip(full, audios)])
    ahead = np.mean([_cer(f, _chunked_text(v2, a, 8000, lookahead=2)) for f, a in zip(full, audios)])
    alone = np.mean([_cer(f, " ".join(r.text for r in v2.run_batch(
        [AsrRequest("s", k, 0, 0, a[s:s + 8000], 0, AsrKind.FINAL) for k, s in enumerate(range(0, len(a), 8000))])))
        for f, a in zip(full, audios)])
    assert cached <= 0.1 and ahead <= 0.03
    assert cached < alone / 3


def test_cached_partials_through_run_batch_finals_unchanged(v2: GigaAmAsr) -> None:
    audio = _noise(1.5, seed=6)
    final = AsrRequest("r", 3, 0, 0, audio, 1, AsrKind.FINAL)
    before = v2.run_batch([final])[0]
    plain = AsrRequest("r", 1, 0, 8000, audio[8000:], 1, AsrKind.PARTIAL)
    first = AsrRequest("r", 2, 0, 0, audio[:8000], 1, AsrKind.PARTIAL, cache_lookahead=1)
    [window, cached] = v2.run_batch([plain, first])
    assert not window.whole_utterance and cached.whole_utterance
    assert window.text == v2.run_batch([AsrRequest("r", 4, 0, 0, audio[8000:], 2, AsrKind.FINAL)])[0].text
    assert v2.partial_caches is not None and len(v2.partial_caches) == 1
    after = v2.run_batch([final])[0]
    assert (after.text, after.words) == (before.text, before.words) and len(v2.partial_caches) == 0


def test_engines_without_the_torch_encoder_decode_cached_partials_alone(v2: GigaAmAsr) -> None:
    asr = GigaAmAsr(str(TINY_CKPT), device="cpu")
    asr.model.encoder = torch.nn.Identity()  # as the ONNX engine leaves it
    assert asr.partial_caches is None
