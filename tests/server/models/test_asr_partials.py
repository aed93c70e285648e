"""server/models/asr_partials.py: the cached partials' store, one encoder per stream channel, on the tiny model."""

from __future__ import annotations

from server.models.asr import GigaAmAsr
from server.models.asr_partials import PartialCaches
from streaming.work import AsrKind, AsrRequest
from tests.server.models.test_asr_cache import _noise, v2  # noqa: F401  (the tiny model fixture, one home)


def test_the_adapter_keeps_one_cache_per_channel_and_drops_it_at_the_final(v2: GigaAmAsr) -> None:
    audio = _noise(1.5, seed=5)
    caches = PartialCaches(v2)
    partial = lambda seq, ch, utt, a, b: AsrRequest("s", seq, ch, a, audio[a:b], utt, AsrKind.PARTIAL, cache_lookahead=0)  # noqa: E731
    caches.decode(partial(1, 0, 7, 0, 8000))
    caches.decode(partial(2, 1, 8, 0, 4000))
    assert len(caches) == 2
    second = caches.decode(partial(3, 0, 7, 8000, 16000))
    assert caches.restarts == 0 and second.whole_utterance
    assert second.words and second.words[0].start < 0  # the utterance's words, relative to this request's audio
    caches.decode(partial(4, 1, 8, 6000, 9000))  # not where channel 1's cache ends: it starts over
    assert caches.restarts == 1
    caches.decode(partial(5, 1, 9, 9000, 12000))  # the next utterance of channel 1 replaces its cache
    assert caches.restarts == 1 and len(caches) == 2
    final = AsrRequest("s", 6, 0, 0, audio, 7, AsrKind.FINAL)
    assert caches.finished(AsrRequest("s", 6, 0, 0, audio, 6, AsrKind.FINAL)) is None  # another utterance's final
    assert caches.finished(final).frames_out > 0 and len(caches) == 1
    small = PartialCaches(v2, max_caches=2)
    for ch in range(3):
        small.decode(partial(10 + ch, ch, 1, 0, 4000))
    assert len(small) == 2  # the least recently used went
