"""``rechka-stream``: stream a file or the microphone to a rechka server, show live captions, write transcripts.

    python -m clients.stream talk.mp3 --url ws://127.0.0.1:8000/v1/stream --out-dir out/
    python -m clients.stream --mic --url wss://asr.example.com/v1/stream --token $TOKEN

Files are decoded by ffmpeg (16 kHz PCM, mono unless ``--multichannel``) and sent at real time (``--speed``,
``--as-fast-as-possible``: the server slows the upload to its own pace, nothing is dropped). At the end
``<name>.json``, ``.srt``, ``.vtt``, ``.rttm`` and ``.txt`` are written.
After a dropped connection the client reconnects with backoff and resumes from the end of the last final (see
:mod:`clients.connection`). Ctrl-C once stops the audio and waits for the last finals; twice aborts.
Exit status: 0 done, 1 refused or failed, 2 bad arguments, 130 aborted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from streaming import wire

from clients import formats
from clients.captions import LiveCaptions
from clients.connection import ConnectOptions, GaveUp, Refused, StreamClient
from clients.sources import FileSource, MicSource, PacedSource, SourceError
from clients.view import TerminalView

__all__ = ["main", "build_parser", "parse_formats", "write_outputs", "OUTPUT_FORMATS"]

DEFAULT_URL = "ws://127.0.0.1:8000/v1/stream"
OUTPUT_FORMATS = ("json", "srt", "vtt", "rttm", "txt")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rechka-stream", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file", nargs="?", type=Path, help="any audio/video file ffmpeg can read")
    p.add_argument("--mic", action="store_true", help="stream the default microphone (needs sounddevice)")
    p.add_argument("--mic-device", help="sounddevice input device name or index")
    p.add_argument("--url", default=os.environ.get("RECHKA_URL", DEFAULT_URL),
                   help=f"server stream URL (env RECHKA_URL; default {DEFAULT_URL})")
    p.add_argument("--token", default=os.environ.get("RECHKA_TOKEN"), help="access token (env RECHKA_TOKEN)")
    p.add_argument("--cafile", help="CA bundle that signed the server's certificate (wss://)")
    p.add_argument("--insecure", action="store_true", help="do not verify the server's certificate (testing only)")
    pace = p.add_mutually_exclusive_group()
    pace.add_argument("--speed", type=float, default=1.0, help="send at this multiple of real time (default 1)")
    pace.add_argument("--as-fast-as-possible", action="store_true", help="send without pacing")
    p.add_argument("--multichannel", action="store_true", help="keep the file's channels; one transcript each")
    p.add_argument("--no-diarization", action="store_true", help="do not label speakers")
    p.add_argument("--max-speakers", type=int, help="upper bound on distinct speakers")
    p.add_argument("--settled-speakers", action="store_true",
                   help="finals wait for settled speakers (about 1.5 s later) instead of being revised")
    p.add_argument("--no-partials", action="store_true", help="ask for finals only")
    p.add_argument("--chunk-ms", type=float, default=100.0, help="audio per websocket message (default 100)")
    p.add_argument("--max-retries", type=int, default=5, help="reconnect attempts in a row (default 5; 0 = none)")
    p.add_argument("--out-dir", type=Path, default=Path("."), help="where transcripts go (default: .)")
    p.add_argument("--name", help="file name stem for transcripts (default: the input's stem, or mic-<time>)")
    p.add_argument("--formats", default=",".join(OUTPUT_FORMATS),
                   help=f"comma-separated subset of {','.join(OUTPUT_FORMATS)}, or 'none'")
    p.add_argument("--no-live", action="store_true", help="plain line output even on a terminal")
    return p


def parse_formats(text: str) -> tuple[str, ...]:
    if text.strip().lower() == "none":
        return ()
    chosen = tuple(f.strip().lower() for f in text.split(",") if f.strip())
    unknown = [f for f in chosen if f not in OUTPUT_FORMATS]
    if unknown:
        raise ValueError(f"unknown output format {', '.join(unknown)}; choose from {', '.join(OUTPUT_FORMATS)}")
    return chosen


def write_outputs(captions: LiveCaptions, out_dir: Path, stem: str, which: Sequence[str] = OUTPUT_FORMATS,
                  extra: Optional[dict[str, object]] = None) -> list[Path]:
    """Write the transcript files; return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    finals = sorted(captions.finals, key=lambda f: (f.start, f.channel))
    turns = captions.speaker_turns()
    writers = {
        "json": lambda: formats.to_json(finals, turns, captions.end, extra),
        "srt": lambda: formats.to_srt(finals),
        "vtt": lambda: formats.to_vtt(finals),
        "rttm": lambda: formats.to_rttm(turns, stem),
        "txt": lambda: formats.to_txt(finals),
    }
    paths = []
    for kind in which:
        path = out_dir / f"{stem}.{kind}"
        path.write_text(writers[kind](), encoding="utf-8")
        paths.append(path)
    return paths


