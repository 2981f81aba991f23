"""Enroll people into the gallery and manage it.

    python tools/enroll.py --gallery PATH add NAME IMAGE_OR_DIR... [--largest] [--force]
    python tools/enroll.py --gallery PATH add NAME --from-unknown ID [--unknown-dir PATH]
    python tools/enroll.py --gallery PATH list | show NAME | remove NAME | rename OLD NEW
    python tools/enroll.py --gallery PATH export FILE | import FILE

One sharp photo of a face is enough. Every photo passes the quality gates (one face, large
enough, sharp enough) or is refused with the reason; by default one refused photo means nothing
is enrolled, so a batch never half-succeeds silently (`--skip-refused` enrolls the good ones).
Photos that already match ANOTHER enrolled person are refused unless `--force`: that is either
a mistake in the name or two people the model cannot tell apart, and the door would confuse them.

The model comes from `--model`, else `model.path` in the config file (`--config`, default
./config.yaml when present), else models/facenet/facenet_dynamic.tflite. Runs as
`python tools/enroll.py` and as `python -m tools.enroll`.

Exit codes: 0 done, 1 photos refused by a gate or by the other-person check, 2 usage or errors.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `edge` importable from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import yaml  # noqa: E402

from edge.errors import ConfigError, EdgeError, GalleryError  # noqa: E402
from edge.gallery import Gallery, validate_name  # noqa: E402
from edge.quality_gates import DEFAULT_MIN_FACE_PX, DEFAULT_MIN_SHARPNESS, GateRefusal, GateSettings, select_face  # noqa: E402

DEFAULT_MODEL = "models/facenet/facenet_dynamic.tflite"
DEFAULT_MTCNN = "models/mtcnn"
DEFAULT_CONFIG = "config.yaml"
EXPORT_FORMAT = "edge-face-gallery-export/1"

EXIT_OK, EXIT_REFUSED, EXIT_ERROR = 0, 1, 2


# -- configuration ------------------------------------------------------------------------------


@dataclass
class Settings:
    """Where the model, detector and gallery are, after flags, config file and defaults."""

    model: str = DEFAULT_MODEL
    mtcnn_dir: str = DEFAULT_MTCNN
    threshold: float | None = None
    threads: int = 1
    gallery: str | None = None


def read_config(path: str | Path | None) -> dict[str, Any]:
    """The raw config mapping; {} when no file was named and ./config.yaml is absent."""
    explicit = path is not None
    path = Path(path if explicit else DEFAULT_CONFIG)
    if not path.exists():
        if explicit:
            raise ConfigError(f"{path}: config file not found")
        return {}
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config ({exc})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the config must be a mapping, got {type(data).__name__}")
    return data


def resolve_settings(args: argparse.Namespace) -> Settings:
    """Flags win over the config file, which wins over the defaults."""
    config = read_config(args.config)
    model_section = config.get("model") or {}
    gallery_section = config.get("gallery") or {}
    if not isinstance(model_section, dict) or not isinstance(gallery_section, dict):
        raise ConfigError(f"{args.config or DEFAULT_CONFIG}: 'model' and 'gallery' must be mappings")
    settings = Settings(
        model=str(model_section.get("path") or DEFAULT_MODEL),
        mtcnn_dir=str(model_section.get("mtcnn_dir") or DEFAULT_MTCNN),
        threshold=model_section.get("threshold"),
        threads=int(model_section.get("threads") or 1),
        gallery=gallery_section.get("path"),
    )
    for key in ("model", "mtcnn_dir", "threshold", "gallery"):
        value = getattr(args, key, None)
        if value is not None:
            setattr(settings, key, value)
    if settings.gallery is None:
        raise ConfigError("no gallery given: pass --gallery PATH (or set gallery.path in the config)")
    if settings.threshold is not None and not (isinstance(settings.threshold, (int, float))
                                               and 0 < float(settings.threshold) < 4):
        raise ConfigError(f"threshold must be an L2 distance in (0, 4), got {settings.threshold!r}")
    return settings


def model_id_of(model_path: str | Path) -> str:
    """The model's id from its metadata, without loading the network (for list/show/export)."""
    from edge.model_metadata import read_metadata

    return read_metadata(model_path).model_id


