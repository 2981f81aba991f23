"""Unknown-face review: private JPEG crops of strangers, kept only as long as the retention allows.

Off by default (`unknown_faces.enabled`): storing faces of people who never agreed to be enrolled
is a privacy cost, so an operator turns it on knowingly. Each crop is named `<event id>.jpg`, the id
of the MQTT `unknown` event and of its access log entry, so a review starts from either. The folder
is 0700 and every crop 0600; age (`max_days`) and size (`max_mb`, oldest deleted first) limits are
enforced on every write. Enrolling from a crop: `python tools/enroll.py add NAME --from-unknown ID`.

    python -m edge.unknown_faces --dir PATH list | show ID | purge [ID...]

Exit codes: 0 done, 2 usage or errors (unknown id, unreadable folder).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np

from edge.errors import EdgeError, ImageError

SUFFIX = ".jpg"
# Event ids are UUIDs; the stricter pattern keeps a crafted id from naming a file outside the folder.
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


class UnknownFaceError(EdgeError):
    """A crop that does not exist, a bad id, or a folder that cannot be used."""


@dataclass(frozen=True)
class StoredCrop:
    """One kept crop: its event id, file, modification time (epoch seconds) and size in bytes."""

    id: str
    path: Path
    mtime: float
    size: int

    @property
    def time_iso(self) -> str:
        return datetime.fromtimestamp(self.mtime, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def check_id(crop_id: str) -> str:
    """The id if it can name a crop file; UnknownFaceError otherwise."""
    if not _ID_RE.match(crop_id):
        raise UnknownFaceError(f"{crop_id!r} is not a crop id (the id of an 'unknown' event, e.g. from 'list')")
    return crop_id


def face_crop(image: np.ndarray, box: tuple[float, float, float, float], margin: float = 0.5) -> np.ndarray:
    """The face box widened by `margin` of its size on every side, clipped to the frame.

    The margin leaves the detector room to find the face again when the crop is enrolled; the
    rest of the frame (other people, the hallway) is not kept."""
    height, width = image.shape[:2]
    x, y, w, h = (float(v) for v in box)
    x1, y1 = max(int(x - margin * w), 0), max(int(y - margin * h), 0)
    x2, y2 = min(int(np.ceil(x + w + margin * w)), width), min(int(np.ceil(y + h + margin * h)), height)
    if x2 <= x1 or y2 <= y1:
        raise ValueError(f"face box {box} lies outside the {width}x{height} frame")
    return image[y1:y2, x1:x2]


class UnknownFaceStore:
    """The crop folder: private writes with retention, listing, lookup and deletion."""

    def __init__(self, directory: str | Path, max_days: float | None = None, max_mb: float | None = None) -> None:
        self.directory = Path(directory)
        self.max_days = max_days
        self.max_mb = max_mb

    def _ensure_dir(self) -> None:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)  # mkdir's mode is masked by the umask and ignored for an existing dir

    def save(self, crop_id: str, image: np.ndarray, box: tuple[float, float, float, float]) -> Path:
        """Write the face crop of an RGB frame as `<crop_id>.jpg` (0600), then enforce retention."""
        check_id(crop_id)
        self._ensure_dir()
        ok, encoded = cv2.imencode(SUFFIX, cv2.cvtColor(face_crop(image, box), cv2.COLOR_RGB2BGR),
                                   [cv2.IMWRITE_JPEG_QUALITY, 92])
        if not ok:
            raise UnknownFaceError(f"could not encode the crop for {crop_id}")
        path = self.directory / f"{crop_id}{SUFFIX}"
        fd, tmp = tempfile.mkstemp(prefix=f".{crop_id}.", suffix=".tmp", dir=self.directory)  # created 0600
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(encoded.tobytes())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        self.enforce_retention(keep=path)
        return path

    def crops(self) -> list[StoredCrop]:
        """Every kept crop, oldest first."""
        if not self.directory.is_dir():
            return []
        found = []
        for path in self.directory.glob(f"*{SUFFIX}"):
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            found.append(StoredCrop(path.stem, path, stat.st_mtime, stat.st_size))
        return sorted(found, key=lambda c: (c.mtime, c.id))

    def path_of(self, crop_id: str) -> Path:
        """The file of one crop; UnknownFaceError when there is none."""
        path = self.directory / f"{check_id(crop_id)}{SUFFIX}"
        if not path.is_file():
            raise UnknownFaceError(f"no unknown-face crop {crop_id!r} in {self.directory} (see 'list')")
        return path

    def delete(self, crop_id: str) -> None:
        self.path_of(crop_id).unlink()

    def purge(self) -> int:
        """Delete every crop; returns how many."""
        crops = self.crops()
        for crop in crops:
            crop.path.unlink(missing_ok=True)
        return len(crops)

    def enforce_retention(self, now: float | None = None, keep: Path | None = None) -> list[str]:
        """Delete crops older than max_days, then the oldest until the total fits max_mb.

        `keep` (the crop just written) is never deleted for size, so a cap smaller than one crop
        still keeps the latest face. Returns the deleted ids."""
        now = time.time() if now is None else now
        deleted: list[str] = []
        crops = self.crops()
        if self.max_days is not None:
            cutoff = now - self.max_days * 86400
            for crop in [c for c in crops if c.mtime < cutoff and c.path != keep]:
                crop.path.unlink(missing_ok=True)
                deleted.append(crop.id)
            crops = [c for c in crops if c.id not in deleted]
        if self.max_mb is not None:
            total = sum(c.size for c in crops)
            for crop in crops:
                if total <= self.max_mb * 1024 * 1024:
                    break
                if crop.path == keep:
                    continue
                crop.path.unlink(missing_ok=True)
                total -= crop.size
                deleted.append(crop.id)
        return deleted


def load_crop(path: Path) -> np.ndarray:
    """Decode a stored crop (RGB); ImageError for a corrupt file."""
    from edge.images import load_image

    return load_image(path)


# --- CLI ---------------------------------------------------------------------------------------------


def _cmd_list(store: UnknownFaceStore, args: argparse.Namespace) -> int:
    crops = store.crops()
    for crop in crops:
        print(f"{crop.id}\t{crop.time_iso}\t{crop.size} bytes")
    print(f"{len(crops)} crop(s), {sum(c.size for c in crops) / 1024:.1f} KiB in {store.directory}", file=sys.stderr)
    return 0


def _cmd_show(store: UnknownFaceStore, args: argparse.Namespace) -> int:
    path = store.path_of(args.id)
    load_crop(path)  # a corrupt crop is reported here rather than by whatever opens the path
    print(path)
    return 0


def _cmd_purge(store: UnknownFaceStore, args: argparse.Namespace) -> int:
    if args.ids:
        for crop_id in args.ids:
            store.path_of(crop_id)  # all ids checked before anything is deleted
        for crop_id in args.ids:
            store.delete(crop_id)
        count = len(args.ids)
    else:
        count = store.purge()
    print(f"deleted {count} crop(s) from {store.directory}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m edge.unknown_faces",
                                     description="Review the kept crops of unknown faces.",
                                     epilog="Enroll one: python tools/enroll.py --gallery G add NAME --from-unknown "
                                            "ID --unknown-dir PATH. Exit codes: 0 done, 2 usage or errors.")
    parser.add_argument("--dir", required=True, help="the crop folder (unknown_faces.path of the daemon)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="id, time (UTC) and size of every crop, oldest first")
    show = sub.add_parser("show", help="print the path of one crop")
    show.add_argument("id")
    purge = sub.add_parser("purge", help="delete the given crops, or all of them")
    purge.add_argument("ids", nargs="*")
    return parser


COMMANDS = {"list": _cmd_list, "show": _cmd_show, "purge": _cmd_purge}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 on --help
        return int(exc.code or 0)
    store = UnknownFaceStore(args.dir)
    try:
        if not store.directory.is_dir():
            raise UnknownFaceError(f"{store.directory}: no such folder")
        return COMMANDS[args.command](store, args)
    except (EdgeError, ImageError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
