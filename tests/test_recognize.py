"""End to end on real faces: enroll one photo of Obama, recognize his others, reject Biden."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge import recognize, verify
from edge.gallery import Gallery
from edge.images import load_image
from tools import enroll as enroll_tool

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def obama_gallery(recognizer, fr_images: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A gallery with one photo of Obama enrolled through the enroll tool's own code path."""
    path = tmp_path_factory.mktemp("recognize") / "gallery.db"
    with Gallery(path, recognizer.model_id) as gallery:
        report = enroll_tool.enroll(recognizer, gallery, "obama", [fr_images["obama"]],
                                    enroll_tool.GateSettings(largest=True))
        assert report.enrolled == 1, report.refused
    return path


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = recognize.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_recognizes_obama_and_rejects_biden(obama_gallery: Path, facenet_model: Path, mtcnn_dir: Path,
                                            fr_images: dict[str, Path], shared_faces: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    noface = shared_faces / "noface" / "davisking__dog.jpg"
    images = [fr_images["obama2"], fr_images["obama3"], fr_images["biden"], noface]
    code, out, _ = run_cli(["--gallery", str(obama_gallery), "--model", str(facenet_model), "--mtcnn-dir",
                            str(mtcnn_dir), "--json", *map(str, images)], capsys)
    assert code == 0
    result = json.loads(out)
    assert [entry["image"] for entry in result] == [str(p) for p in images]
    by_image = {Path(entry["image"]).stem: entry["faces"] for entry in result}
    threshold = json.loads(facenet_model.with_suffix(".json").read_text())["threshold"]
    for stem in ("obama2", "obama3"):
        assert len(by_image[stem]) == 1
        face = by_image[stem][0]
        assert face["name"] == "obama" and face["distance"] <= threshold
        assert len(face["box"]) == 4 and face["box"][2] > 100
    biden = by_image["biden"]
    assert len(biden) == 1 and biden[0]["name"] is None and biden[0]["distance"] > threshold
    assert by_image["davisking__dog"] == []


def test_text_output(obama_gallery: Path, facenet_model: Path, mtcnn_dir: Path, fr_images: dict[str, Path],
                     tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blank = tmp_path / "blank.png"
    import cv2

    cv2.imwrite(str(blank), np.zeros((100, 100, 3), np.uint8))
    code, out, _ = run_cli(["--gallery", str(obama_gallery), "--model", str(facenet_model), "--mtcnn-dir",
                            str(mtcnn_dir), str(fr_images["obama2"]), str(fr_images["biden"]), str(blank)], capsys)
    assert code == 0
    lines = out.splitlines()
    assert "obama" in lines[0] and "distance" in lines[0]
    assert "unknown" in lines[1]
    assert lines[2].endswith("no face")


def test_errors_exit_non_zero(obama_gallery: Path, facenet_model: Path, mtcnn_dir: Path, fr_images: dict[str, Path],
                              tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--model", str(facenet_model), "--mtcnn-dir", str(mtcnn_dir)]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    code, out, err = run_cli(["--gallery", str(obama_gallery), *base, "--json", str(broken),
                              str(fr_images["obama2"])], capsys)
    assert code == 2 and "broken.jpg" in err
    assert [Path(e["image"]).name for e in json.loads(out)] == ["obama2.jpg"]  # the good image is still answered

    code, _, err = run_cli(["--gallery", str(tmp_path / "missing.db"), *base, str(fr_images["obama2"])], capsys)
    assert code == 2 and "missing.db" in err
    assert not (tmp_path / "missing.db").exists()

    foreign = tmp_path / "foreign.db"
    foreign.write_text("this is a text file, not a gallery\n")
    code, _, err = run_cli(["--gallery", str(foreign), *base, str(fr_images["obama2"])], capsys)
    assert code == 2 and str(foreign) in err
    assert foreign.read_text() == "this is a text file, not a gallery\n"

    code, _, err = run_cli(["--gallery", str(obama_gallery), "--model", str(tmp_path / "none.tflite"), "--mtcnn-dir",
                            str(mtcnn_dir), str(fr_images["obama2"])], capsys)
    assert code == 2 and "none" in err


def test_other_models_gallery_recognizes_nobody(recognizer, fr_images: dict[str, Path], facenet_model: Path,
                                                mtcnn_dir: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """Embeddings made by another model are never compared, even when they would match."""
    image = load_image(fr_images["obama2"])
    embedding = recognizer.embed_faces(image, recognizer.detector.detect(image)[:1])
    path = tmp_path / "old.db"
    with Gallery(path, "facenet-fp32-0123456789ab") as old:
        old.add("obama", embedding, ["0" * 64], ["obama2.jpg"])
    code, out, _ = run_cli(["--gallery", str(path), "--model", str(facenet_model), "--mtcnn-dir", str(mtcnn_dir),
                            "--json", str(fr_images["obama2"])], capsys)
    assert code == 0
    face = json.loads(out)[0]["faces"][0]
    assert face["name"] is None and face["distance"] is None
    with Gallery(path, recognizer.model_id, readonly=True) as g:
        assert g.stale_people() == ["obama"]


def test_flip_averages_a_face_and_its_mirror(recognizer, fr_images: dict[str, Path]) -> None:
    from edge.recognizer import Recognizer

    flipping = Recognizer(recognizer.detector, recognizer.embedder, None, flip=True)
    image = load_image(fr_images["obama2"])
    faces = recognizer.detector.detect(image)[:1]
    plain = recognizer.embed_faces(image, faces)
    mirrored = recognizer.embedder.embed(recognizer.crops(image, faces)[:, :, ::-1])
    flipped = flipping.embed_faces(image, faces)
    expected = (plain + mirrored) / np.linalg.norm(plain + mirrored, axis=1, keepdims=True)
    np.testing.assert_allclose(flipped, expected, atol=1e-5)
    assert abs(float(np.linalg.norm(flipped)) - 1.0) < 1e-5
    assert float(np.linalg.norm(flipped - plain)) > 1e-4  # the mirror really changed something


def test_reader_sees_enrollment_without_restart(recognizer, fr_images: dict[str, Path], tmp_path: Path) -> None:
    """The daemon's Recognizer keeps its gallery open while the enroll tool adds someone."""
    from edge.recognizer import Recognizer

    path = tmp_path / "live.db"
    Gallery(path, recognizer.model_id).close()
    live = Recognizer(recognizer.detector, recognizer.embedder, Gallery(path, recognizer.model_id, readonly=True))
    biden = load_image(fr_images["biden"])
    assert live.recognize(biden)[0].name is None
    with Gallery(path, recognizer.model_id) as writer:
        assert enroll_tool.enroll(recognizer, writer, "biden", [fr_images["biden"]]).enrolled == 1
    assert live.recognize(biden)[0].name == "biden"
    live.close()


def test_verify(facenet_model: Path, mtcnn_dir: Path, fr_images: dict[str, Path], shared_faces: Path,
                capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--model", str(facenet_model), "--mtcnn-dir", str(mtcnn_dir), "--json"]
    assert verify.main([*base, str(fr_images["obama2"]), str(fr_images["obama3"])]) == 0
    same = json.loads(capsys.readouterr().out)
    assert same["same"] is True and same["distance"] <= same["threshold"]
    assert verify.main([*base, str(fr_images["obama2"]), str(fr_images["biden"])]) == 0
    different = json.loads(capsys.readouterr().out)
    assert different["same"] is False and different["distance"] > different["threshold"]
    assert math.isclose(same["threshold"], different["threshold"])
    noface = shared_faces / "noface" / "davisking__dog.jpg"
    assert verify.main([*base, str(fr_images["obama2"]), str(noface)]) == 1
    assert "no face" in capsys.readouterr().err
    assert verify.main([*base, str(fr_images["obama2"]), str(shared_faces / "nope.jpg")]) == 2


def test_recognize_runs_as_module(obama_gallery: Path, facenet_model: Path, mtcnn_dir: Path,
                                  fr_images: dict[str, Path]) -> None:
    result = subprocess.run([sys.executable, "-m", "edge.recognize", "--gallery", str(obama_gallery), "--model",
                             str(facenet_model), "--mtcnn-dir", str(mtcnn_dir), str(fr_images["obama3"])],
                            cwd=REPO, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    assert "obama" in result.stdout
    # Device code must not pull in TensorFlow.
    probe = ("import sys, edge.recognize as r; code = r.main(sys.argv[1:]); "
             "print('tf-imported' if 'tensorflow' in sys.modules else 'no-tf'); sys.exit(code)")
    result = subprocess.run([sys.executable, "-c", probe, "--gallery", str(obama_gallery), "--model",
                             str(facenet_model), "--mtcnn-dir", str(mtcnn_dir), str(fr_images["obama3"])],
                            cwd=REPO, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "no-tf"
