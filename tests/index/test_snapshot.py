"""Snapshots of every kind load back to the same answers; bad ones are refused with SnapshotError."""
from __future__ import annotations

import shutil

import numpy as np
import orjson
import pytest

from index import SnapshotError, load_snapshot, read_manifest, save_snapshot
from tests.index.test_item_index import DIM, ids, make


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_round_trip_keeps_answers_tombstones_and_offsets(kind, tmp_path):
    index, _, vecs = make(kind, n=2000)
    index.compact_ratio = 10.0
    index.remove(["p3", "p5"])                            # tombstones travel as missing slots
    path = save_snapshot(index, tmp_path / "snap", catalog_offsets={0: 41})
    m = read_manifest(path)
    assert m["kind"] == kind and m["count"] == 1998 and m["catalog_offsets"] == {"0": 41}
    assert (path / "structure.faiss").exists() == (kind != "flat")
    loaded = load_snapshot(path, dim=DIM, model_version="test")
    assert loaded.version == index.version and loaded.search_kind == kind and len(loaded) == 1998
    assert ids(loaded.search(vecs[:50], 10)) == ids(index.search(vecs[:50], 10))
    assert "p3" not in loaded and loaded.products["p7"] == index.products["p7"]
    np.testing.assert_array_equal(loaded.vectors_of(["p9"]), index.vectors_of(["p9"]))
    loaded.upsert([index.products["p7"]], vecs[1:2])     # a loaded index takes live updates
    assert ids(loaded.search(vecs[1:2], 2))[0][0] in ("p1", "p7")


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    index, _, _ = make("hnsw", n=1000)
    return save_snapshot(index, tmp_path_factory.mktemp("snap") / "good")


def spoiled(good, tmp_path, spoil):
    bad = tmp_path / "bad"
    shutil.copytree(good, bad)
    spoil(bad)
    return bad


def flip_byte(path, at=-100):
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


def edit_manifest(**changes):
    def spoil(folder):
        m = orjson.loads((folder / "manifest.json").read_bytes())
        m.update(changes)
        (folder / "manifest.json").write_bytes(orjson.dumps(m))
    return spoil


@pytest.mark.parametrize("spoil, message", [
    (lambda f: flip_byte(f / "vectors.npy"), "checksum mismatch"),
    (lambda f: flip_byte(f / "structure.faiss"), "checksum mismatch"),
    (lambda f: (f / "products.jsonl").unlink(), "checksum mismatch"),
    (lambda f: (f / "manifest.json").unlink(), "not an index snapshot"),
    (lambda f: (f / "manifest.json").write_text("{not json"), "corrupt"),
    (edit_manifest(format=1), "unsupported snapshot format"),
    (edit_manifest(kind="annoy"), "unknown index kind"),
    (edit_manifest(kind="ivf"), "not the ivf index the manifest names"),
    (edit_manifest(count=5), "products but vectors"),
])
def test_corrupt_snapshots_are_refused(good, tmp_path, spoil, message):
    with pytest.raises(SnapshotError, match=message):
        load_snapshot(spoiled(good, tmp_path, spoil), dim=DIM, model_version="test")


def test_mismatched_dimension_or_model_is_refused(good):
    with pytest.raises(SnapshotError, match="dimension 32, the encoder gives 384"):
        load_snapshot(good, dim=384, model_version="test")
    with pytest.raises(SnapshotError, match="built with model test, the worker runs other"):
        load_snapshot(good, dim=DIM, model_version="other")


def test_real_snapshot_of_the_shipped_catalogue(index_snapshot, text_encoder):
    index = load_snapshot(index_snapshot, dim=text_encoder.dim, model_version=text_encoder.model_version)
    assert len(index) == 800 and index.search_kind == "flat"
    q = text_encoder.encode([index.products[next(iter(index.products))].text])
    assert ids(index.search(q, 1))[0] == [next(iter(index.products))]