# -- enrollment ---------------------------------------------------------------------------------


@dataclass
class EnrollReport:
    """What happened to each photo of one `add`."""

    accepted: list[tuple[Path, str]] = field(default_factory=list)  # (photo, detail)
    refused: list[tuple[Path, str]] = field(default_factory=list)  # (photo, reason)
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # already enrolled, duplicates
    enrolled: int = 0

    @property
    def exit_code(self) -> int:
        return EXIT_REFUSED if self.refused else EXIT_OK


def enroll(recognizer: Any, gallery: Gallery, name: str, photos: list[Path], gates: GateSettings | None = None,
           threshold: float | None = None, force: bool = False, skip_refused: bool = False) -> EnrollReport:
    """Gate, embed and store the photos of one person; see the module docstring for the rules."""
    from edge.images import decode_image, read_image_bytes

    name = validate_name(name)
    gates = gates or GateSettings()
    threshold = recognizer.threshold if threshold is None else threshold
    report = EnrollReport()
    known = {e.image_sha256 for e in gallery.enrollments(name) if e.model_id == gallery.model_id} \
        if name in gallery.people() else set()
    embeddings, shas, sources = [], [], []
    for photo in photos:
        data = read_image_bytes(photo)
        digest = hashlib.sha256(data).hexdigest()
        if digest in known or digest in shas:
            report.skipped.append((photo, "this photo is already enrolled for this person"))
            continue
        image = decode_image(data, str(photo))  # unreadable or corrupt: an error, not a gate refusal
        faces = recognizer.detect(image)
        try:
            face = select_face(image, faces, gates, what=str(photo))
        except GateRefusal as exc:
            report.refused.append((photo, str(exc)))
            continue
        embedding = recognizer.enrollment_embedding(image, face)
        gallery.refresh()
        match = gallery.match(embedding, threshold)
        if match.name is not None and match.name != name and not force:
            report.refused.append((photo, f"{photo}: this face already matches enrolled person {match.name!r} "
                                          f"(distance {match.distance:.3f} <= threshold {threshold:.3f}); check the "
                                          f"name, or pass --force if they really are different people"))
            continue
        detail = f"face {face.box[2]:.0f}x{face.box[3]:.0f} px"
        if match.nearest is not None:
            detail += f", nearest other: {match.nearest} at {match.distance:.3f}" if match.nearest != name else \
                f", distance to {name}'s enrolled photos {match.distance:.3f}"
        report.accepted.append((photo, detail))
        embeddings.append(embedding)
        shas.append(digest)
        sources.append(photo.name)
    if report.refused and not skip_refused:
        return report
    if embeddings:
        gallery.add(name, np.stack(embeddings), shas, sources)
        report.enrolled = len(embeddings)
    return report


def unknown_dir_of(args: argparse.Namespace) -> Path:
    """--unknown-dir, else the config's unknown_faces.path, else unknown_faces/ beside queue.path (as the daemon)."""
    if args.unknown_dir:
        return Path(args.unknown_dir)
    from edge.config import QueueConfig, UnknownFacesConfig

    config = read_config(args.config)
    section = config.get("unknown_faces") or {}
    queue = config.get("queue") or {}
    if not isinstance(section, dict) or not isinstance(queue, dict):
        raise ConfigError(f"{args.config or DEFAULT_CONFIG}: 'unknown_faces' and 'queue' must be mappings")
    return UnknownFacesConfig(path=section.get("path")).resolved_path(str(queue.get("path") or QueueConfig().path))


