"""Where model weights come from: the rechka cache directory, the pinned segmentation checkpoint, pyannote loading.

The default segmentation weights are the pyannote/segmentation PyanNet checkpoint that ships inside the
``whisperx==3.8.6`` wheel. :func:`fetch_segmentation_checkpoint` downloads that wheel once from the package index
(only the wheel: none of whisperx's dependencies), extracts the one asset into :func:`cache_dir` and checks its
SHA-256. Everything that cannot be had raises :class:`ModelUnavailable` with a paragraph that says what to do.
"""

from __future__ import annotations

import hashlib
import html
import logging
import os
import re
import shutil
import subprocess
import tempfile
import urllib.parse
import urllib.request
import warnings
import zipfile
from pathlib import Path
from typing import Any, Optional

log = logging.getLogger(__name__)

SEGMENTATION_DEFAULT = "pyannote-segmentation-whisperx"
"""Name of the default segmentation checkpoint (``--segmentation-model``); ``default`` means the same."""

WHISPERX_WHEEL = "whisperx-3.8.6-py3-none-any.whl"
WHISPERX_MEMBER = "whisperx/assets/pytorch_model.bin"
SEGMENTATION_SHA256 = "0b5b3216d60a2d32fc086b47ea8c67589aaeb26b7e07fcbe620d6d0b83e209ea"
SEGMENTATION_FILE = "segmentation/pyannote-segmentation-whisperx-3.8.6.bin"
DEFAULT_INDEX = "https://pypi.org/simple"
_CHUNK = 1 << 20


class ModelUnavailable(RuntimeError):
    """Weights that cannot be found, fetched or verified; the message says how to get them."""


def cache_dir() -> Path:
    """``$RECHKA_CACHE`` or ``~/.cache/rechka`` (created on first use)."""
    root = Path(os.environ.get("RECHKA_CACHE") or Path.home() / ".cache" / "rechka").expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def segmentation_checkpoint_path() -> Path:
    """Where the default segmentation checkpoint lives once fetched (it may not exist yet)."""
    return cache_dir() / SEGMENTATION_FILE


def fetch_segmentation_checkpoint(wheel: Optional[Path] = None, progress: bool = False) -> Path:
    """The verified default segmentation checkpoint, fetched and extracted on first use.

    ``wheel``: a local ``whisperx-3.8.6`` wheel to extract from instead of downloading (offline installs);
    ``$RECHKA_WHISPERX_WHEEL`` does the same. Raises :class:`ModelUnavailable` when the wheel cannot be had or
    the extracted file does not have the pinned SHA-256.
    """
    target = segmentation_checkpoint_path()
    if target.is_file():
        found = sha256_file(target)
        if found != SEGMENTATION_SHA256:
            raise ModelUnavailable(
                f"The cached segmentation checkpoint {target} has SHA-256 {found}, not the pinned "
                f"{SEGMENTATION_SHA256}: it is corrupt or was replaced. Delete it and run `rechka-fetch-models` "
                "to extract it again from the whisperx 3.8.6 wheel.")
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    wheel = wheel or (Path(os.environ["RECHKA_WHISPERX_WHEEL"]) if os.environ.get("RECHKA_WHISPERX_WHEEL") else None)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".fetch-") as tmp:
        if wheel is None:
            wheel = _download_wheel(Path(tmp), progress)
        elif not wheel.is_file():
            raise ModelUnavailable(f"The whisperx wheel {wheel} does not exist; give the path of "
                                   f"{WHISPERX_WHEEL} (from `pip download --no-deps whisperx==3.8.6`).")
        staged = Path(tmp) / "pytorch_model.bin"
        try:
            with zipfile.ZipFile(wheel) as archive, archive.open(WHISPERX_MEMBER) as src, open(staged, "wb") as dst:
                shutil.copyfileobj(src, dst, _CHUNK)
        except (KeyError, zipfile.BadZipFile) as exc:
            raise ModelUnavailable(f"{wheel} is not a whisperx 3.8.6 wheel holding {WHISPERX_MEMBER} ({exc}); "
                                   "download it again with `pip download --no-deps whisperx==3.8.6`.") from None
        found = sha256_file(staged)
        if found != SEGMENTATION_SHA256:
            raise ModelUnavailable(
                f"{WHISPERX_MEMBER} extracted from {wheel} has SHA-256 {found}, not the pinned "
                f"{SEGMENTATION_SHA256}. The wheel is not the published whisperx 3.8.6; fetch it from the official "
                "package index, or pass a pyannote checkpoint path with --segmentation-model.")
        os.replace(staged, target)
    log.info("segmentation checkpoint extracted to %s (sha256 verified)", target)
    return target


def _index_url() -> str:
    return (os.environ.get("RECHKA_PYPI_URL") or os.environ.get("PIP_INDEX_URL") or DEFAULT_INDEX).rstrip("/")


