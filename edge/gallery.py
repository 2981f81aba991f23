"""Enrolled people in one SQLite file, matched with one vectorized numpy operation.

Why SQLite: the enroll tool writes while the daemon reads. WAL mode lets both run at once, a
busy timeout absorbs short lock waits, and `PRAGMA data_version` tells the reader cheaply that
another process committed, so the daemon picks up new people without a restart (`refresh()`).

What is stored: per person several embeddings, each with the model that made it (`model_id`),
when it was enrolled and from what (the image's sha256 and file name -- never the image).
Embeddings of another model live in another space and are never compared; `stale_people()`
names the people who must be re-enrolled after a model change.

Matching distance (see docs/gallery.md): a person's distance is the minimum over their
embeddings (nearest neighbour), not the distance to their mean embedding. Enrollment photos are
meant to cover different conditions (glasses, light, pose); their mean lies between those
clusters and matches none of them well, while the minimum keeps every condition usable and
has the same meaning as the pairwise distances the threshold is calibrated on.
"""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.errors import GalleryError

APP_ID = "edge-face-gallery"
SCHEMA_VERSION = 1
MAX_NAME_LENGTH = 100
BUSY_TIMEOUT_S = 10.0
NORM_TOLERANCE = 1e-3
_SQLITE_MAGIC = b"SQLite format 3\x00"
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")

_SCHEMA = """
CREATE TABLE meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE people (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL
);
CREATE TABLE embeddings (
    id INTEGER PRIMARY KEY,
    person_id INTEGER NOT NULL REFERENCES people(id) ON DELETE CASCADE,
    model_id TEXT NOT NULL,
    dim INTEGER NOT NULL,
    vector BLOB NOT NULL,
    image_sha256 TEXT NOT NULL,
    source TEXT NOT NULL,
    enrolled_at TEXT NOT NULL
);
CREATE INDEX embeddings_person ON embeddings(person_id);
CREATE INDEX embeddings_model ON embeddings(model_id);
"""


@dataclass(frozen=True)
class Match:
    """Best match for one probe: `name` is None when the distance is above the threshold."""

    name: str | None
    distance: float
    nearest: str | None


@dataclass(frozen=True)
class Enrollment:
    """One stored embedding with its provenance."""

    id: int
    name: str
    model_id: str
    embedding: np.ndarray
    image_sha256: str
    source: str
    enrolled_at: str


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def validate_name(name: object) -> str:
    """A person's name, stripped; refuses empty, over-long or control-character names."""
    if not isinstance(name, str):
        raise GalleryError(f"person name must be a string, got {type(name).__name__}")
    stripped = name.strip()
    if not stripped:
        raise GalleryError(f"person name {name!r} is empty")
    if len(stripped) > MAX_NAME_LENGTH:
        raise GalleryError(f"person name {stripped[:20]!r}... is {len(stripped)} characters long "
                           f"(at most {MAX_NAME_LENGTH})")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in stripped):
        raise GalleryError(f"person name {stripped!r} contains control characters")
    return stripped


def _as_embeddings(embeddings: np.ndarray, what: str = "embeddings") -> np.ndarray:
    """(N, D) float32 rows that are finite and L2-normalized, or a GalleryError."""
    array = np.asarray(embeddings)
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2 or array.shape[1] == 0:
        raise GalleryError(f"{what} must be a (N, D) array, got shape {np.asarray(embeddings).shape}")
    if not np.issubdtype(array.dtype, np.floating):
        raise GalleryError(f"{what} must be floating point, got {array.dtype}")
    array = array.astype(np.float32, copy=False)
    if not np.all(np.isfinite(array)):
        raise GalleryError(f"{what} contain NaN or infinite values")
    norms = np.linalg.norm(array, axis=1)
    bad = np.flatnonzero(np.abs(norms - 1.0) > NORM_TOLERANCE)
    if bad.size:
        raise GalleryError(f"{what} must be L2-normalized; row {int(bad[0])} has norm {float(norms[bad[0]]):.4f}")
    return np.ascontiguousarray(array)