def _cmd_add(args: argparse.Namespace, settings: Settings) -> int:
    from edge.images import expand_image_args
    from edge.recognizer import Recognizer
    from edge.unknown_faces import UnknownFaceStore

    name = validate_name(args.name)
    crop: Path | None = None
    if args.from_unknown is not None:
        if args.images:
            raise ConfigError("give photos or --from-unknown ID, not both")
        crop = UnknownFaceStore(unknown_dir_of(args)).path_of(args.from_unknown)
        photos = [crop]
    else:
        if not args.images:
            raise ConfigError("give the photos to enroll, or --from-unknown ID")
        photos = expand_image_args(args.images)
    if not photos:
        raise ConfigError(f"no image files found in {', '.join(map(str, args.images))}")
    recognizer = Recognizer.from_paths(settings.model, settings.gallery, mtcnn_dir=settings.mtcnn_dir,
                                       threads=settings.threads, min_face_size=20,
                                       threshold=settings.threshold, flip=args.flip, pad_retry=True)
    gates = GateSettings(min_face_px=args.min_face, min_sharpness=args.min_sharpness, largest=args.largest)
    try:
        report = enroll(recognizer, recognizer.gallery, name, photos, gates, force=args.force,
                        skip_refused=args.skip_refused)
    finally:
        recognizer.close()
    for photo, detail in report.accepted:
        print(f"ok: {photo} ({detail})")
    for photo, reason in report.skipped:
        print(f"skipped: {photo}: {reason}")
    for _photo, reason in report.refused:
        print(f"refused: {reason}", file=sys.stderr)
    if report.enrolled:
        print(f"enrolled {report.enrolled} photo(s) of {name!r} into {settings.gallery}")
        if crop is not None:  # the gallery keeps the template, not the face: the crop has served its purpose
            crop.unlink(missing_ok=True)
            print(f"deleted the unknown-face crop {crop}")
    elif report.refused and not args.skip_refused and report.accepted:
        print(f"nothing enrolled: {len(report.refused)} of {len(photos)} photo(s) refused; fix or leave them out, "
              f"or pass --skip-refused", file=sys.stderr)
    elif not report.refused:
        print(f"nothing new to enroll for {name!r}")
    return report.exit_code


# -- gallery management --------------------------------------------------------------------------


def _open_gallery(settings: Settings, readonly: bool) -> Gallery:
    return Gallery(settings.gallery, model_id_of(settings.model), readonly=readonly)


def _cmd_list(args: argparse.Namespace, settings: Settings) -> int:
    with _open_gallery(settings, readonly=True) as gallery:
        # A photo is stored as several embeddings (views); count photos by their sha256.
        current: dict[str, set[str]] = {}
        other: dict[str, set[str]] = {}
        for e in gallery.enrollments():
            bucket = current if e.model_id == gallery.model_id else other
            bucket.setdefault(e.name, set()).add(e.image_sha256)
        people = gallery.people()
        stale = set(gallery.stale_people())
        for name in people:
            note = "  STALE: re-enroll for the current model" if name in stale else ""
            extra = f" (+{len(other[name])} of other models)" if other.get(name) else ""
            print(f"{name}\t{len(current.get(name, ()))} photo(s){extra}{note}")
        print(f"{len(people)} people, model {gallery.model_id}"
              + (f", {len(stale)} stale" if stale else ""), file=sys.stderr)
    return EXIT_OK


def _cmd_show(args: argparse.Namespace, settings: Settings) -> int:
    with _open_gallery(settings, readonly=True) as gallery:
        rows = gallery.enrollments(args.name)
        photos = len({e.image_sha256 for e in rows})
        print(f"{validate_name(args.name)}: {len(rows)} embedding(s) from {photos} photo(s)")
        for e in rows:
            mark = "" if e.model_id == gallery.model_id else "  (other model: not matched)"
            print(f"  #{e.id}  {e.enrolled_at}  {e.source}  sha256 {e.image_sha256[:16]}...  {e.model_id}{mark}")
    return EXIT_OK


def _cmd_remove(args: argparse.Namespace, settings: Settings) -> int:
    with _open_gallery(settings, readonly=False) as gallery:
        count = gallery.remove(args.name)
    print(f"removed {validate_name(args.name)!r} ({count} embedding(s))")
    return EXIT_OK


def _cmd_rename(args: argparse.Namespace, settings: Settings) -> int:
    with _open_gallery(settings, readonly=False) as gallery:
        gallery.rename(args.old, args.new)
    print(f"renamed {validate_name(args.old)!r} to {validate_name(args.new)!r}")
    return EXIT_OK


