"""tools/enroll.py on real photos: quality gates, the other-person check, management, export/import."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.errors import ImageError
from edge.gallery import Gallery
from edge.images import load_image
from edge.quality_gates import GateSettings
from edge.recognizer import ENROLLMENT_MARGIN_OFFSETS_PX
from tools import enroll as enroll_tool

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def gallery(tmp_path: Path, recognizer) -> Gallery:
    g = Gallery(tmp_path / "gallery.db", recognizer.model_id)
    yield g
    g.close()


def save(path: Path, rgb: np.ndarray) -> Path:
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return path


def cli(*args: str, gallery: Path, model: Path, mtcnn: Path) -> int:
    return enroll_tool.main(["--gallery", str(gallery), "--model", str(model), "--mtcnn-dir", str(mtcnn), *args])


def test_one_photo_enrolls(recognizer, gallery: Gallery, fr_images: dict[str, Path]) -> None:
    report = enroll_tool.enroll(recognizer, gallery, "biden", [fr_images["biden"]])
    assert report.exit_code == 0 and report.enrolled == 1 and not report.refused
    rows = gallery.enrollments("biden")
    assert len(rows) == 1 and rows[0].source == "biden.jpg" and rows[0].model_id == recognizer.model_id
    assert rows[0].image_sha256 == hashlib.sha256(fr_images["biden"].read_bytes()).hexdigest()
    # Enrolling the same photo again adds nothing.
    again = enroll_tool.enroll(recognizer, gallery, "biden", [fr_images["biden"]])
    assert again.enrolled == 0 and len(again.skipped) == 1


def test_enrollment_template_is_the_mean_of_its_views(recognizer, fr_images: dict[str, Path]) -> None:
    image = load_image(fr_images["obama2"])
    face = recognizer.detector.detect(image)[0]
    views = recognizer.enrollment_views(image, face)
    assert views.shape == (2 * len(ENROLLMENT_MARGIN_OFFSETS_PX), recognizer.embedder.metadata.embedding_size)
    # The first view is exactly the probe's embedding; the others differ (they are not copies).
    assert np.allclose(views[0], recognizer.embed_faces(image, [face])[0], atol=1e-6)
    assert np.all(np.linalg.norm(views[1:] - views[0], axis=1) > 1e-3)
    template = recognizer.enrollment_embedding(image, face)
    mean = views.mean(axis=0)
    assert np.allclose(template, mean / np.linalg.norm(mean), atol=1e-6)
    assert abs(np.linalg.norm(template) - 1.0) < 1e-5
    # Same person: the template stays close to the plain embedding of another photo of him.
    other = load_image(fr_images["obama3"])
    probe = recognizer.embed_faces(other, recognizer.detector.detect(other)[:1])[0]
    assert np.linalg.norm(template - probe) < recognizer.threshold


def test_several_faces_need_largest(recognizer, gallery: Gallery, shared_faces: Path) -> None:
    photo = shared_faces / "multiface" / "ageitgey__obama_and_biden.jpg"
    report = enroll_tool.enroll(recognizer, gallery, "someone", [photo])
    assert report.exit_code == 1 and "faces found" in report.refused[0][1] and "--largest" in report.refused[0][1]
    assert gallery.people() == []
    report = enroll_tool.enroll(recognizer, gallery, "someone", [photo], GateSettings(largest=True))
    assert report.enrolled == 1


@pytest.mark.parametrize("kind", ["blank", "noface"])
def test_no_face_is_refused(recognizer, gallery: Gallery, shared_faces: Path, tmp_path: Path, kind: str) -> None:
    if kind == "blank":
        photo = save(tmp_path / "blank.png", np.full((200, 200, 3), 128, np.uint8))
    else:
        photo = shared_faces / "noface" / "davisking__dog.jpg"
    report = enroll_tool.enroll(recognizer, gallery, "x", [photo])
    assert report.exit_code == 1 and "no face found" in report.refused[0][1] and str(photo) in report.refused[0][1]
    assert gallery.people() == []


def test_small_face_is_refused(recognizer, gallery: Gallery, fr_images: dict[str, Path], tmp_path: Path) -> None:
    from edge.images import load_image

    image = load_image(fr_images["obama2"])  # face about 280x401 px
    small = cv2.resize(image, None, fx=0.12, fy=0.12, interpolation=cv2.INTER_AREA)
    photo = save(tmp_path / "small.png", small)
    report = enroll_tool.enroll(recognizer, gallery, "obama", [photo])
    assert report.exit_code == 1 and "too small" in report.refused[0][1]
    report = enroll_tool.enroll(recognizer, gallery, "obama", [photo], GateSettings(min_face_px=20))
    assert report.enrolled == 1


def test_blurry_face_is_refused(recognizer, gallery: Gallery, fr_images: dict[str, Path], tmp_path: Path) -> None:
    from edge.images import load_image

    image = load_image(fr_images["obama2"])
    # sigma 10 px (2.5% of the 401 px face height): measured sharpness 6; its embedding is 1.07 from obama3
    blurred = cv2.GaussianBlur(image, (0, 0), sigmaX=10.0)
    photo = save(tmp_path / "blurred.png", blurred)
    report = enroll_tool.enroll(recognizer, gallery, "obama", [photo])
    assert report.exit_code == 1 and "too blurry" in report.refused[0][1]
    assert gallery.people() == []


def test_one_refusal_enrolls_nothing_unless_skip_refused(recognizer, gallery: Gallery, fr_images: dict[str, Path],
                                                         tmp_path: Path) -> None:
    blank = save(tmp_path / "blank.png", np.zeros((120, 120, 3), np.uint8))
    report = enroll_tool.enroll(recognizer, gallery, "obama", [fr_images["obama2"], blank])
    assert report.exit_code == 1 and report.enrolled == 0 and gallery.people() == []
    report = enroll_tool.enroll(recognizer, gallery, "obama", [fr_images["obama2"], blank], skip_refused=True)
    assert report.exit_code == 1 and report.enrolled == 1 and gallery.people() == ["obama"]


def test_photo_of_another_enrolled_person_is_refused_unless_forced(recognizer, gallery: Gallery,
                                                                  fr_images: dict[str, Path]) -> None:
    assert enroll_tool.enroll(recognizer, gallery, "obama", [fr_images["obama2"]]).enrolled == 1
    report = enroll_tool.enroll(recognizer, gallery, "barack", [fr_images["obama3"]])
    assert report.exit_code == 1 and "already matches enrolled person 'obama'" in report.refused[0][1]
    assert gallery.people() == ["obama"]
    # A second photo of the same person is of course fine ...
    assert enroll_tool.enroll(recognizer, gallery, "obama", [fr_images["obama3"]]).enrolled == 1
    # ... and a different person is not held up by the check.
    assert enroll_tool.enroll(recognizer, gallery, "biden", [fr_images["biden"]]).enrolled == 1
    forced = enroll_tool.enroll(recognizer, gallery, "barack", [fr_images["obama"]], GateSettings(largest=True),
                                force=True)
    assert forced.enrolled == 1 and set(gallery.people()) == {"obama", "biden", "barack"}


def test_unreadable_image_is_an_error(recognizer, gallery: Gallery, tmp_path: Path) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    with pytest.raises(ImageError, match="broken.jpg"):
        enroll_tool.enroll(recognizer, gallery, "x", [broken])
    with pytest.raises(ImageError, match="no such file"):
        enroll_tool.enroll(recognizer, gallery, "x", [tmp_path / "missing.jpg"])
    assert gallery.people() == []


def test_cli_add_and_management(tmp_path: Path, facenet_model: Path, mtcnn_dir: Path, fr_images: dict[str, Path],
                                shared_faces: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "g.db"
    kw = {"gallery": db, "model": facenet_model, "mtcnn": mtcnn_dir}
    group = shared_faces / "multiface" / "ageitgey__obama_and_biden.jpg"
    assert cli("add", "Barack Obama", str(group), **kw) == 1
    assert "--largest" in capsys.readouterr().err
    assert cli("add", "Barack Obama", str(fr_images["obama"]), "--largest", **kw) == 0
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"nope")
    assert cli("add", "Joe", str(broken), **kw) == 2
    assert "broken.png" in capsys.readouterr().err
    assert cli("add", "  ", str(fr_images["biden"]), **kw) == 2
    capsys.readouterr()

    assert cli("list", **kw) == 0
    assert "Barack Obama\t1 photo(s)" in capsys.readouterr().out
    assert cli("show", "Barack Obama", **kw) == 0
    assert "obama.jpg" in capsys.readouterr().out
    assert cli("rename", "Barack Obama", "Obama", **kw) == 0
    assert cli("show", "Barack Obama", **kw) == 2
    assert "no person named" in capsys.readouterr().err
    assert cli("remove", "Obama", **kw) == 0
    assert cli("remove", "Obama", **kw) == 2
    with Gallery(db, "x", readonly=True) as g:
        assert g.people() == []


def test_export_import_roundtrip_and_model_check(tmp_path: Path, facenet_model: Path, mtcnn_dir: Path,
                                                 recognizer, fr_images: dict[str, Path],
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "g.db"
    with Gallery(db, recognizer.model_id) as g:
        enroll_tool.enroll(recognizer, g, "biden", [fr_images["biden"]])
        enroll_tool.enroll(recognizer, g, "obama", [fr_images["obama2"], fr_images["obama3"]])
        before = sorted((e.image_sha256, e.embedding.tobytes()) for e in g.enrollments())
    kw = {"model": facenet_model, "mtcnn": mtcnn_dir}
    exported = tmp_path / "export.json"
    assert cli("export", str(exported), gallery=db, **kw) == 0
    assert stat.S_IMODE(exported.stat().st_mode) == 0o600
    data = json.loads(exported.read_text())
    assert data["model_id"] == recognizer.model_id and len(data["people"]) == 2

    fresh = tmp_path / "fresh.db"
    assert cli("import", str(exported), gallery=fresh, **kw) == 0
    assert cli("import", str(exported), gallery=fresh, **kw) == 0  # twice: nothing duplicated
    assert "3 already present" in capsys.readouterr().out
    with Gallery(fresh, recognizer.model_id) as g:
        rows = g.enrollments()
        assert len(rows) == 3 and {r.name for r in rows} == {"biden", "obama"}
        assert sorted((r.image_sha256, r.embedding.tobytes()) for r in rows) == before

    data["model_id"] = "facenet-fp32-000000000000"
    other = tmp_path / "other.json"
    other.write_text(json.dumps(data))
    empty = tmp_path / "empty.db"
    assert cli("import", str(other), gallery=empty, **kw) == 2
    assert "re-enroll" in capsys.readouterr().err
    with Gallery(empty, recognizer.model_id) as g:
        assert g.people() == []
    for bad in ("{not json", json.dumps({"format": "something else"})):
        other.write_text(bad)
        assert cli("import", str(other), gallery=empty, **kw) == 2
        assert str(other) in capsys.readouterr().err


def test_stale_people_after_a_model_change(tmp_path: Path, facenet_model: Path, mtcnn_dir: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "g.db"
    with Gallery(db, "facenet-fp32-aaaaaaaaaaaa") as old:
        vector = np.zeros((1, 512), np.float32)
        vector[0, 0] = 1
        old.add("alice", vector, ["a" * 64], ["alice.jpg"])
    assert cli("list", gallery=db, model=facenet_model, mtcnn=mtcnn_dir) == 0
    assert "STALE" in capsys.readouterr().out


def test_corrupt_gallery_is_refused_and_untouched(tmp_path: Path, facenet_model: Path, mtcnn_dir: Path,
                                                  fr_images: dict[str, Path],
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "g.db"
    db.write_bytes(b"SQLite format 3\x00" + os.urandom(3000))
    before = db.read_bytes()
    assert cli("add", "biden", str(fr_images["biden"]), gallery=db, model=facenet_model, mtcnn=mtcnn_dir) == 2
    assert cli("list", gallery=db, model=facenet_model, mtcnn=mtcnn_dir) == 2
    assert str(db) in capsys.readouterr().err
    assert db.read_bytes() == before


def test_model_from_config_and_missing_model(tmp_path: Path, facenet_model: Path, mtcnn_dir: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(f"model:\n  path: {tmp_path / 'nope.tflite'}\n  mtcnn_dir: {mtcnn_dir}\n")
    db = tmp_path / "g.db"
    assert enroll_tool.main(["--config", str(config), "--gallery", str(db), "list"]) == 2
    assert "nope.json" in capsys.readouterr().err
    config.write_text(f"model:\n  path: {facenet_model}\n")
    assert enroll_tool.main(["--config", str(config), "--gallery", str(db), "list"]) == 2
    assert "no such gallery" in capsys.readouterr().err  # a typo in the path must not look like an empty gallery
    Gallery(db, enroll_tool.model_id_of(facenet_model)).close()
    assert enroll_tool.main(["--config", str(config), "--gallery", str(db), "list"]) == 0
    assert enroll_tool.main(["--config", str(tmp_path / "absent.yaml"), "--gallery", str(db), "list"]) == 2
    assert "config file not found" in capsys.readouterr().err


@pytest.mark.parametrize("how", [["tools/enroll.py"], ["-m", "tools.enroll"]])
def test_runs_as_script_and_module(tmp_path: Path, facenet_model: Path, how: list[str]) -> None:
    db = tmp_path / "g.db"
    Gallery(db, enroll_tool.model_id_of(facenet_model)).close()
    result = subprocess.run([sys.executable, *how, "--gallery", str(db), "--model", str(facenet_model), "list"],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "0 people" in result.stderr
    usage = subprocess.run([sys.executable, *how, "frobnicate"], cwd=REPO, capture_output=True, text=True,
                           timeout=120)
    assert usage.returncode == 2 and "invalid choice" in usage.stderr