class Gallery:
    """The enrolled people of one model; safe to read in one process while another writes."""

    def __init__(self, path: str | Path, model_id: str, readonly: bool = False) -> None:
        if not isinstance(model_id, str) or not model_id.strip():
            raise GalleryError(f"model_id must be a non-empty string, got {model_id!r}")
        self.path = Path(path)
        self.model_id = model_id
        self.readonly = readonly
        self._lock = threading.RLock()
        self._data_version: int | None = None
        self._dirty = True
        # The enrolled embeddings as columns (D, N), C-contiguous: `probes @ self._columns` runs
        # OpenBLAS's row-wise kernel, about twice as fast as `probes @ rows.T` over the same
        # 10,000 x 512 floats (docs/recognition.md, Speed). Only this layout is kept in memory.
        self._columns = np.zeros((0, 0), dtype=np.float32)
        self._owner = np.zeros(0, dtype=np.int64)
        self._names: list[str] = []
        with _private_umask():  # SQLite may create the -wal/-shm files at any of the first queries
            self._conn = self._open()
            try:
                self.refresh()
            except BaseException:
                self._conn.close()
                raise

    # -- opening -----------------------------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        path = self.path
        if path.exists():
            self._check_header()
        elif self.readonly:
            raise GalleryError(f"{path}: no such gallery (enroll someone first with tools/enroll.py)")
        else:
            self._create()
        try:
            if self.readonly:
                conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_S,
                                       check_same_thread=False, isolation_level=None)
            else:
                conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_S, check_same_thread=False,
                                       isolation_level=None)
        except sqlite3.Error as exc:
            raise GalleryError(f"{path}: cannot open gallery ({exc})") from None
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            conn.execute("PRAGMA foreign_keys = ON")
            self._check_schema(conn)
            if not self.readonly:
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    raise GalleryError(f"{path}: cannot switch the gallery to WAL mode (got {mode})")
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise GalleryError(f"{path}: not a readable gallery database ({exc})") from None
        except GalleryError:
            conn.close()
            raise
        return conn

    def _check_header(self) -> None:
        """Refuse anything that is not an SQLite file before SQLite can touch it."""
        path = self.path
        if not path.is_file():
            raise GalleryError(f"{path}: exists but is not a regular file")
        try:
            with path.open("rb") as handle:
                header = handle.read(len(_SQLITE_MAGIC))
        except OSError as exc:
            raise GalleryError(f"{path}: cannot read gallery ({exc.strerror})") from None
        if header != _SQLITE_MAGIC:
            what = "an empty file" if not header else "not an SQLite database"
            raise GalleryError(f"{path}: {what}, not a gallery; refusing to touch it (move it away or pick "
                               f"another --gallery path)")

    def _check_schema(self, conn: sqlite3.Connection) -> None:
        path = self.path
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "meta" not in tables:
            raise GalleryError(f"{path}: an SQLite database but not a gallery (no meta table); refusing to use it")
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        if meta.get("app") != APP_ID:
            raise GalleryError(f"{path}: an SQLite database of another application ({meta.get('app')!r}), "
                               f"not a gallery")
        version = meta.get("schema_version")
        if version != str(SCHEMA_VERSION):
            raise GalleryError(f"{path}: gallery schema version {version!r} is not supported "
                               f"(this program reads version {SCHEMA_VERSION})")
        missing = {"people", "embeddings"} - tables
        if missing:
            raise GalleryError(f"{path}: gallery is damaged: missing table(s) {', '.join(sorted(missing))}")

    def _create(self) -> None:
        """Build the schema in a private temp file, then link it into place (never clobbers)."""
        path = self.path
        if not path.parent.is_dir():
            raise GalleryError(f"{path}: directory {path.parent} does not exist")
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            with _private_umask():
                conn = sqlite3.connect(str(tmp), isolation_level=None)
                try:
                    conn.executescript("BEGIN;" + _SCHEMA + "COMMIT;")
                    conn.executemany("INSERT INTO meta (key, value) VALUES (?, ?)",
                                     [("app", APP_ID), ("schema_version", str(SCHEMA_VERSION)),
                                      ("created_at", _now())])
                finally:
                    conn.close()
            os.chmod(tmp, 0o600)
            # Atomic, and fails instead of overwriting a file created meanwhile; then theirs is used
            # (and checked like any existing file).
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
        except (OSError, sqlite3.Error) as exc:
            raise GalleryError(f"{path}: cannot create gallery ({exc})") from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        self._check_header()

    def close(self) -> None:
        """Close the database connection."""
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Gallery:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading -----------------------------------------------------------------------------

    def _query(self, sql: str, params: tuple = ()) -> list[tuple]:
        try:
            with self._lock:  # one connection shared by the daemon's threads
                return self._conn.execute(sql, params).fetchall()
        except sqlite3.DatabaseError as exc:
            raise GalleryError(f"{self.path}: gallery read failed ({exc})") from None

    def refresh(self) -> bool:
        """Reload the match matrix if the file changed since the last load; True when reloaded."""
        with self._lock:
            version = self._query("PRAGMA data_version")[0][0]
            if not self._dirty and version == self._data_version:
                return False
            names_by_id = dict(self._query("SELECT id, name FROM people"))
            rows = self._query("SELECT person_id, dim, vector FROM embeddings WHERE model_id = ? "
                               "ORDER BY person_id, id", (self.model_id,))
            dims = {row[1] for row in rows}
            if len(dims) > 1:
                raise GalleryError(f"{self.path}: gallery is damaged: embeddings of model {self.model_id!r} "
                                   f"have several sizes {sorted(dims)}")
            dim = dims.pop() if dims else 0
            person_ids = np.fromiter((row[0] for row in rows), dtype=np.int64, count=len(rows))
            blob = b"".join(row[2] for row in rows)
            if len(blob) != len(rows) * dim * 4 or any(len(row[2]) != dim * 4 for row in rows):
                raise GalleryError(f"{self.path}: gallery is damaged: embeddings of {self.model_id!r} have "
                                   f"the wrong byte length")
            unique_ids, owner = np.unique(person_ids, return_inverse=True)
            try:
                names = [names_by_id[int(pid)] for pid in unique_ids]
            except KeyError as exc:
                raise GalleryError(f"{self.path}: gallery is damaged: embeddings of unknown person {exc}") from None
            matrix = np.frombuffer(blob, dtype="<f4").astype(np.float32).reshape(len(rows), dim)
            self._columns, self._owner, self._names = np.ascontiguousarray(matrix.T), owner.astype(np.int64), names
            self._data_version = version
            self._dirty = False
            return True

    @property
    def size(self) -> int:
        """Number of embeddings of the current model held in memory for matching."""
        with self._lock:
            if self._dirty:
                self.refresh()
        return int(self._columns.shape[1])

    @property
    def dim(self) -> int | None:
        """Embedding size of the current model in this gallery, None while it has none."""
        _ = self.size
        return int(self._columns.shape[0]) if self._columns.shape[1] else None

    def people(self) -> list[str]:
        """Every enrolled name (any model), sorted."""
        return [row[0] for row in self._query("SELECT name FROM people ORDER BY name")]

    def matchable_people(self) -> list[str]:
        """Names that have at least one embedding of the current model."""
        with self._lock:
            self.refresh()
            return sorted(self._names)

    def stale_people(self) -> list[str]:
        """People whose embeddings all come from other models: they must be re-enrolled."""
        rows = self._query(
            "SELECT p.name FROM people p WHERE NOT EXISTS "
            "(SELECT 1 FROM embeddings e WHERE e.person_id = p.id AND e.model_id = ?) ORDER BY p.name",
            (self.model_id,))
        return [row[0] for row in rows]

    def enrollments(self, name: str | None = None) -> list[Enrollment]:
        """Stored embeddings with provenance (all models), of one person or of everyone."""
        sql = ("SELECT e.id, p.name, e.model_id, e.dim, e.vector, e.image_sha256, e.source, e.enrolled_at "
               "FROM embeddings e JOIN people p ON p.id = e.person_id")
        params: tuple = ()
        if name is not None:
            name = validate_name(name)
            if not self._person_id(name):
                raise GalleryError(f"{self.path}: no person named {name!r}")
            sql += " WHERE p.name = ?"
            params = (name,)
        sql += " ORDER BY p.name, e.id"
        result = []
        for eid, pname, model_id, dim, blob, sha, source, when in self._query(sql, params):
            vector = np.frombuffer(blob, dtype="<f4").astype(np.float32)
            if vector.size != dim:
                raise GalleryError(f"{self.path}: gallery is damaged: embedding {eid} of {pname!r} has the wrong size")
            result.append(Enrollment(eid, pname, model_id, vector, sha, source, when))
        return result

    def _person_id(self, name: str) -> int | None:
        rows = self._query("SELECT id FROM people WHERE name = ?", (name,))
        return rows[0][0] if rows else None

    # -- matching ----------------------------------------------------------------------------

    def match(self, embedding: np.ndarray, threshold: float) -> Match:
        """Closest enrolled person of one L2-normalized embedding."""
        embedding = np.asarray(embedding)
        if embedding.ndim != 1:
            raise GalleryError(f"match() takes one embedding (D,), got shape {embedding.shape}")
        return self.match_many(embedding[None, :], threshold)[0]

    def match_many(self, embeddings: np.ndarray, threshold: float) -> list[Match]:
        """Closest enrolled person of each row; accepted when the distance is <= threshold.

        Uses the cached matrix as it is; call refresh() to pick up other processes' writes.
        """
        probes = _as_embeddings(embeddings, "probe embeddings")
        if not np.isfinite(threshold) or threshold <= 0:
            raise GalleryError(f"threshold must be a positive number, got {threshold!r}")
        with self._lock:
            if self._dirty:
                self.refresh()
            columns, owner, names = self._columns, self._owner, self._names
        if columns.shape[1] == 0:
            return [Match(None, float("inf"), None) for _ in range(probes.shape[0])]
        if probes.shape[1] != columns.shape[0]:
            raise GalleryError(f"{self.path}: probe embeddings have {probes.shape[1]} values, the gallery's "
                               f"{self.model_id} embeddings have {columns.shape[0]}")
        # For unit vectors d^2 = 2 - 2 cos: one matrix product, then the best column per probe.
        similarity = probes @ columns
        best = np.argmax(similarity, axis=1)
        best_sim = similarity[np.arange(probes.shape[0]), best]
        distances = np.sqrt(np.maximum(2.0 - 2.0 * best_sim, 0.0))
        result = []
        for row, distance in zip(best, distances, strict=True):
            nearest = names[owner[row]]
            dist = float(distance)
            result.append(Match(nearest if dist <= threshold else None, dist, nearest))
        return result

    def person_distances(self, embedding: np.ndarray) -> dict[str, float]:
        """Distance of one probe to every person (min over their embeddings); for tools, not the hot path."""
        probe = _as_embeddings(embedding, "probe embedding")[0]
        with self._lock:
            self.refresh()
            columns, owner, names = self._columns, self._owner, self._names
        if columns.shape[1] == 0:
            return {}
        if probe.shape[0] != columns.shape[0]:
            raise GalleryError(f"probe embedding has {probe.shape[0]} values, the gallery's have {columns.shape[0]}")
        distances = np.sqrt(np.maximum(2.0 - 2.0 * (probe @ columns), 0.0))
        best = np.full(len(names), np.inf)
        np.minimum.at(best, owner, distances)
        return {name: float(best[i]) for i, name in enumerate(names)}

    # -- writing -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        if self.readonly:
            raise GalleryError(f"{self.path}: gallery was opened read-only")
        with self._lock:
            conn = self._conn
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                raise GalleryError(f"{self.path}: gallery is busy or not writable ({exc})") from None
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            finally:
                self._dirty = True

    def add(self, name: str, embeddings: np.ndarray, image_sha256: list[str], source: list[str],
            enrolled_at: list[str] | None = None, model_id: str | None = None) -> None:
        """Add embeddings to a person (created when new). All rows are stored or none.

        `enrolled_at` and `model_id` exist for importing; enrollment leaves them to default.
        """
        self.add_many([{"name": name, "embeddings": embeddings, "image_sha256": image_sha256, "source": source,
                        "enrolled_at": enrolled_at, "model_id": model_id}])

    def _prepare(self, entry: dict) -> tuple[str, str, np.ndarray, list[str], list[str], list[str]]:
        """Validate one add() entry before anything is written."""
        name = validate_name(entry.get("name"))
        vectors = _as_embeddings(entry.get("embeddings"), f"embeddings of {name!r}")
        count = vectors.shape[0]
        model_id = entry.get("model_id") or self.model_id
        if not isinstance(model_id, str):
            raise GalleryError(f"add({name!r}): model_id must be a string, got {model_id!r}")
        shas, sources = list(entry.get("image_sha256") or []), list(entry.get("source") or [])
        if len(shas) != count or len(sources) != count:
            raise GalleryError(f"add({name!r}): {count} embeddings need as many image_sha256 and source entries, "
                               f"got {len(shas)} and {len(sources)}")
        for sha in shas:
            if not isinstance(sha, str) or not _SHA256_RE.match(sha):
                raise GalleryError(f"add({name!r}): {sha!r} is not a lowercase hex sha256")
        for src in sources:
            if not isinstance(src, str) or len(src) > 4096:
                raise GalleryError(f"add({name!r}): source must be a file name string, got {src!r:.60}")
        when = entry.get("enrolled_at")
        when = [_now()] * count if when is None else list(when)
        if len(when) != count or not all(isinstance(w, str) and w for w in when):
            raise GalleryError(f"add({name!r}): {count} embeddings need as many enrolled_at strings")
        return name, model_id, vectors, shas, sources, when

    def add_many(self, entries: list[dict]) -> None:
        """Several add() calls in one transaction: all are stored or none (import, bulk enrollment).

        Each entry holds the keyword arguments of add(): name, embeddings, image_sha256, source and
        optionally enrolled_at and model_id.
        """
        prepared = [self._prepare(entry) for entry in entries]
        try:
            with self._write() as conn:
                dims: dict[str, int] = dict(conn.execute("SELECT model_id, MIN(dim) FROM embeddings GROUP BY model_id"))
                for name, model_id, vectors, shas, sources, when in prepared:
                    dim = dims.setdefault(model_id, vectors.shape[1])
                    if dim != vectors.shape[1]:
                        raise GalleryError(f"{self.path}: embeddings of model {model_id!r} have {dim} values; "
                                           f"refusing {vectors.shape[1]} for {name!r}")
                    person_id = self._person_id(name)
                    if person_id is None:
                        person_id = conn.execute("INSERT INTO people (name, created_at) VALUES (?, ?)",
                                                 (name, _now())).lastrowid
                    conn.executemany(
                        "INSERT INTO embeddings (person_id, model_id, dim, vector, image_sha256, source, enrolled_at) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?)",
                        [(person_id, model_id, vectors.shape[1], vectors[i].astype("<f4").tobytes(), shas[i],
                          sources[i], when[i]) for i in range(vectors.shape[0])])
        except sqlite3.DatabaseError as exc:
            raise GalleryError(f"{self.path}: cannot add to the gallery ({exc})") from None

    def remove(self, name: str) -> int:
        """Delete a person and all their embeddings; returns how many embeddings went."""
        name = validate_name(name)
        try:
            with self._write() as conn:
                person_id = self._person_id(name)
                if person_id is None:
                    raise GalleryError(f"{self.path}: no person named {name!r}")
                removed = conn.execute("DELETE FROM embeddings WHERE person_id = ?", (person_id,)).rowcount
                conn.execute("DELETE FROM people WHERE id = ?", (person_id,))
        except sqlite3.DatabaseError as exc:
            raise GalleryError(f"{self.path}: cannot remove {name!r} ({exc})") from None
        return removed

    def rename(self, old: str, new: str) -> None:
        """Give a person another name; refuses a name that is already taken."""
        old, new = validate_name(old), validate_name(new)
        try:
            with self._write() as conn:
                person_id = self._person_id(old)
                if person_id is None:
                    raise GalleryError(f"{self.path}: no person named {old!r}")
                if old != new and self._person_id(new) is not None:
                    raise GalleryError(f"{self.path}: {new!r} is already enrolled; remove it or pick another name")
                conn.execute("UPDATE people SET name = ? WHERE id = ?", (new, person_id))
        except sqlite3.DatabaseError as exc:
            raise GalleryError(f"{self.path}: cannot rename {old!r} ({exc})") from None


@contextlib.contextmanager
def _private_umask() -> Iterator[None]:
    """Files SQLite creates meanwhile (database, -wal, -shm) are readable by the owner only."""
    previous = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(previous)
