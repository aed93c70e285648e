"""Check that diart at several latencies from one model pass (``diart_runner.py --latencies``) gives exactly what
diart's unmodified pipeline gives at each latency run on its own (``diart_runner.py --latency L``, one process each).

    python -m benchmarks.diart_latencies_check                      # sample.wav + one AMI snippet, every pair
    python -m benchmarks.diart_latencies_check --pairs pyannote-segmentation-whisperx+resemblyzer --latencies 0.5,5

Prints one line per pair and latency (turns, equal or not) and writes ``benchmarks/out/diart_latencies_check.json``;
exits 1 when any latency differs (labels, starts and ends compared exactly), 2 when diart's interpreter is missing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.der import DIART_PYTHON, OUT, PYANNOTE_SAMPLE, SHARED  # noqa: E402
from benchmarks.der_systems import Models, run_diart, run_diart_latencies  # noqa: E402
from server.models.cache import CAMPPLUS, EMBEDDING_DEFAULT, SEGMENTATION_3, SEGMENTATION_DEFAULT  # noqa: E402
from server.models.registry import fit_diarizer  # noqa: E402
from streaming.config import DiarizationOptions  # noqa: E402

PAIRS = [f"{s}+{e}" for s in (SEGMENTATION_DEFAULT, SEGMENTATION_3) for e in (EMBEDDING_DEFAULT, CAMPPLUS)]
WAVS = [PYANNOTE_SAMPLE / "sample.wav", SHARED / "conv" / "ami_snippets" / "ami_debug_trn00.wav"]


def check(pair: str, wavs: Sequence[Path], latencies: Sequence[float], python: Path) -> list[dict]:
    """One pair: the multi-latency run against one separate run per latency, with the options ``der.py`` uses."""
    segmentation, embedding = pair.split("+")
    models = Models("cpu", segmentation, embedding)
    base = fit_diarizer(DiarizationOptions(), models.segmentation, models.embedding)
    common = (python, base.new_speaker_threshold, base.tau_active, 0.3)
    started = time.time()
    together = run_diart_latencies(wavs, latencies, *common, models=models)
    together_s = time.time() - started
    rows = []
    for latency in latencies:
        started = time.time()
        alone = run_diart(wavs, latency, *common, models=models)
        rows.append({"pair": models.tag, "latency": latency, "equal": alone == together[latency],
                     "turns": {Path(k).name: len(v) for k, v in alone.items()},
                     "separate_wall_s": round(time.time() - started, 1), "together_wall_s": round(together_s, 1)})
        print(f"{models.tag} @{latency:g}s: {rows[-1]['turns']} turns, equal: {rows[-1]['equal']}", flush=True)
    return rows


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", default=",".join(PAIRS), help="SEGMENTATION+EMBEDDING model names")
    parser.add_argument("--latencies", default="0.5,1.5,5.0")
    parser.add_argument("--wavs", nargs="*", type=Path, default=WAVS)
    parser.add_argument("--diart-python", type=Path, default=DIART_PYTHON)
    parser.add_argument("--out", type=Path, default=OUT / "diart_latencies_check.json")
    args = parser.parse_args(argv)
    if not args.diart_python.is_file():
        print(f"no diart interpreter at {args.diart_python}", file=sys.stderr)
        return 2
    latencies = [float(x) for x in args.latencies.split(",")]
    wavs = [w for w in args.wavs if w.is_file()]
    rows = [row for pair in args.pairs.split(",") for row in check(pair, wavs, latencies, args.diart_python)]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"command": sys.argv, "wavs": [str(w) for w in wavs], "rows": rows}, indent=1))
    return 0 if all(row["equal"] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