def _download_wheel(folder: Path, progress: bool) -> Path:
    """The whisperx wheel from the package index's simple API, falling back to ``pip download``."""
    errors = []
    try:
        return _download_from_simple_index(folder, progress)
    except (OSError, ValueError) as exc:
        errors.append(f"simple index {_index_url()}: {exc}")
    pip = shutil.which("pip") or shutil.which("pip3")
    if pip:
        command = [pip, "download", "--no-deps", "--only-binary=:all:", "whisperx==3.8.6", "-d", str(folder)]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode == 0 and (folder / WHISPERX_WHEEL).is_file():
            return folder / WHISPERX_WHEEL
        last = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        errors.append(f"pip download: {last}")
    raise ModelUnavailable(
        "Could not download the whisperx 3.8.6 wheel that holds the default segmentation weights ("
        + "; ".join(errors) + "). Connect to the package index (set RECHKA_PYPI_URL or PIP_INDEX_URL for a mirror), "
        "or copy a wheel made elsewhere with `pip download --no-deps whisperx==3.8.6` and pass it with "
        "`rechka-fetch-models --wheel PATH` (or $RECHKA_WHISPERX_WHEEL), or give a local pyannote checkpoint "
        "with --segmentation-model.")


def _download_from_simple_index(folder: Path, progress: bool) -> Path:
    page_url = f"{_index_url()}/whisperx/"
    listing = page_url + "index.html" if page_url.startswith("file:") else page_url  # a local index folder
    with urllib.request.urlopen(listing, timeout=30) as response:
        page = response.read().decode("utf-8", "replace")
    for href in re.findall(r'href="([^"]+)"', page):
        href = html.unescape(href)
        url, _, fragment = urllib.parse.urljoin(page_url, href).partition("#")
        if url.rsplit("/", 1)[-1] == WHISPERX_WHEEL:
            break
    else:
        raise ValueError(f"{WHISPERX_WHEEL} is not listed at {page_url}")
    expected = fragment[len("sha256="):] if fragment.startswith("sha256=") else None
    return download(url, folder / WHISPERX_WHEEL, f"whisperx wheel ({WHISPERX_WHEEL})", progress, expected)


def download(url: str, path: Path, description: str, progress: bool = False, sha256: Optional[str] = None,
             timeout: float = 60.0) -> Path:
    """``url`` → ``path`` through a temporary file (never a truncated ``path``), with a tqdm bar when ``progress``.

    Raises ``OSError`` (network) or ``ValueError`` (``sha256`` given and not matched).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.{os.getpid()}.part")
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(partial, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            bar = _progress_bar(total, description, progress)
            for block in iter(lambda: response.read(_CHUNK), b""):
                out.write(block)
                digest.update(block)
                bar.update(len(block))
            bar.close()
        if sha256 and digest.hexdigest() != sha256:
            raise ValueError(f"{url} has SHA-256 {digest.hexdigest()}, expected {sha256}")
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def _progress_bar(total: Optional[int], description: str, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=description, unit="B", unit_scale=True, unit_divisor=1024, disable=not enabled)


def load_pyannote_model(spec: str, what: str) -> tuple[Any, str]:
    """A pyannote ``Model`` (in eval mode, on the CPU) from a local checkpoint (file or folder) or a HF model id.

    Returns the model and the checkpoint it came from. The HF token is read from ``$HF_TOKEN``. Raises
    :class:`ModelUnavailable` with the fix when the checkpoint cannot be loaded.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"(?s).*torchcodec")  # rechka never decodes files with it
        from pyannote.audio import Model

    # Old pyannote checkpoints are upgraded in memory on every load; lightning announces it each time.
    logging.getLogger("lightning.pytorch.utilities.migration.utils").setLevel(logging.WARNING)
    local = Path(spec).expanduser()
    source = str(local) if local.exists() else spec
    try:
        model = Model.from_pretrained(source, token=os.environ.get("HF_TOKEN") or None)
    except Exception as exc:  # pyannote/huggingface raise many kinds; all mean "not available"
        model, reason = None, f"{type(exc).__name__}: {exc}"
    else:
        reason = "the checkpoint could not be downloaded"
    if model is None:
        if local.exists():
            raise ModelUnavailable(f"The {what} checkpoint {local} could not be loaded by pyannote.audio ({reason}). "
                                   "Give a pyannote.audio checkpoint file (pytorch_model.bin) or its folder.")
        raise ModelUnavailable(
            f"The {what} model {spec!r} is neither a local path nor loadable from the Hugging Face hub ({reason}). "
            "The hub may be unreachable, the id misspelt, or the model gated (accept its conditions and set "
            "HF_TOKEN). Download the checkpoint elsewhere and pass its path, or use the default "
            f"({SEGMENTATION_DEFAULT!r} for segmentation, 'resemblyzer' for embeddings).")
    model = model.eval()
    return model, source
