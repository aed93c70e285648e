"""benchmarks/chunked_encoder.py and partial_cache.py: the cached chunked GigaAM encoder's mechanics.

One final chunk is the ordinary forward; the front end and subsampling fed in pieces compute exactly the whole
utterance's frames; chunks of real (held-out espeak-ng) speech decode close to the full forward; the partial ASR
keeps one cache per utterance and drops it at the final."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks.chunked_encoder import ChunkedEncoder
from benchmarks.partial_cache import CachedAsr
from server.models.asr import GigaAmAsr
from server.models.gigaam_compat import encode_batch, encode_features, features_batch
from server.models.gigaam_net import GigaAmNet
from server.models.gigaam_spec import EncoderSpec
from streaming.work import AsrKind, AsrRequest
from tests.server.models.test_asr import TINY_CKPT, held_out  # noqa: F401

ASSETS = Path(__file__).resolve().parents[1] / "assets"
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
    cached = CachedAsr(asr, lookahead)
    result = None
    for k, a in enumerate(range(0, len(audio), chunk)):
        result = cached.run_batch([AsrRequest("s", k, 0, a, audio[a:a + chunk], 0, AsrKind.PARTIAL)])[0]
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


def test_the_partial_asr_keeps_one_cache_per_utterance_and_drops_it_at_the_final(v2: GigaAmAsr) -> None:
    audio = _noise(1.5, seed=5)
    cached = CachedAsr(v2)
    partial = lambda seq, utt, a, b: AsrRequest("s", seq, 0, a, audio[a:b], utt, AsrKind.PARTIAL)  # noqa: E731
    cached.run_batch([partial(1, 7, 0, 8000), partial(2, 8, 0, 4000)])
    assert set(cached.cache) == {("s", 7), ("s", 8)}
    cached.run_batch([partial(3, 7, 8000, 16000)])
    assert cached.restarts == 0 and cached.cache[("s", 7)].end == 16000
    cached.run_batch([partial(4, 8, 6000, 9000)])  # not where utterance 8's cache ends: it starts over
    assert cached.restarts == 1 and cached.cache[("s", 8)].start == 6000
    final = AsrRequest("s", 5, 0, 0, audio, 7, AsrKind.FINAL)
    [result] = cached.run_batch([final])
    assert result.text == v2.run_batch([final])[0].text  # the final is the ordinary decode
    assert set(cached.cache) == {("s", 8)} and len(cached.frames) == 1


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
def test_the_benchmark_runs_cached_and_uncached_variants_on_the_same_finals(tmp_path: Path) -> None:
    from benchmarks.partial_cache import main

    result = main(["--held-out", "3", "--compare", "budget_ratio=1.0,cadence=16000", "--cached", "1000",
                   "--cached", "500:2", "--out-dir", str(tmp_path)])
    variants = result["variants"]
    assert list(variants) == ["defaults", "no context, budget_ratio=1.0,cadence=16000",
                              "cached, budget 1.0, cadence 1000 ms, lookahead 0",
                              "cached, budget 1.0, cadence 500 ms, lookahead 2"]
    assert {v["utterances"] for v in variants.values()} == {3}
    plain, ahead = variants["cached, budget 1.0, cadence 1000 ms, lookahead 0"], \
        variants["cached, budget 1.0, cadence 500 ms, lookahead 2"]
    assert plain["cache_restarts"] == ahead["cache_restarts"] == 0
    assert plain["over_1"] == plain["frames_over_1"] == 0 and plain["max_encoded_frames_over_final_frames"] <= 1.0
    frames = lambda v: v["encoded_frames_over_final_frames"]["p50"]  # noqa: E731
    assert frames(plain) <= plain["partial_over_final"]["p50"] + 0.05  # each sample encoded once (frames round)
    assert frames(ahead) > ahead["partial_over_final"]["p50"] + 0.05  # lookahead frames pass the layers twice
    assert plain["quality"]["context_free_share"] == 1.0  # the windows are budget 1.0's: only the cache gives context
    assert json.loads(next(tmp_path.glob("partial-cache-*.json")).read_text())["variants"] == variants


def test_wall_times_compare_cached_chunks_windows_and_the_final(tmp_path: Path) -> None:
    from benchmarks.partial_cache import main

    wall = main(["--wall", "1.5", "--repeats", "1", "--out-dir", str(tmp_path)])["wall"]
    assert wall["final"]["over_final"] == 1.0
    assert set(wall) == {"final", "cached chunks, cadence 500 ms", "context-free windows, cadence 500 ms",
                         "cached chunks, cadence 1000 ms", "context-free windows, cadence 1000 ms"}
