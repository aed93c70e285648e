"""How many words of finals sent before diarization settled get another speaker later (``speaker_revision``).

Each recording of the development sets of ``benchmarks/der.py`` (pyannote's sample, the AMI snippets and the 60 s
AMI excerpt, conversations composed from real voices) is streamed through a :class:`~streaming.session.Session` at
the defaults (Silero VAD, PyanNet segmentation, resemblyzer embeddings: the real models; the CPU server's
diarization step, ``--diarization-step``) with every request answered
at once, in 100 ms chunks, except final decodes: their results come back ``--asr-delay-ms`` of audio later (0: the
moment the utterance closes, the earliest any server could send the final, so its speakers are the least settled
they can be; a real server's GigaAM takes 0.2-0.5 s). ASR is not what is measured: a stand-in gives every
utterance one word per ``--word-ms`` of its audio, so words cover the speech as GigaAM's would. Revised share =
words whose speaker a revision changed / words in finals.

    python -m benchmarks.revisions                         # sample, ami, composed-real
    python -m benchmarks.revisions --datasets ami --limit 3
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.der import OUT, datasets, load_audio  # noqa: E402
from server.config import CPU_DIARIZATION_STEP  # noqa: E402
from server.offline import run_requests_by_kind  # noqa: E402
from streaming import wire  # noqa: E402
from streaming.config import SAMPLE_RATE, SessionConfig, ms  # noqa: E402
from streaming.session import Session  # noqa: E402
from streaming.transcript import relabel  # noqa: E402
from streaming.work import (AsrRequest, AsrResult, EmbeddingRequest, SegmentationRequest, VadRequest,  # noqa: E402
                            Word)


class TiledWords:
    """Stand-in ASR: one word per ``word`` samples of each request's audio (the last one shorter)."""

    def __init__(self, word: int) -> None:
        self.word = word

    def run_batch(self, requests: Sequence[AsrRequest]) -> list[AsrResult]:
        out = []
        for r in requests:
            n = len(r.audio)
            words = tuple(Word(f"w{k}", a, min(a + self.word, n)) for k, a in enumerate(range(0, n, self.word)))
            out.append(AsrResult(r.session_id, r.seq, " ".join(w.text for w in words), words))
        return out


def revised_share(events: Sequence[wire.ServerEvent]) -> dict[str, Any]:
    """Words in finals, words a revision gave another speaker, revisions, finals. A revision is compared with its
    final as the client holds it then, speaker merges applied (a merge renames a speaker; it revises no word)."""
    finals: dict[tuple[int, int], wire.Final] = {}
    revised = revisions = 0
    for e in events:
        if isinstance(e, wire.Final):
            finals[(e.channel, e.utterance_id)] = e
        elif isinstance(e, wire.SpeakerMerge):
            finals = {key: relabel(f, e) for key, f in finals.items()}
        elif isinstance(e, wire.SpeakerRevision):
            revisions += 1
            revised += sum(a.speaker != b.speaker for a, b in zip(finals[(e.channel, e.utterance_id)].words, e.words))
    words = sum(len(f.words) for f in finals.values())
    return {"finals": len(finals), "words": words, "revisions": revisions, "revised_words": revised,
            "revised_share": revised / words if words else 0.0}


def final_delays(events: Sequence[wire.ServerEvent], emitted_at: Sequence[int], fed: int) -> list[float]:
    """Seconds of audio fed between each utterance's end and its final (the VAD's closing silence included); the
    pieces of a final split by speaker (adjacent, sent together) are one utterance; finals flushed by the end of
    the stream are left out."""
    groups: list[list[int]] = []  # [sent at, utterance end]
    for event, at in zip(events, emitted_at):
        if isinstance(event, wire.Final):
            if groups and groups[-1] == [at, event.start]:
                groups[-1][1] = event.end  # the next piece of the same utterance
            else:
                groups.append([at, event.end])
    return [round((at - end) / SAMPLE_RATE, 3) for at, end in groups if at < fed]


def drive_with_asr_delay(session: Session, run: Any, pcm: bytes, delay: int, chunk: int = ms(100),
                         emitted_at: Optional[list[int]] = None) -> list:
    """Feed ``pcm`` in ``chunk``-sample messages answering every request at once, except final decodes, whose
    results are handed back once ``delay`` more samples have been fed (all of them at the end). ``emitted_at`` (if
    given) gets, per event, the samples fed when it came out."""
    events: list[wire.ServerEvent] = []
    waiting: list[tuple[int, Any]] = []  # (release at fed sample, result)

    def pump(fed: int, flush: bool = False) -> None:
        while True:
            work = session.work_to_run()
            out = session.events_to_send()
            events.extend(out)
            if emitted_at is not None:
                emitted_at.extend([fed] * len(out))
            due = [r for t, r in waiting if flush or t <= fed]
            waiting[:] = [(t, r) for t, r in waiting if not (flush or t <= fed)]
            if not work and not due:
                return
            for request, result in zip(work, run(work)):
                if isinstance(request, AsrRequest):
                    waiting.append((fed + delay, result))
                else:
                    due.append(result)
            for result in due:
                session.receive_result(result)

    fed = 0
    for a in range(0, len(pcm), 2 * chunk):
        session.receive_audio(pcm[a:a + 2 * chunk])
        fed += len(pcm[a:a + 2 * chunk]) // 2
        pump(fed)
    session.receive_end()
    pump(fed, flush=True)
    return events