async def _stream(args: argparse.Namespace, view: TerminalView, options: ConnectOptions, which: tuple[str, ...]) -> int:
    source = MicSource(args.chunk_ms, args.mic_device) if args.mic else FileSource(
        args.file, args.multichannel, args.chunk_ms)
    speed = None if (args.as_fast_as_possible or args.mic) else args.speed
    paced = PacedSource(source, speed)
    start = wire.Start(multichannel=args.multichannel, diarization=not args.no_diarization,
                       max_speakers=args.max_speakers, interim_results=not args.no_partials,
                       speaker_turns=not args.no_diarization, settled_speakers=args.settled_speakers)
    client = StreamClient(options, start, on_event=view.event, on_status=lambda s: view.refresh())
    view.attach(client.captions, client.status)

    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    interrupts = 0

    def on_sigint() -> None:
        nonlocal interrupts
        interrupts += 1
        if interrupts == 1:
            view.note("stopping: waiting for the last finals (Ctrl-C again to abort)")
            source.close()
        elif task is not None:
            task.cancel()

    try:
        loop.add_signal_handler(signal.SIGINT, on_sigint)
    except (NotImplementedError, RuntimeError):
        pass
    stem = args.name or (args.file.stem if args.file else time.strftime("mic-%Y%m%d-%H%M%S"))
    started = time.time()
    code = 0
    try:
        with view:
            await client.run(paced)
    except (Refused, GaveUp) as e:
        view.note(f"error: {e}", "bold red")
        code = 1
    except asyncio.CancelledError:
        view.note("aborted", "bold red")
        code = 130
    finally:
        loop.remove_signal_handler(signal.SIGINT)
    if client.status.lost_samples:
        view.note(f"{client.status.lost_samples / wire.SAMPLE_RATE:.1f} s of audio were lost while disconnected")
    if client.status.server_dropped_samples:
        view.note(f"the server skipped {client.status.server_dropped_samples / wire.SAMPLE_RATE:.1f} s of audio "
                  "(it fell behind this live stream)")
    if which and (client.captions.finals or code == 0):
        extra = {"source": str(args.file) if args.file else "microphone", "url": options.url,
                 "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
                 "sessions": client.captions.sessions, "complete": code == 0}
        paths = write_outputs(client.captions, args.out_dir, stem, which, extra)
        view.note(f"wrote {', '.join(str(p) for p in paths)}", "dim")
    return code


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if bool(args.file) == bool(args.mic):
        parser.error("give either a FILE or --mic")
    if args.speed is not None and args.speed <= 0:
        parser.error("--speed must be > 0")
    if args.max_speakers is not None and not 1 <= args.max_speakers <= 32:
        parser.error("--max-speakers must be between 1 and 32")
    try:
        which = parse_formats(args.formats)
        options = ConnectOptions(url=args.url, token=args.token, cafile=args.cafile, insecure=args.insecure,
                                 max_retries=args.max_retries, chunk_ms=args.chunk_ms)
    except ValueError as e:
        parser.error(str(e))
    view = TerminalView(live=False if args.no_live else None)
    try:
        return asyncio.run(_stream(args, view, options, which))
    except SourceError as e:
        view.note(f"error: {e}", "bold red")
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
