"""tools/evaluate.py against hand-computed values on tiny synthetic embeddings, and its error paths."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.errors import ImageError
from tools import evaluate as ev

# Persons sorted as list_people returns them: ann x3, bob x2, cid x1 (stranger), dan x1 (stranger).
PERSONS = ["ann", "ann", "ann", "bob", "bob", "cid", "dan"]
# 2-D points: ann near (0, 0), bob near (1, 0); cid sits close to bob, dan far from everyone.
EMB = np.array([
    [0.0, 0.0],   # ann enrolled
    [0.1, 0.0],   # ann probe: 0.1 from ann -> correct accept
    [0.0, 0.45],  # ann probe: 0.45 from ann, 1.096 from bob -> false reject at threshold 0.3
    [1.0, 0.0],   # bob enrolled
    [0.2, 0.0],   # bob probe: nearest is ann at 0.2 -> wrong-person accept
    [0.95, 0.1],  # stranger cid: 0.112 from bob -> stranger accept
    [5.0, 5.0],   # stranger dan: far -> rejected
], dtype=np.float32)


def test_open_set_counts_by_hand():
    found = np.ones(len(PERSONS), dtype=bool)
    result = ev.open_set(EMB, found, PERSONS, threshold=0.3)
    assert result["enrolled"] == 2
    assert result["genuine"] == 3
    assert (result["correct_accept"], result["false_reject"], result["wrong_accept"]) == (1, 1, 1)
    assert (result["strangers"], result["stranger_accept"]) == (2, 1)


def test_open_set_counts_photos_without_a_face():
    found = np.ones(len(PERSONS), dtype=bool)
    found[1] = False  # ann's good probe: no face -> false reject, still counted
    found[5] = False  # cid: no face -> cannot be accepted
    result = ev.open_set(EMB, found, PERSONS, threshold=0.3)
    assert result["genuine"] == 3 and result["genuine_no_face"] == 1
    assert (result["correct_accept"], result["false_reject"], result["wrong_accept"]) == (0, 2, 1)
    assert (result["strangers"], result["stranger_no_face"], result["stranger_accept"]) == (2, 1, 0)


def test_open_set_unenrolled_person_when_first_photo_has_no_face():
    found = np.ones(len(PERSONS), dtype=bool)
    found[3] = False  # bob's enrollment photo
    result = ev.open_set(EMB, found, PERSONS, threshold=0.3)
    assert result["enrolled"] == 1 and result["enroll_no_face"] == 1
    # bob's probe is still a genuine probe; it lands on ann (0.2) -> wrong accept.
    assert result["genuine"] == 3 and result["wrong_accept"] == 1
    # cid is now 0.96 from ann, the only enrolled person -> rejected.
    assert result["stranger_accept"] == 0


def test_open_set_with_a_wide_threshold_accepts_everyone():
    result = ev.open_set(EMB, np.ones(len(PERSONS), dtype=bool), PERSONS, threshold=100.0)
    assert (result["correct_accept"], result["wrong_accept"], result["false_reject"]) == (2, 1, 0)
    assert result["stranger_accept"] == 2


def test_nearest_by_hand():
    enrolled = np.array([[0.0, 0.0], [3.0, 4.0]], dtype=np.float32)
    out = ev.nearest(np.array([[0.0, 1.0], [3.0, 3.0], [10.0, 10.0]], dtype=np.float32), enrolled, ["a", "b"], 1.5)
    assert [name for name, _ in out] == ["a", "b", None]
    assert [d for _, d in out] == pytest.approx([1.0, 1.0, np.hypot(7, 6)])
    assert ev.nearest(np.zeros((2, 2), np.float32), np.zeros((0, 2), np.float32), [], 1.0) == [
        (None, float("inf")), (None, float("inf"))]


def test_verification_by_hand():
    # 1-D embeddings: a at 0 and 1, b at 3 and 3.5.
    # Genuine distances: 1.0 (a), 0.5 (b). Impostor: 3, 3.5, 2, 2.5.
    emb = np.array([[0.0], [1.0], [3.0], [3.5]], dtype=np.float32)
    result = ev.verification(emb, ["a", "a", "b", "b"], folds=2)
    assert result["pairs"] == 6 and result["genuine_pairs"] == 2
    assert result["roc_auc"] == pytest.approx(1.0)
    assert result["eer"] == pytest.approx(0.0)
    assert result["tar_at_far_1e-2"] == pytest.approx(1.0)
    assert result["tar_at_far_1e-3"] == pytest.approx(1.0)
    assert result["accuracy_10fold"] == pytest.approx(1.0)


def test_verification_with_overlap_by_hand():
    # Genuine distances: a 2.0, b 0.5; impostors: |0-1|=1, |0-1.5|=1.5, |2-1|=1, |2-1.5|=0.5.
    emb = np.array([[0.0], [2.0], [1.0], [1.5]], dtype=np.float32)
    result = ev.verification(emb, ["a", "a", "b", "b"], folds=2)
    # Genuine 0.5 ties impostor 0.5 (half) and beats 1, 1, 1.5 -> 3.5; genuine 2.0 beats none -> 3.5 / 8.
    assert result["roc_auc"] == pytest.approx(3.5 / 8)
    # No threshold rejects every impostor yet accepts a genuine pair (0.5 ties an impostor).
    assert result["tar_at_far_1e-3"] == pytest.approx(0.0)
    assert result["tar_at_far_1e-2"] == pytest.approx(0.0)
    # ROC: at 0.5 FAR 1/4, FRR 1/2; at 1.0 FAR 3/4, FRR 1/2 -> they cross halfway, at 0.5.
    assert result["eer"] == pytest.approx(0.5)


def test_verification_needs_genuine_and_impostor_pairs():
    with pytest.raises(ev.EdgeError, match="genuine and impostor"):
        ev.verification(np.eye(3, dtype=np.float32), ["a", "b", "c"])
    with pytest.raises(ev.EdgeError, match="genuine and impostor"):
        ev.verification(np.eye(3, dtype=np.float32), ["a", "a", "a"])


def test_balanced_pairs_keeps_every_genuine_pair_and_as_many_impostors():
    distances = np.arange(10, dtype=float)
    same = np.array([True, False, False, True, False, False, False, True, False, False])
    d, s = ev.balanced_pairs(distances, same)
    assert s.sum() == 3 and (~s).sum() == 3
    assert set(d[s]) == {0.0, 3.0, 7.0}
    assert set(d[~s]) <= {1.0, 2.0, 4.0, 5.0, 6.0, 8.0, 9.0}


def test_svm_separable_clusters_are_classified_perfectly():
    rng = np.random.default_rng(0)
    centres = np.eye(4, dtype=np.float32) * 3
    emb = np.concatenate([c + 0.05 * rng.normal(size=(5, 4)) for c in centres]).astype(np.float32)
    persons = [name for name in "abcd" for _ in range(5)]
    accuracy, people = ev.svm_accuracy(emb, persons, folds=5)
    assert people == 4 and accuracy == pytest.approx(1.0)


def test_svm_cannot_learn_random_labels():
    rng = np.random.default_rng(1)
    emb = rng.normal(size=(40, 8)).astype(np.float32)
    persons = [name for name in "abcd" for _ in range(10)]
    accuracy, _ = ev.svm_accuracy(emb, persons, folds=5)
    assert accuracy < 0.6


def test_svm_skips_people_with_too_few_photos():
    emb = np.eye(6, dtype=np.float32)
    accuracy, people = ev.svm_accuracy(emb, ["a"] * 5 + ["b"], folds=5)
    assert accuracy is None and people == 1


def _collected(found: np.ndarray | None = None) -> ev.Collected:
    photos = [ev.Photo(Path(f"/x/{p}/{i}.jpg"), p) for i, p in enumerate(PERSONS)]
    found = np.ones(len(PERSONS), dtype=bool) if found is None else found
    emb = np.where(found[:, None], EMB, np.nan).astype(np.float32)
    return ev.Collected(photos, emb, found)


def test_summarize_has_the_documented_json_keys():
    found = np.ones(len(PERSONS), dtype=bool)
    found[6] = False
    report = ev.summarize(_collected(found), threshold=0.3, model="toy")
    for key in ("images", "no_face", "roc_auc", "eer", "tar_at_far_1e-2", "tar_at_far_1e-3", "accuracy_10fold",
                "threshold", "open_set", "svm_accuracy", "model"):
        assert key in report
    for key in ("genuine", "correct_accept", "false_reject", "wrong_accept", "strangers", "stranger_accept"):
        assert key in report["open_set"]
    assert report["images"] == 7 and report["no_face"] == 1 and report["no_face_files"] == ["/x/dan/6.jpg"]
    assert report["open_set"]["strangers"] == 2 and report["open_set"]["stranger_no_face"] == 1
    json.dumps(report)  # serializable as-is


def test_stack_embeddings_rejects_mixed_sizes():
    with pytest.raises(ValueError, match="different sizes"):
        ev.stack_embeddings([np.zeros(2), None, np.zeros(3)])
    out = ev.stack_embeddings([np.ones(2), None])
    assert np.isnan(out[1]).all() and (out[0] == 1).all()


class _FakePipeline:
    """Finds a 'face' unless the image is mostly black; embeds the mean colour."""

    name = "fake"
    threshold = 0.5

    def detect(self, image: np.ndarray) -> list:
        return [] if image.mean() < 20 else ["face"]

    def embed(self, image: np.ndarray, face) -> np.ndarray:
        colour = image.reshape(-1, 3).mean(axis=0)
        return colour / np.linalg.norm(colour)


def _write(path: Path, colour: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((8, 8, 3), colour, dtype=np.uint8))


def test_collect_counts_photos_without_a_face(tmp_path):
    _write(tmp_path / "a" / "1.png", (200, 10, 10))
    _write(tmp_path / "a" / "2.png", (0, 0, 0))
    _write(tmp_path / "b" / "1.png", (10, 200, 10))
    photos = ev.list_people(tmp_path)
    assert [(p.person, p.path.name) for p in photos] == [("a", "1.png"), ("a", "2.png"), ("b", "1.png")]
    collected = ev.collect(_FakePipeline(), photos)
    assert collected.found.tolist() == [True, False, True]
    assert len(collected.detect_s) == 3 and len(collected.embed_s) == 2


def test_empty_people_folder_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "nobody").mkdir()
    with pytest.raises(ImageError, match="no photos found"):
        ev.list_people(tmp_path)
    assert ev.main([str(tmp_path)]) == 2
    assert "no photos found" in capsys.readouterr().err


def test_missing_people_folder_is_a_clear_error(tmp_path, capsys):
    assert ev.main([str(tmp_path / "absent")]) == 2
    assert "not a directory" in capsys.readouterr().err


def test_unreadable_image_names_the_file(tmp_path):
    _write(tmp_path / "a" / "1.png", (200, 10, 10))
    bad = tmp_path / "a" / "2.jpg"
    bad.write_bytes(b"this is not a jpeg")
    with pytest.raises(ImageError, match="2.jpg"):
        ev.collect(_FakePipeline(), ev.list_people(tmp_path))


def test_evaluate_with_a_pipeline_and_roc_plot(tmp_path):
    pytest.importorskip("matplotlib")
    for person, colour in (("a", (200, 10, 10)), ("b", (10, 200, 10)), ("c", (10, 10, 200))):
        _write(tmp_path / "people" / person / "1.png", colour)
        _write(tmp_path / "people" / person / "2.png", tuple(int(v * 0.9) + 5 for v in colour))
    _write(tmp_path / "people" / "d" / "1.png", (190, 20, 10))  # a stranger who looks like a
    report = ev.evaluate(tmp_path / "people", pipeline=_FakePipeline(), roc_png=tmp_path / "roc.png")
    assert report["images"] == 7 and report["no_face"] == 0
    assert report["roc_auc"] == pytest.approx(1.0)
    assert report["open_set"]["correct_accept"] == 3 and report["open_set"]["stranger_accept"] == 1
    assert (tmp_path / "roc.png").stat().st_size > 1000


def test_garbage_model_file_is_a_clear_error(tmp_path, capsys):
    _write(tmp_path / "people" / "a" / "1.png", (200, 10, 10))
    model = tmp_path / "bogus.tflite"
    model.write_bytes(b"\x00" * 64)
    assert ev.main([str(tmp_path / "people"), "--model", str(model)]) == 2
    assert "bogus" in capsys.readouterr().err


def test_model_with_metadata_of_another_model_is_refused(tmp_path, facenet_model, capsys):
    """Model mismatch: the fp16 model file paired with the dynamic model's metadata."""
    fp16 = facenet_model.with_name("facenet_fp16.tflite")
    if not fp16.is_file():
        pytest.fail(f"{fp16} is missing: build the models first with `make models`")
    _write(tmp_path / "people" / "a" / "1.png", (200, 10, 10))
    shutil.copy(fp16, tmp_path / "swapped.tflite")
    shutil.copy(facenet_model.with_suffix(".json"), tmp_path / "swapped.json")
    assert ev.main([str(tmp_path / "people"), "--model", str(tmp_path / "swapped.tflite")]) == 2
    assert "swapped" in capsys.readouterr().err
