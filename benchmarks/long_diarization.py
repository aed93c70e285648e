"""Label stability over an hour: a composed conversation of 4 real voices, each leaving for long stretches and coming
back, streamed through a real server; are there exactly 4 speakers, and does every returning voice keep its label?

    python -m benchmarks.long_diarization                                  # 60 min at 8x, default models
    python -m benchmarks.long_diarization --minutes 20 --server-arg=--embedding-model --server-arg=campplus

The conversation (:func:`compose_long`): ``--blocks`` equal blocks; in each, 2 or 3 of the 4 voices talk in turns
(real clips from ``/work/shared/speech/speakers/``, via :mod:`benchmarks.compose`), so every voice is silent for
one or more whole blocks (5 minutes and more at 60 min) and then returns. The server (ASR: the tiny GigaAM test
checkpoint, diarization as configured) is started by :mod:`benchmarks.server_process`; the stream asks for
``speaker_turns``. Checks (all must hold for exit status 0):

- ``labels_over_5s``: exactly 4 labels hold at least 5 s of final turns (no phantom speaker, none lost), after the
  stream's ``speaker_merge`` events are applied to the turns as a client applies them (``labels_over_5s_as_sent``:
  before);
- ``returns_keep_label``: for every voice, every return after a silence of at least ``--return-gap`` seconds is
  labelled (majority of its speech in that return) with the label that voice has over the whole session;
- the 4 voices have 4 different labels.

Writes JSON to ``benchmarks/out/long_diarization-<time>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Optional, Sequence

if __package__ in (None, ""):  # run as a file: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from benchmarks.common import OUT_DIR, SAMPLE_RATE, command_line, stream_session, write_result
from benchmarks.compose import SPEAKERS_DIR, Conversation, _real_pieces, mix_turns
from benchmarks.server_process import connect_or_start

ROOT = Path(__file__).resolve().parent.parent
TINY_ASR = ROOT / "tests" / "assets" / "tiny_gigaam_ctc.ckpt"
VOICES = 4
MIN_LABEL_SECONDS = 5.0


def compose_long(minutes: float, blocks: int, seed: int = 0) -> tuple[Conversation, list[list[int]]]:
    """The conversation and, per block, the voices that talk in it (every voice sits out at least one block)."""
    rng = np.random.default_rng(seed)
    files: dict[str, list[Path]] = {}
    for path in sorted(SPEAKERS_DIR.glob("*__*.wav")):
        files.setdefault(path.name.split("__")[0], []).append(path)
    names = [n for n in sorted(files) if len(files[n]) >= 2]
    if len(names) < VOICES:
        raise SystemExit(f"need {VOICES} real speakers with 2+ clips in {SPEAKERS_DIR}")
    labels = [names[i] for i in rng.permutation(len(names))[:VOICES]]
    pools = [_real_pieces(files[label], rng) for label in labels]
    used = [0] * VOICES
    block = int(minutes * 60 * SAMPLE_RATE / blocks)
    plan = []
    for b in range(blocks):
        away = [b % VOICES] + ([int(rng.integers(VOICES))] if rng.random() < 0.5 else [])
        plan.append([v for v in range(VOICES) if v not in away] or [0, 1])
    placed: list[tuple[int, int, np.ndarray]] = []
    cursor, previous = SAMPLE_RATE // 2, -1
    for b, talkers in enumerate(plan):
        cursor = max(cursor, b * block)
        while cursor < (b + 1) * block:
            speaker = int(rng.choice([v for v in talkers if v != previous] or talkers))
            audio = pools[speaker][used[speaker] % len(pools[speaker])]
            used[speaker] += 1
            gain = 10 ** ((-20.0 + rng.uniform(-3, 3)) / 20) / max(1e-6, float(np.sqrt(np.mean(audio ** 2))))
            placed.append((speaker, cursor, (audio * gain).astype(np.float32)))
            cursor += len(audio) + int(rng.uniform(0.2, 1.0) * SAMPLE_RATE)
            previous = speaker
    return mix_turns(placed, labels, cursor + SAMPLE_RATE, rng, f"long_{VOICES}real_{minutes:g}min_s{seed}"), plan


def apply_merges(turns: Sequence[tuple[str, float, float]], merges: Sequence[tuple[str, str]]
                 ) -> list[tuple[str, float, float]]:
    """``turns`` relabelled by each ``(from, into)`` speaker merge in order (a merged label never comes back, so
    every turn can take every merge)."""
    out = list(turns)
    for merged, into in merges:
        out = [(into if label == merged else label, start, end) for label, start, end in out]
    return out


def labels_held(turns: Sequence[tuple[str, float, float]]) -> Counter:
    """Seconds of final turns per label."""
    held: Counter = Counter()
    for label, start, end in turns:
        held[label] += end - start
    return held


def check(reference: Sequence[tuple[str, int, int]], turns: Sequence[tuple[str, float, float]],
          return_gap: float, merges: Sequence[tuple[str, str]] = ()) -> dict[str, Any]:
    """The checks of the module docstring; ``turns`` are (label, start s, end s) final turns as sent, ``merges``
    the stream's ``(from, into)`` speaker merges in order (applied before anything is counted)."""
    as_sent = sorted(label for label, seconds in labels_held(turns).items() if seconds >= MIN_LABEL_SECONDS)
    turns = apply_merges(turns, merges)
    held = labels_held(turns)
    big = sorted(label for label, seconds in held.items() if seconds >= MIN_LABEL_SECONDS)

    def label_of(a: float, b: float) -> Optional[str]:
        overlap = Counter()
        for label, start, end in turns:
            if end > a and start < b:
                overlap[label] += min(b, end) - max(a, start)
        return overlap.most_common(1)[0][0] if overlap else None

    voices = sorted({v for v, _, _ in reference})
    per_voice: dict[str, Any] = {}
    for voice in voices:
        spans = sorted((a / SAMPLE_RATE, b / SAMPLE_RATE) for v, a, b in reference if v == voice)
        stretches = [[spans[0]]]  # the voice's speech, cut where it was silent for return_gap or more
        for a, b in spans[1:]:
            if a - stretches[-1][-1][1] >= return_gap:
                stretches.append([])
            stretches[-1].append((a, b))
        whole = Counter()
        for a, b in spans:
            label = label_of(a, b)
            if label is not None:
                whole[label] += b - a
        main = whole.most_common(1)[0][0] if whole else None
        labels = []
        for stretch in stretches:
            votes = Counter()
            for a, b in stretch:
                label = label_of(a, b)
                if label is not None:
                    votes[label] += b - a
            labels.append(votes.most_common(1)[0][0] if votes else None)
        per_voice[voice] = {"label": main, "stretches": len(stretches), "stretch_labels": labels,
                            "share": round(whole[main] / max(1e-9, sum(whole.values())), 3) if main else 0.0}
    mains = [v["label"] for v in per_voice.values()]
    return {"labels_held_s": {k: round(v, 1) for k, v in sorted(held.items())}, "labels_over_5s": big,
            "labels_over_5s_as_sent": as_sent, "merges": [list(m) for m in merges],
            "exactly_4_labels": len(big) == VOICES, "distinct_voice_labels": len(set(mains)) == VOICES,
            "returns": sum(v["stretches"] - 1 for v in per_voice.values()),
            "returns_keep_label": all(label == v["label"] for v in per_voice.values()
                                      for label in v["stretch_labels"]),
            "voices": per_voice}


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=60.0)
    p.add_argument("--blocks", type=int, default=12, help="blocks of the conversation (60 min: 5 min each)")
    p.add_argument("--speed", type=float, default=8.0, help="pacing: 8 = eight times real time")
    p.add_argument("--return-gap", type=float, default=120.0, help="seconds of silence that make a return")
    p.add_argument("--server-arg", action="append", default=[], metavar="ARG", help="extra server argument (repeat)")
    p.add_argument("--url", help="connect to this running server instead of starting one")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--finish-timeout", type=float, default=1800.0,
                   help="seconds the server may take after the last chunk (its --flush-timeout is set to it)")
    p.add_argument("--out-dir", type=Path, default=OUT_DIR)
    args = p.parse_args(argv)
    conversation, plan = compose_long(args.minutes, args.blocks, args.seed)
    audio = np.clip(conversation.audio * 32767, -32768, 32767).astype(np.int16)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    server_args = ["--asr-model", str(TINY_ASR), "--device", "cpu", "--flush-timeout", str(args.finish_timeout),
                   "--idle-timeout", str(args.finish_timeout), *args.server_arg]
    with ExitStack() as stack:
        url, _, _, server = connect_or_start(stack, args.url, None, server_args,
                                             args.out_dir / f"long_diarization-{stamp}-server.log")
        started = time.time()
        log = asyncio.run(stream_session(url, audio, speed=args.speed, chunk=SAMPLE_RATE // 10,
                                         start={"speaker_turns": True, "interim_results": False},
                                         finish_timeout=args.finish_timeout))
        wall = time.time() - started
    turns = [(t["speaker"], float(t["start"]), float(t["end"])) for _, e in log.events
             if e.get("type") == "speaker_turns" for t in e["turns"]]
    merges = [(e["from"], e["into"]) for _, e in log.events if e.get("type") == "speaker_merge"]
    result = {"benchmark": "long_diarization", "time": stamp, "command": command_line("long_diarization"),
              "minutes": round(len(audio) / SAMPLE_RATE / 60, 2), "speed": args.speed, "wall_s": round(wall, 1),
              "plan": plan, "server": server, "models": (log.ready or {}).get("models"), "error": log.error,
              "close_code": log.close_code, "turns": len(turns),
              **check(conversation.reference, turns, args.return_gap, merges)}
    write_result("long_diarization", result, args.out_dir, stamp)
    ok = (log.error is None and result["exactly_4_labels"] and result["distinct_voice_labels"]
          and result["returns_keep_label"])
    print(f"long_diarization: {'PASS' if ok else 'FAIL'} labels>=5s={result['labels_over_5s']} "
          f"returns={result['returns']} keep={result['returns_keep_label']}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
