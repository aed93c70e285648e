"""benchmarks.der's model-output cache file, shared by runs one after another (and read by others meanwhile)."""

from __future__ import annotations

import pickle
from pathlib import Path

from benchmarks.der_systems import save_cache


def _entries(path: Path) -> dict:
    return pickle.loads(path.read_bytes())


def test_a_save_keeps_what_another_run_saved_since_this_one_loaded_the_file(tmp_path: Path) -> None:
    path = tmp_path / "cache" / "seg+emb.pkl"
    assert save_cache(path, {("seg", b"a"): 1})
    # another run loaded {a}, computed b and saved; this run (which loaded {a} too) computed c
    assert save_cache(path, {("emb", b"b"): 2})
    assert save_cache(path, {("emb", b"c"): 3, ("seg", b"a"): 1})
    assert _entries(path) == {("seg", b"a"): 1, ("emb", b"b"): 2, ("emb", b"c"): 3}
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temporary file left behind
    assert path.stat().st_mode & 0o777 == 0o644


def test_a_run_that_computed_nothing_leaves_the_file_untouched(tmp_path: Path) -> None:
    path = tmp_path / "seg+emb.pkl"
    save_cache(path, {("seg", b"a"): 1})
    before = path.stat().st_mtime_ns, path.read_bytes()
    path.write_bytes(pickle.dumps({("seg", b"a"): 1, ("emb", b"new"): 5}))  # saved by another run meanwhile
    written = path.stat().st_mtime_ns, path.read_bytes()
    assert not save_cache(path, {})
    assert (path.stat().st_mtime_ns, path.read_bytes()) == written != before
    assert not save_cache(tmp_path / "absent.pkl", {}) and not (tmp_path / "absent.pkl").exists()


def test_embedding_reuse_reaches_the_adapter_and_its_results_are_never_cached() -> None:
    """``benchmarks.der --embedding-reuse edge`` measures what the server's flag builds; such embeddings depend on
    the stream's earlier requests, so they are computed every run."""
    import pytest

    from benchmarks.der_systems import Models
    from server.models.cache import ModelUnavailable, fetch_segmentation_checkpoint

    try:
        fetch_segmentation_checkpoint()
    except ModelUnavailable as exc:
        pytest.skip(f"default segmentation weights unavailable: {exc}")
    edge, plain = Models(reuse="edge"), Models()
    assert edge.embedding.reuse is not None and edge.embedding.reuse.edge_only and edge._uncached == {"emb"}
    assert plain.embedding.reuse is None and plain._uncached == set()