def run_item(wav: Path, models: dict[type, Any], word: int, delay: int, step: int) -> dict[str, Any]:
    audio = load_audio(wav)
    pcm = (audio.clip(-1, 1) * 32767).astype("<i2").tobytes()
    config = SessionConfig(interim_results=False)
    session = Session("revisions", dataclasses.replace(config, diarizer=config.diarizer.at_step(step)))
    started = time.perf_counter()
    emitted_at: list[int] = []
    events = drive_with_asr_delay(session, run_requests_by_kind(models), pcm, delay, emitted_at=emitted_at)
    row = revised_share(events)
    row["final_after_end_s"] = final_delays(events, emitted_at, len(audio))
    row.update(audio_seconds=len(audio) / SAMPLE_RATE, wall_seconds=time.perf_counter() - started)
    return row


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", default="sample,ami,composed-real")
    p.add_argument("--limit", type=int, default=0, help="at most this many recordings per dataset (0 = all)")
    p.add_argument("--word-ms", type=float, default=400.0, help="stand-in word length (default 400 ms)")
    p.add_argument("--asr-delay-ms", type=float, default=0.0, help="audio fed before a final decode is back")
    p.add_argument("--diarization-step", type=float, default=CPU_DIARIZATION_STEP,
                   help=f"seconds between segmentation windows (default {CPU_DIARIZATION_STEP:g}: the CPU server's)")
    p.add_argument("--out", type=Path, default=OUT / "revisions.json")
    args = p.parse_args(argv)

    from server.models.embedding import ResemblyzerEmbedding
    from server.models.segmentation import SegmentationModel
    from server.models.vad import VadModel

    models: dict[type, Any] = {VadRequest: VadModel("cpu").run_batch,
                               SegmentationRequest: SegmentationModel(device="cpu", max_batch=32).run_batch,
                               EmbeddingRequest: ResemblyzerEmbedding(device="cpu", max_batch=32).run_batch,
                               AsrRequest: TiledWords(ms(args.word_ms)).run_batch}
    rows = []
    counts: dict[str, int] = {}
    for item in datasets(args.datasets.split(",")):
        counts[item.dataset] = counts.get(item.dataset, 0) + 1
        if args.limit and counts[item.dataset] > args.limit:
            continue
        row = {"dataset": item.dataset, "name": item.name, **run_item(item.wav, models, ms(args.word_ms), ms(args.asr_delay_ms),
                                                                 ms(1000 * args.diarization_step))}
        rows.append(row)
        print(json.dumps(row), flush=True)
    totals: dict[str, dict[str, Any]] = {}
    for row in rows + [dict(r, dataset="all") for r in rows]:
        t = totals.setdefault(row["dataset"], {"recordings": 0, "words": 0, "revised_words": 0, "revisions": 0,
                                               "finals": 0, "audio_seconds": 0.0})
        for key in ("words", "revised_words", "revisions", "finals", "audio_seconds"):
            t[key] += row[key]
        t["recordings"] += 1
    for name, t in totals.items():
        t["revised_share"] = t["revised_words"] / t["words"] if t["words"] else 0.0
        after = np.array([x for r in rows if name in ("all", r["dataset"]) for x in r["final_after_end_s"]])
        t["final_after_end_s"] = ({q: round(float(np.percentile(after, v)), 3) for q, v in
                                   (("p50", 50), ("p95", 95), ("max", 100))} if after.size else {})
    result = {"command": " ".join(["python -m benchmarks.revisions", *(argv or sys.argv[1:])]),
              "word_ms": args.word_ms, "asr_delay_ms": args.asr_delay_ms, "diarization_step_s": args.diarization_step,
              "rows": rows, "totals": totals}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print("| dataset | recordings | words | revised words | share | final after end p50 / p95 / max |\n"
          "|---|---|---|---|---|---|")
    for name, t in totals.items():
        after = " / ".join(f"{v:.2f}" for v in t["final_after_end_s"].values())
        print(f"| {name} | {t['recordings']} | {t['words']} | {t['revised_words']} | {100 * t['revised_share']:.2f} % "
              f"| {after} s |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
