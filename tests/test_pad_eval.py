"""The attack bench's arithmetic (ISO/IEC 30107-3 APCER per species, BPCER) and its determinism."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from edge.gallery import Gallery
from edge.images import load_image
from edge.recognizer import Recognizer
from tools import pad_attacks
from tools.pad_eval import Attempt, enroll, markdown, new_engine, new_monitor, run_presentation, summarize


def attempt(species: str, attack: bool, accepted: bool, identity: bool = True, decision_s: float | None = 1.0,
            **evidence: float) -> Attempt:
    return Attempt(species, attack, "src", 0, identity, accepted, "3d_motion" if accepted else None,
                   "" if accepted else "no sign of life", None, decision_s, 3.0, dict(evidence))


def test_apcer_per_species_bpcer_and_the_worst_species() -> None:
    results = [
        attempt("print_turned", True, False, parallax=0.02), attempt("print_turned", True, True, parallax=0.07),
        attempt("print_turned", True, False, parallax=0.03), attempt("print_turned", True, False),
        attempt("phone_replay", True, True), attempt("phone_replay", True, True),
        attempt("phone_replay", True, False, identity=False),  # identity refused: not a liveness decision
        attempt("bona_fide", False, True, decision_s=0.5), attempt("bona_fide", False, False, decision_s=2.0),
        attempt("bona_fide", False, True, decision_s=1.0), attempt("bona_fide", False, True, decision_s=3.0),
    ]
    summary = summarize(results)
    turned, replay, bona = (summary["species"][k] for k in ("print_turned", "phone_replay", "bona_fide"))
    assert turned["apcer"] == pytest.approx(0.25) and turned["accepted"] == 1 and turned["judged"] == 4
    assert turned["parallax"] == [0.02, 0.07]
    assert replay["apcer"] == 1.0 and replay["identity_refused"] == 1 and replay["judged"] == 2
    assert bona["bpcer"] == pytest.approx(0.25) and bona["median_decision_s"] == pytest.approx(1.5)
    assert summary["worst_species"] == "phone_replay" and summary["max_apcer"] == 1.0
    assert summary["bpcer"] == pytest.approx(0.25)
    table = markdown(summary, "challenge")
    assert "| print_turned | 4 | 4 | 1 accepted | 0.25 |" in table
    assert "| bona_fide | 4 | 4 | 1 rejected | 0.25 |" in table


def test_a_presentation_gives_the_same_verdict_every_time(shared_faces: Path, facenet_model: Path,
                                                         mtcnn_dir: Path, landmarks_dir: Path,
                                                         tmp_path: Path) -> None:
    from edge.landmarks import FaceLandmarker

    recognizer = Recognizer.from_paths(facenet_model, None, mtcnn_dir=mtcnn_dir, min_face_size=40)
    landmarker = FaceLandmarker(landmarks_dir, iris=False)
    person = shared_faces / "people" / "Barack_Obama"
    photos = sorted(person.glob("*.jpg"))
    printed = load_image(photos[1])
    runs = []
    for n in range(2):
        gallery = Gallery(tmp_path / f"g{n}.db", recognizer.embedder.model_id)
        recognizer.gallery = gallery
        assert enroll(recognizer, gallery, "Barack_Obama", load_image(photos[0]))
        attack = pad_attacks.make_attack("print_turned", printed, seed=5, duration_s=4.0,
                                         face_box=recognizer.detector.detect(printed)[0].box)
        result = run_presentation(attack, "Barack_Obama", recognizer, new_monitor(landmarker, "passive", 5),
                                  new_engine())
        gallery.close()
        runs.append(result)
    # Timing aside, bit for bit the same (JSON so that a NaN in the evidence compares equal to itself).
    same = [json.dumps(asdict(replace(r, liveness_ms=0.0)), sort_keys=True) for r in runs]
    assert same[0] == same[1]
    assert runs[0].identity and not runs[0].accepted  # recognized as Obama, refused as a print