def export_gallery(gallery: Gallery) -> dict[str, Any]:
    """The current model's embeddings with provenance, as a JSON-ready mapping."""
    people: dict[str, list[dict[str, Any]]] = {}
    for e in gallery.enrollments():
        if e.model_id != gallery.model_id:
            continue
        people.setdefault(e.name, []).append({
            "vector": [float(v) for v in e.embedding], "image_sha256": e.image_sha256, "source": e.source,
            "enrolled_at": e.enrolled_at})
    return {"format": EXPORT_FORMAT, "model_id": gallery.model_id, "dim": gallery.dim,
            "people": [{"name": name, "embeddings": rows} for name, rows in sorted(people.items())]}


def _write_private(path: Path, text: str) -> None:
    """Write atomically, readable by the owner only (the file holds biometric templates)."""
    directory = path.parent if str(path.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _cmd_export(args: argparse.Namespace, settings: Settings) -> int:
    with _open_gallery(settings, readonly=True) as gallery:
        data = export_gallery(gallery)
        stale = gallery.stale_people()
    path = Path(args.file)
    try:
        _write_private(path, json.dumps(data, indent=1) + "\n")
    except OSError as exc:
        raise GalleryError(f"{path}: cannot write export ({exc.strerror or exc})") from None
    count = sum(len(p["embeddings"]) for p in data["people"])
    print(f"exported {len(data['people'])} people ({count} embeddings of {data['model_id']}) to {path}")
    if stale:
        print(f"not exported (no embeddings of the current model): {', '.join(stale)}", file=sys.stderr)
    return EXIT_OK


def parse_export(data: Any, where: str, model_id: str) -> list[dict[str, Any]]:
    """Validate an export document into Gallery.add_many entries; GalleryError names the key at fault."""
    if not isinstance(data, dict) or data.get("format") != EXPORT_FORMAT:
        raise GalleryError(f"{where}: not a gallery export (format must be {EXPORT_FORMAT!r})")
    if data.get("model_id") != model_id:
        raise GalleryError(f"{where}: embeddings were made by model {data.get('model_id')!r}, the current model is "
                           f"{model_id!r}; embeddings of different models cannot be compared: re-enroll from photos")
    people = data.get("people")
    if not isinstance(people, list):
        raise GalleryError(f"{where}: 'people' must be a list")
    entries = []
    for i, person in enumerate(people):
        key = f"people[{i}]"
        if not isinstance(person, dict) or not isinstance(person.get("embeddings"), list):
            raise GalleryError(f"{where}: {key} must be an object with 'name' and 'embeddings'")
        try:
            name = validate_name(person.get("name"))
        except GalleryError as exc:
            raise GalleryError(f"{where}: {key}.name: {exc}") from None
        rows = person["embeddings"]
        if not rows:
            continue
        try:
            vectors = np.array([row["vector"] for row in rows], dtype=np.float32)
            entry = {"name": name, "embeddings": vectors, "image_sha256": [row["image_sha256"] for row in rows],
                     "source": [row["source"] for row in rows], "enrolled_at": [row["enrolled_at"] for row in rows]}
        except (KeyError, TypeError, ValueError) as exc:
            raise GalleryError(f"{where}: {key}.embeddings: each needs vector, image_sha256, source, enrolled_at "
                               f"({type(exc).__name__}: {exc})") from None
        if vectors.ndim != 2:
            raise GalleryError(f"{where}: {key}.embeddings: vectors of different lengths")
        entries.append(entry)
    return entries


def _cmd_import(args: argparse.Namespace, settings: Settings) -> int:
    path = Path(args.file)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise GalleryError(f"{path}: no such export file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise GalleryError(f"{path}: cannot read export ({exc})") from None
    except json.JSONDecodeError as exc:
        raise GalleryError(f"{path}: not valid JSON ({exc})") from None
    with _open_gallery(settings, readonly=False) as gallery:
        entries = parse_export(data, str(path), gallery.model_id)
        # Leave out what is already there (same person, same photo, same model): importing twice is harmless.
        have: set[tuple[str, str]] = {(e.name, e.image_sha256) for e in gallery.enrollments()
                                      if e.model_id == gallery.model_id}
        fresh, skipped = [], 0
        for entry in entries:
            keep = [i for i, sha in enumerate(entry["image_sha256"]) if (entry["name"], sha) not in have]
            skipped += len(entry["image_sha256"]) - len(keep)
            if keep:
                fresh.append({"name": entry["name"], "embeddings": entry["embeddings"][keep],
                              **{k: [entry[k][i] for i in keep] for k in ("image_sha256", "source", "enrolled_at")}})
        gallery.add_many(fresh)  # one transaction: all or nothing
    count = sum(len(e["image_sha256"]) for e in fresh)
    print(f"imported {count} embedding(s) of {len(fresh)} people from {path}"
          + (f"; {skipped} already present" if skipped else ""))
    return EXIT_OK


# -- command line -------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="enroll", description="Enroll people and manage the gallery.",
                                     epilog="Exit codes: 0 done, 1 photos refused, 2 usage or errors.")
    parser.add_argument("--gallery", help="gallery database (default: gallery.path of the config)")
    parser.add_argument("--model", help=f"embedding model .tflite (default: model.path of the config, else "
                                        f"{DEFAULT_MODEL})")
    parser.add_argument("--config", help=f"config file to read model.path etc. from (default: ./{DEFAULT_CONFIG} "
                                         f"when present)")
    parser.add_argument("--mtcnn-dir", dest="mtcnn_dir", help=f"detector models (default: {DEFAULT_MTCNN})")
    parser.add_argument("--threshold", type=float, help="match threshold for the other-person check "
                                                        "(default: the config's, else the model's)")
    sub = parser.add_subparsers(dest="command", required=True)
    add = sub.add_parser("add", help="enroll photos of one person (files or folders)")
    add.add_argument("name")
    add.add_argument("images", nargs="*")
    add.add_argument("--from-unknown", dest="from_unknown", metavar="ID",
                     help="enroll the kept crop of an 'unknown' event (its event id; see python -m "
                          "edge.unknown_faces list) and delete the crop after enrolling")
    add.add_argument("--unknown-dir", dest="unknown_dir", help="crop folder (default: unknown_faces.path of the "
                                                               "config, else unknown_faces beside queue.path)")
    add.add_argument("--largest", action="store_true", help="photos with several faces: enroll the largest face")
    add.add_argument("--force", action="store_true", help="enroll even when the face matches another person")
    add.add_argument("--skip-refused", action="store_true", help="enroll the photos that pass, skip the others")
    add.add_argument("--flip", action="store_true",
                     help="mirror-averaged embeddings (use it when the daemon recognizes with flip)")
    add.add_argument("--min-face", type=int, default=DEFAULT_MIN_FACE_PX,
                     help=f"smallest face side in pixels (default {DEFAULT_MIN_FACE_PX})")
    add.add_argument("--min-sharpness", type=float, default=DEFAULT_MIN_SHARPNESS,
                     help=f"smallest Laplacian variance of the face (default {DEFAULT_MIN_SHARPNESS:g})")
    sub.add_parser("list", help="enrolled people")
    show = sub.add_parser("show", help="one person's enrolled photos (provenance)")
    show.add_argument("name")
    remove = sub.add_parser("remove", help="delete a person")
    remove.add_argument("name")
    rename = sub.add_parser("rename", help="rename a person")
    rename.add_argument("old")
    rename.add_argument("new")
    export = sub.add_parser("export", help="write the embeddings and provenance to a JSON file")
    export.add_argument("file")
    imp = sub.add_parser("import", help="add the embeddings of an export (same model only)")
    imp.add_argument("file")
    return parser


COMMANDS = {"add": _cmd_add, "list": _cmd_list, "show": _cmd_show, "remove": _cmd_remove, "rename": _cmd_rename,
            "export": _cmd_export, "import": _cmd_import}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 on --help
        return int(exc.code or 0)
    if args.command == "add" and (args.min_face < 1 or not args.min_sharpness >= 0):
        print("error: --min-face must be >= 1 and --min-sharpness >= 0", file=sys.stderr)
        return EXIT_ERROR
    try:
        settings = resolve_settings(args)
        return COMMANDS[args.command](args, settings)
    except (EdgeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    raise SystemExit(main())
