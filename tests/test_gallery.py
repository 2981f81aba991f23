"""Gallery storage and matching, on random unit vectors (no models needed)."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from edge.errors import GalleryError
from edge.gallery import MAX_NAME_LENGTH, Gallery, validate_name

MODEL = "facenet-test-0123456789ab"
DIM = 128


def unit(rng: np.random.Generator, n: int = 1, dim: int = DIM) -> np.ndarray:
    vectors = rng.normal(size=(n, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def near(vector: np.ndarray, rng: np.random.Generator, noise: float = 0.02) -> np.ndarray:
    moved = vector + noise * rng.normal(size=vector.shape).astype(np.float32)
    return (moved / np.linalg.norm(moved, axis=-1, keepdims=True)).astype(np.float32)


def sha(i: int) -> str:
    return hashlib.sha256(str(i).encode()).hexdigest()


def add(gallery: Gallery, name: str, vectors: np.ndarray) -> None:
    gallery.add(name, vectors, [sha(i) for i in range(len(vectors))], [f"{name}_{i}.jpg" for i in range(len(vectors))])


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture
def gallery(tmp_path: Path) -> Gallery:
    g = Gallery(tmp_path / "gallery.db", MODEL)
    yield g
    g.close()


def test_match_finds_the_enrolled_person_and_rejects_strangers(gallery: Gallery, rng: np.random.Generator) -> None:
    people = {f"person{i}": unit(rng) for i in range(50)}
    for name, vector in people.items():
        add(gallery, name, vector)
    for name, vector in people.items():
        match = gallery.match(near(vector[0], rng), threshold=1.0)
        assert match.name == name and match.nearest == name
        assert match.distance < 0.5
    stranger = gallery.match(unit(rng)[0], threshold=1.0)
    assert stranger.name is None
    assert stranger.nearest in people
    assert stranger.distance > 1.0


def test_distance_is_the_minimum_over_a_persons_embeddings(gallery: Gallery, rng: np.random.Generator) -> None:
    a, b = unit(rng, 2)
    add(gallery, "alice", np.stack([a, b]))
    add(gallery, "bob", unit(rng))
    probe = near(b, rng, 0.01)
    match = gallery.match(probe, threshold=0.8)
    assert match.name == "alice"
    assert match.distance == pytest.approx(float(np.linalg.norm(probe - b)), abs=1e-4)
    assert gallery.person_distances(probe)["alice"] == pytest.approx(match.distance, abs=1e-5)


def test_match_many_equals_match(gallery: Gallery, rng: np.random.Generator) -> None:
    for i in range(20):
        add(gallery, f"p{i}", unit(rng, 3))
    probes = unit(rng, 7)
    many = gallery.match_many(probes, threshold=1.2)
    single = [gallery.match(p, threshold=1.2) for p in probes]
    for m, s in zip(many, single, strict=True):
        assert m.nearest == s.nearest and m.name == s.name
        assert m.distance == pytest.approx(s.distance, abs=1e-6)


def test_match_agrees_with_brute_force_distances(gallery: Gallery, rng: np.random.Generator) -> None:
    # The matrix is kept as columns (D, N) for speed; whatever the layout, every probe's nearest
    # person and distance must be those of the plain float64 distance to every stored row.
    rows, owners = [], []
    for i in range(300):
        vectors = unit(rng, 1 + i % 3)
        add(gallery, f"p{i:03d}", vectors)
        rows.append(vectors)
        owners += [f"p{i:03d}"] * len(vectors)
    rows = np.concatenate(rows).astype(np.float64)
    probes = np.concatenate([near(rows[::37], rng, 0.05), unit(rng, 5)])
    matches = gallery.match_many(probes, threshold=0.9)
    for probe, match in zip(probes, matches, strict=True):
        distances = np.linalg.norm(rows - probe.astype(np.float64), axis=1)
        best = int(np.argmin(distances))
        assert match.nearest == owners[best]
        assert match.distance == pytest.approx(distances[best], abs=1e-5)
        assert match.name == (owners[best] if distances[best] <= 0.9 else None)
        by_person = gallery.person_distances(probe)
        assert by_person[owners[best]] == pytest.approx(distances[best], abs=1e-5)
    assert gallery.size == len(rows) and gallery.dim == DIM
    assert all(m.name is not None for m in matches[:-5]), "probes near a stored row must be accepted"
    assert all(m.name is None for m in matches[-5:]), "random unit vectors must be rejected"


def test_empty_gallery_matches_nobody(gallery: Gallery, rng: np.random.Generator) -> None:
    match = gallery.match(unit(rng)[0], threshold=1.0)
    assert match.name is None and match.nearest is None and match.distance == float("inf")


def test_other_models_embeddings_are_never_compared(tmp_path: Path, rng: np.random.Generator) -> None:
    path = tmp_path / "g.db"
    old_vector = unit(rng)
    with Gallery(path, "old-model") as old:
        add(old, "alice", old_vector)
        add(old, "bob", unit(rng))
    with Gallery(path, MODEL) as new:
        assert new.stale_people() == ["alice", "bob"]
        assert new.match(old_vector[0], threshold=1.5).nearest is None
        add(new, "alice", unit(rng))
        assert new.stale_people() == ["bob"]
        assert new.people() == ["alice", "bob"]
        assert new.matchable_people() == ["alice"]
        assert {e.model_id for e in new.enrollments("alice")} == {"old-model", MODEL}


def test_provenance_is_stored_not_the_image(gallery: Gallery, rng: np.random.Generator) -> None:
    vectors = unit(rng, 2)
    gallery.add("alice", vectors, [sha(1), sha(2)], ["a.jpg", "b.png"])
    rows = gallery.enrollments("alice")
    assert [r.source for r in rows] == ["a.jpg", "b.png"]
    assert [r.image_sha256 for r in rows] == [sha(1), sha(2)]
    assert all(r.model_id == MODEL and r.enrolled_at.endswith("Z") for r in rows)
    np.testing.assert_array_equal(np.stack([r.embedding for r in rows]), vectors)


@pytest.mark.parametrize("bad", ["", "   ", "a" * (MAX_NAME_LENGTH + 1), "tab\there", 7])
def test_bad_names_are_refused(gallery: Gallery, rng: np.random.Generator, bad: object) -> None:
    with pytest.raises(GalleryError):
        add(gallery, bad, unit(rng))  # type: ignore[arg-type]
    assert gallery.people() == []


def test_names_are_stripped() -> None:
    assert validate_name("  Ada Lovelace ") == "Ada Lovelace"


def test_bad_embeddings_are_refused_and_nothing_is_stored(gallery: Gallery, rng: np.random.Generator) -> None:
    with pytest.raises(GalleryError, match="L2-normalized"):
        add(gallery, "x", unit(rng) * 2)
    with pytest.raises(GalleryError, match="NaN"):
        add(gallery, "x", np.full((1, DIM), np.nan, dtype=np.float32))
    with pytest.raises(GalleryError, match="image_sha256"):
        gallery.add("x", unit(rng, 2), [sha(1)], ["a.jpg"])
    with pytest.raises(GalleryError, match="sha256"):
        gallery.add("x", unit(rng), ["not-a-hash"], ["a.jpg"])
    add(gallery, "x", unit(rng))
    with pytest.raises(GalleryError, match="values"):
        add(gallery, "y", unit(rng, dim=64))
    assert gallery.people() == ["x"]
    with pytest.raises(GalleryError, match="values"):
        gallery.match(unit(rng, dim=64)[0], threshold=1.0)


def test_remove_and_rename(gallery: Gallery, rng: np.random.Generator) -> None:
    alice = unit(rng)
    add(gallery, "alice", alice)
    add(gallery, "bob", unit(rng, 2))
    gallery.rename("alice", "Alice B")
    assert gallery.match(alice[0], threshold=0.5).name == "Alice B"
    with pytest.raises(GalleryError, match="already enrolled"):
        gallery.rename("bob", "Alice B")
    with pytest.raises(GalleryError, match="no person"):
        gallery.rename("nobody", "x")
    assert gallery.remove("bob") == 2
    with pytest.raises(GalleryError, match="no person"):
        gallery.remove("bob")
    assert gallery.people() == ["Alice B"]


def test_files_are_private(tmp_path: Path, rng: np.random.Generator) -> None:
    path = tmp_path / "g.db"
    previous = os.umask(0o022)
    try:
        with Gallery(path, MODEL) as g:
            add(g, "alice", unit(rng))
            created = [p for p in tmp_path.iterdir() if p.name.startswith("g.db")]
            assert {p.name for p in created} >= {"g.db", "g.db-wal", "g.db-shm"}
            for p in created:
                assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
    finally:
        os.umask(previous)
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


@pytest.mark.parametrize("content", [b"", b"hello, not a database" * 10, b"\x89PNG\r\n\x1a\n" + bytes(500)])
def test_foreign_files_are_refused_and_left_untouched(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "g.db"
    path.write_bytes(content)
    with pytest.raises(GalleryError, match=str(path)):
        Gallery(path, MODEL)
    assert path.read_bytes() == content


def test_other_sqlite_databases_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE things (x INTEGER)")
    conn.commit()
    conn.close()
    before = path.read_bytes()
    with pytest.raises(GalleryError, match="not a gallery"):
        Gallery(path, MODEL)
    assert path.read_bytes() == before


def test_corrupt_gallery_is_refused(tmp_path: Path, rng: np.random.Generator) -> None:
    path = tmp_path / "g.db"
    with Gallery(path, MODEL) as g:
        add(g, "alice", unit(rng))
    data = bytearray(path.read_bytes())
    data[100:4096] = os.urandom(4096 - 100)  # keep the magic, destroy the schema page
    path.write_bytes(bytes(data))
    for name in ("g.db-wal", "g.db-shm"):
        (tmp_path / name).unlink(missing_ok=True)
    with pytest.raises(GalleryError, match=str(path)):
        Gallery(path, MODEL)


def test_newer_schema_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    Gallery(path, MODEL).close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    with pytest.raises(GalleryError, match="schema version '99'"):
        Gallery(path, MODEL)


def test_readonly_needs_an_existing_gallery_and_refuses_writes(tmp_path: Path, rng: np.random.Generator) -> None:
    with pytest.raises(GalleryError, match="no such gallery"):
        Gallery(tmp_path / "missing.db", MODEL, readonly=True)
    assert not (tmp_path / "missing.db").exists()
    with Gallery(tmp_path / "g.db", MODEL) as g:
        add(g, "alice", unit(rng))
    with Gallery(tmp_path / "g.db", MODEL, readonly=True) as ro:
        assert ro.people() == ["alice"]
        with pytest.raises(GalleryError, match="read-only"):
            add(ro, "bob", unit(rng))


def test_reader_sees_another_connections_writes_after_refresh(tmp_path: Path, rng: np.random.Generator) -> None:
    path = tmp_path / "g.db"
    writer = Gallery(path, MODEL)
    reader = Gallery(path, MODEL, readonly=True)
    bob = unit(rng)
    assert reader.refresh() is False
    add(writer, "bob", bob)
    assert reader.refresh() is True
    assert reader.match(bob[0], threshold=0.5).name == "bob"
    assert reader.refresh() is False
    writer.remove("bob")
    assert reader.refresh() is True
    assert reader.match(bob[0], threshold=0.5).name is None
    writer.close()
    reader.close()


def test_reader_sees_another_process_writes(tmp_path: Path, rng: np.random.Generator) -> None:
    """The enroll tool runs as its own process while the daemon keeps its gallery open."""
    path = tmp_path / "g.db"
    reader = Gallery(path, MODEL)
    vector = unit(rng)[0]
    np.save(tmp_path / "v.npy", vector)
    script = textwrap.dedent(f"""
        import numpy as np
        from edge.gallery import Gallery
        g = Gallery({str(path)!r}, {MODEL!r})
        g.add("carol", np.load({str(tmp_path / 'v.npy')!r})[None, :], [{sha(5)!r}], ["c.jpg"])
        g.close()
    """)
    repo = Path(__file__).resolve().parent.parent
    subprocess.run([sys.executable, "-c", script], check=True, cwd=repo, timeout=60)
    assert reader.refresh() is True
    assert reader.match(vector, threshold=0.5).name == "carol"
    reader.close()


def test_failed_write_leaves_the_gallery_as_it_was(gallery: Gallery, rng: np.random.Generator) -> None:
    add(gallery, "alice", unit(rng, 2))
    with pytest.raises(GalleryError):
        gallery.add("bob", unit(rng, 2), [sha(1), "bad"], ["a.jpg", "b.jpg"])
    assert gallery.people() == ["alice"]
    assert gallery.size == 2


def test_bad_threshold_is_refused(gallery: Gallery, rng: np.random.Generator) -> None:
    with pytest.raises(GalleryError, match="threshold"):
        gallery.match(unit(rng)[0], threshold=float("nan"))


def test_add_many_is_all_or_nothing(gallery: Gallery, rng: np.random.Generator) -> None:
    good = {"name": "alice", "embeddings": unit(rng), "image_sha256": [sha(1)], "source": ["a.jpg"]}
    bad = {"name": "bob", "embeddings": unit(rng, dim=64), "image_sha256": [sha(2)], "source": ["b.jpg"]}
    with pytest.raises(GalleryError, match="'bob'"):
        gallery.add_many([good, bad])
    assert gallery.people() == [] and gallery.size == 0
    gallery.add_many([good, {**bad, "embeddings": unit(rng)}])
    assert gallery.people() == ["alice", "bob"] and gallery.size == 2


def test_missing_directory_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(GalleryError, match="does not exist"):
        Gallery(tmp_path / "no" / "such" / "g.db", MODEL)
    with pytest.raises(GalleryError, match="not a regular file"):
        Gallery(tmp_path, MODEL)


def test_writer_and_reader_at_the_same_time(tmp_path: Path, rng: np.random.Generator) -> None:
    """A reader keeps matching while a writer holds an open write transaction (WAL)."""
    path = tmp_path / "g.db"
    writer = Gallery(path, MODEL)
    alice = unit(rng)
    add(writer, "alice", alice)
    reader = Gallery(path, MODEL, readonly=True)
    raw = sqlite3.connect(path, timeout=0.1)
    raw.execute("BEGIN IMMEDIATE")
    raw.execute("UPDATE people SET name = 'mallory' WHERE name = 'alice'")
    assert reader.refresh() is False  # uncommitted: invisible
    assert reader.match(alice[0], threshold=0.5).name == "alice"
    raw.rollback()
    raw.close()
    assert reader.people() == ["alice"]
    reader.close()
    writer.close()
