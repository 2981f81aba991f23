"""edge.calibrate: threshold at a target FAR, and writing it into the model metadata safely."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from edge import calibrate
from edge.errors import EdgeError


def clustered(rng: np.random.Generator, people: int, per_person: int, spread: float, dim: int = 64
              ) -> tuple[np.ndarray, list[str]]:
    centers = rng.normal(size=(people, dim))
    rows, labels = [], []
    for p in range(people):
        for _ in range(per_person):
            rows.append(centers[p] / np.linalg.norm(centers[p]) + spread * rng.normal(size=dim) / np.sqrt(dim))
            labels.append(f"p{p}")
    emb = np.array(rows, dtype=np.float32)
    return emb / np.linalg.norm(emb, axis=1, keepdims=True), labels


def test_threshold_meets_the_far_target() -> None:
    rng = np.random.default_rng(3)
    embeddings, labels = clustered(rng, people=40, per_person=4, spread=0.9)
    result = calibrate.calibrate(embeddings, labels, far=1e-2)
    # Check against a brute-force count over the same pairs.
    d = np.linalg.norm(embeddings[:, None] - embeddings[None], axis=-1)
    i, j = np.triu_indices(len(labels), k=1)
    same = np.array(labels)[i] == np.array(labels)[j]
    far = float(np.mean(d[i, j][~same] <= result.threshold))
    tar = float(np.mean(d[i, j][same] <= result.threshold))
    assert far <= 1e-2 and far == pytest.approx(result.far)
    assert tar == pytest.approx(result.tar)
    # It is the largest such threshold: the next impostor distance above it would break the target.
    impostors = np.sort(d[i, j][~same])
    next_impostor = impostors[impostors > result.threshold][0]
    assert float(np.mean(impostors <= next_impostor)) > 1e-2
    assert result.genuine_pairs == int(same.sum()) and result.impostor_pairs == int((~same).sum())
    assert result.resolvable
    tighter = calibrate.calibrate(embeddings, labels, far=1e-3)
    assert tighter.threshold <= result.threshold


def test_too_few_pairs_are_reported() -> None:
    rng = np.random.default_rng(4)
    embeddings, labels = clustered(rng, people=3, per_person=2, spread=0.3)
    assert not calibrate.calibrate(embeddings, labels, far=1e-3).resolvable
    with pytest.raises(EdgeError, match="genuine"):
        calibrate.calibrate(embeddings[::2], labels[::2], far=1e-3)


def test_people_dir_is_checked(tmp_path: Path) -> None:
    with pytest.raises(EdgeError, match="not a directory"):
        calibrate.people_photos(tmp_path / "missing")
    (tmp_path / "only_one").mkdir()
    (tmp_path / "only_one" / "a.jpg").write_bytes(b"x")
    with pytest.raises(EdgeError, match="at least 2 people"):
        calibrate.people_photos(tmp_path)


@pytest.fixture
def model_copy(facenet_model: Path, tmp_path: Path) -> Path:
    """The model and its metadata in a scratch folder, so --write cannot touch the real one."""
    folder = tmp_path / "model"
    folder.mkdir()
    target = folder / facenet_model.name
    os.link(facenet_model, target) if facenet_model.stat().st_dev == folder.stat().st_dev else shutil.copy(
        facenet_model, target)
    shutil.copy(facenet_model.with_suffix(".json"), target.with_suffix(".json"))
    return target


@pytest.fixture
def people_dir(tmp_path: Path, fr_images: dict[str, Path]) -> Path:
    folder = tmp_path / "people"
    for person, stems in {"obama": ["obama2", "obama3"], "biden": ["biden"]}.items():
        (folder / person).mkdir(parents=True)
        for stem in stems:
            (folder / person / f"{stem}.jpg").symlink_to(fr_images[stem])
    return folder


def test_cli_writes_threshold_with_a_record(model_copy: Path, people_dir: Path, mtcnn_dir: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    from edge.embedder import Embedder

    meta_path = model_copy.with_suffix(".json")
    before = json.loads(meta_path.read_text())
    argv = [str(people_dir), "--far", "0.4", "--model", str(model_copy), "--mtcnn-dir", str(mtcnn_dir), "--json"]
    assert calibrate.main(argv) == 0
    dry = json.loads(capsys.readouterr().out)
    assert json.loads(meta_path.read_text()) == before  # nothing written without --write
    assert dry["people"] == 2 and dry["images"] == 3 and dry["genuine_pairs"] == 1 and dry["impostor_pairs"] == 2
    assert dry["tar"] == 1.0 and dry["far"] == 0.0 and not dry["resolvable"]

    assert calibrate.main([*argv, "--write"]) == 0
    out, err = capsys.readouterr()
    assert "cannot resolve" in err
    after = json.loads(meta_path.read_text())
    assert after["threshold"] == pytest.approx(dry["threshold"], abs=1e-6)
    record = after["calibration"]
    assert record["data_dir"] == str(people_dir.resolve()) and record["images"] == 3
    assert record["far_target"] == 0.4 and len(record["data_sha256"]) == 64
    assert "edge.calibrate" in after["threshold_source"]
    for key in set(before) - {"threshold", "threshold_source"}:
        assert after[key] == before[key], key
    # The embedder still accepts the model and reads the new threshold.
    assert Embedder(model_copy).threshold == pytest.approx(dry["threshold"], abs=1e-6)
    assert not [p for p in meta_path.parent.iterdir() if p.name.endswith(".tmp")]


def test_cli_errors_leave_the_metadata_alone(model_copy: Path, people_dir: Path, mtcnn_dir: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    meta_path = model_copy.with_suffix(".json")
    before = meta_path.read_bytes()
    base = ["--model", str(model_copy), "--mtcnn-dir", str(mtcnn_dir), "--write"]
    assert calibrate.main([str(tmp_path / "nobody"), *base]) == 2
    assert calibrate.main([str(people_dir), "--far", "2", *base]) == 2
    (people_dir / "biden" / "broken.jpg").write_bytes(b"garbage")
    assert calibrate.main([str(people_dir), *base]) == 2
    assert "broken.jpg" in capsys.readouterr().err
    assert meta_path.read_bytes() == before
