"""``python -m server`` / ``rechka-server``: load the models once, serve protocol v1 on uvloop, drain on SIGTERM.

Exit codes: 0 after a clean shutdown, 2 when the server cannot start (a bad option, missing weights, a failed device
audit, random ASR weights without ``--allow-random-weights``); the reason is printed, without a traceback.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from typing import Any, Mapping, Optional, Sequence

from server.app import RechkaServer
from server.config import ServerConfig, config_from_args
from server.models.base import BatchModel
from streaming.config import SAMPLE_RATE

log = logging.getLogger("rechka.server")

EXIT_CANNOT_START = 2


class CannotStart(RuntimeError):
    """A reason the server will not start; its message is printed as is."""


def placement_dict(entry: Any) -> dict[str, Any]:
    """An audit entry (``ModelPlacement`` or a mapping) as the JSON placement served in ``ready`` and ``/health``."""
    if isinstance(entry, Mapping):
        return dict(entry)
    devices = list(getattr(entry, "devices", ()))
    return {"device": devices[0] if len(devices) == 1 else ",".join(devices) or "cpu",
            "dtypes": list(getattr(entry, "dtypes", ())), "parameters": int(getattr(entry, "parameters", 0))}


def load(config: ServerConfig) -> tuple[dict[str, BatchModel], dict[str, dict[str, Any]]]:
    """Load and audit the four models; :class:`CannotStart` with the reason when that is impossible."""
    from server.models.audit import PlacementError
    from server.models.cache import ModelUnavailable
    from server.models.device import DeviceUnavailable
    from server.models.registry import load_models

    try:
        models, report = load_models(config)
    except (ModelUnavailable, PlacementError, DeviceUnavailable) as exc:
        raise CannotStart(str(exc)) from None
    placement = {name: placement_dict(report[name]) for name in models}
    asr = models["asr"].describe()
    if asr.get("random_weights") and not config.allow_random_weights:
        raise CannotStart(
            f"The ASR model {asr.get('name', config.asr_model)!r} has random (untrained) weights, so every "
            "transcript would be garbage. Point --asr-model at a trained GigaAM model or checkpoint, or pass "
            "--allow-random-weights if this is a test.")
    return models, placement


async def serve_until_signal(server: RechkaServer,
                             signals: Sequence[signal.Signals] = (signal.SIGTERM, signal.SIGINT)) -> None:
    """Run a started server until one of ``signals``; then drain it (``shutdown_grace``) and return."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
        log.info("signal received: draining (up to %.1f s)", server.config.shutdown_grace)
        await server.drain()
        log.info("stopped")
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)


async def run(config: ServerConfig, models: Mapping[str, BatchModel],
              placement: Mapping[str, Mapping[str, Any]]) -> None:
    server = RechkaServer(config, models, placement)
    await server.start()
    for name, info in server.models_info.items():
        log.info("model %-12s %s on %s", name, info.get("name", "?"), info.get("device", "?"))
    log.info("listening on %s (health: /health, metrics: /metrics)", server.url)
    await serve_until_signal(server)


def print_config(config: ServerConfig) -> None:
    print("rechka-server configuration:", file=sys.stderr)
    for name, value in config.summary().items():
        print(f"  {name:22s} {value}", file=sys.stderr)


def main(argv: Optional[Sequence[str]] = None) -> int:
    try:
        config = config_from_args(argv)
    except ValueError as exc:
        print(f"rechka-server: {exc}", file=sys.stderr)
        return EXIT_CANNOT_START
    logging.basicConfig(level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if config.log_level.upper() != "DEBUG":  # one line per HTTP request and connection is too much
        logging.getLogger("rechka.websockets").setLevel(logging.WARNING)
    print_config(config)
    try:
        models, placement = load(config)
    except CannotStart as exc:
        print(f"\nrechka-server cannot start:\n\n{exc}\n", file=sys.stderr)
        return EXIT_CANNOT_START
    from server.models.registry import fit_session

    try:
        config = fit_session(config, models, placement["segmentation"]["device"])  # window, thresholds, step
    except ValueError as exc:  # e.g. a --diarization-step longer than the segmentation model's window
        print(f"\nrechka-server cannot start:\n\n{exc}\n", file=sys.stderr)
        return EXIT_CANNOT_START
    diarizer = config.session.diarizer  # what --diarization-step auto and the loaded models made of it
    print(f"  {'diarizer':22s} {diarizer.window / SAMPLE_RATE:g} s windows every {diarizer.step / SAMPLE_RATE:g} s, "
          f"latency {diarizer.latency / SAMPLE_RATE:g} s", file=sys.stderr)
    import uvloop

    try:
        uvloop.run(run(config, models, placement))
    except OSError as exc:  # the port is taken, a certificate is unreadable…
        print(f"rechka-server: {exc}", file=sys.stderr)
        return EXIT_CANNOT_START
    return 0


if __name__ == "__main__":
    sys.exit(main())
