"""The one home of GigaAM's published ASR model names and their facts (which head, punctuation, files, hashes).

Names, files and MD5 checksums are those of gigaam's upstream repository (``_MODEL_HASHES`` since the GigaAM-v3
commit bd77657, 2025-11-20); gigaam 0.1.0 from PyPI knows only v1/v2. The end-to-end (``e2e``) models and
``v1_rnnt`` need a SentencePiece tokenizer published next to the checkpoint as ``<name>_tokenizer.model`` (upstream
publishes no checksum for it). ``ctc``/``rnnt`` are the aliases of the pinned gigaam 0.1.0 (v2 models); upstream's
newer aliases (v3) are not followed, so the meaning of a configured name never changes under a user.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

__all__ = ["ALIASES", "DEFAULT_MODEL", "PUBLISHED", "PublishedModel", "RANDOM_MODELS", "RANDOM_PREFIX", "published"]


@dataclass(frozen=True)
class PublishedModel:
    """One published GigaAM ASR checkpoint.

    head: ``ctc`` or ``rnnt``. punctuated: writes punctuation, capitals and normalised numbers (the e2e models).
    md5: checksum of ``<name>.ckpt`` as upstream publishes it. tokenizer: needs ``<name>_tokenizer.model``.
    """

    name: str
    generation: int
    head: str
    punctuated: bool
    md5: str
    tokenizer: bool

    @property
    def checkpoint_file(self) -> str:
        return f"{self.name}.ckpt"

    @property
    def tokenizer_file(self) -> Optional[str]:
        return f"{self.name}_tokenizer.model" if self.tokenizer else None

    @property
    def files(self) -> tuple[str, ...]:
        return (self.checkpoint_file,) + ((self.tokenizer_file,) if self.tokenizer_file else ())


PUBLISHED: dict[str, PublishedModel] = {
    m.name: m
    for m in (
        PublishedModel("v2_ctc", 2, "ctc", False, "e00f59cb5d39624fb30d1786044795bf", False),
        PublishedModel("v2_rnnt", 2, "rnnt", False, "547460139acfebd842323f59ed54ab54", False),
        PublishedModel("v1_ctc", 1, "ctc", False, "f027f199e590a391d015aeede2e66174", False),
        PublishedModel("v1_rnnt", 1, "rnnt", False, "02c758999bcdc6afcb2087ef256d47ef", True),
        PublishedModel("v3_ctc", 3, "ctc", False, "73413e7be9c6a5935827bfab5c0dd678", False),
        PublishedModel("v3_rnnt", 3, "rnnt", False, "0fd2c9a1ff66abd8d32a3a07f7592815", False),
        PublishedModel("v3_e2e_ctc", 3, "ctc", True, "367074d6498f426d960b25f49531cf68", True),
        PublishedModel("v3_e2e_rnnt", 3, "rnnt", True, "2730de7545ac43ad256485a462b0a27a", True),
    )
}

#: gigaam 0.1.0's short names.
ALIASES: dict[str, str] = {"ctc": "v2_ctc", "rnnt": "v2_rnnt"}

#: The server's default ASR model: v2 CTC until v3 is measured on real weights here (see docs/models.md).
DEFAULT_MODEL = "v2_ctc"

#: ``random:<name>``: the full-size architecture with random weights, for speed benchmarks only.
RANDOM_PREFIX = "random:"
RANDOM_MODELS: tuple[str, ...] = ("v2_ctc", "v2_rnnt", "v3_ctc", "v3_rnnt")


def published(name: str) -> Optional[PublishedModel]:
    """The published model called ``name`` (or an alias of it); ``None`` if there is none."""
    return PUBLISHED.get(ALIASES.get(name, name))


def names() -> str:
    """The published names, comma-separated, for error messages."""
    return ", ".join(PUBLISHED)
