"""The presentation-attack bench: APCER and BPCER per attack species, as ISO/IEC 30107-3 defines them.

    python -m tools.pad_eval [--mode challenge|passive] [--seed 0] [--attempts 4] [--json]

Attacks are synthesized from real photos by tools/pad_attacks.py (prints turned, tilted, shaken,
approaching, bent, flicked, turned on cue; a phone replaying a real video); bona fide presentations
are real videos (../shared/faces/videos) framed like a door camera, whose subject turns their head
when the challenge asks. Each presentation runs through the same pipeline the daemon runs: the
recognizer (MTCNN + FaceNet + gallery), identity votes (2 of 3), then the liveness monitor, frame by
frame at the presentation's frame rate, with the challenge prompt fed back to the presentation.

- APCER (per species): the share of that species' attack presentations the system accepted.
- BPCER: the share of bona fide presentations it rejected (a liveness refusal, or no decision
  before the presentation ended).
Presentations where identity never reached a decision are counted and reported apart: they tell
nothing about liveness (the recognizer refused them first).

The subject of each print attack is enrolled from another photo of the person; the subject of a
replay or a bona fide video from the presentation's first frame, so that identity does not muddy the
liveness figures (a replayed screen alone costs FaceNet 0.1-0.2 of distance).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from edge.config import DecisionConfig, LivenessConfig
from edge.decision import DecisionEngine, Observation
from edge.gallery import Gallery
from edge.liveness_monitor import LivenessMonitor, random_direction
from edge.recognizer import Recognizer

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "faces"
# Our prompts name the person's own side (a non-mirroring camera sees the nose move toward larger x for
# "left"); tools/pad_attacks.py names sides by image x. This is the one place the two meet.
TO_PRESENTATION_PROMPT = {"left": "right", "right": "left"}


@dataclass
class Attempt:
    """How one presentation went."""

    species: str
    attack: bool
    source: str
    seed: int
    identity: bool  # identity votes reached a decision for the enrolled person
    accepted: bool
    method: str | None
    reason: str
    challenge: str | None
    decision_s: float | None  # from the identity decision to the liveness verdict
    liveness_ms: float  # median per-frame time of the liveness monitor (mesh + checks)
    evidence: dict[str, float]  # the verdict's measurements (parallax, yaw followed, ...)


def run_presentation(presentation: Any, person: str, recognizer: Recognizer, monitor: LivenessMonitor,
                     engine: DecisionEngine) -> Attempt:
    """Feed a presentation frame by frame through identity votes and the liveness monitor."""
    prompt: str | None = None
    prompt_index: int | None = None
    identity_at: float | None = None
    verdict = None
    liveness_ms: list[float] = []
    fps = presentation.fps
    for index in range(presentation.n_frames):
        now = index / fps
        frame = presentation.frame(index, TO_PRESENTATION_PROMPT.get(prompt) if prompt else None, prompt_index)
        faces = recognizer.recognize(frame)
        started = time.perf_counter()
        monitor.observe(now, frame, faces)
        liveness_ms.append((time.perf_counter() - started) * 1000)
        observations = [Observation(f.name, float(f.distance), tuple(float(v) for v in f.box)) for f in faces]
        for decision in engine.update(now, datetime(2026, 1, 5, 12), observations):
            if decision.action == "unlock" and decision.name == person and monitor.begin(person, now):
                identity_at = now if identity_at is None else identity_at
            elif decision.action == "unlock" and decision.name is not None:
                engine.forget(decision.name)
        started = time.perf_counter()
        for outcome in monitor.step(now):
            if outcome.verdict.status == "challenge":
                prompt, prompt_index = outcome.verdict.direction, index + 1
            else:
                verdict = outcome.verdict
        liveness_ms[-1] += (time.perf_counter() - started) * 1000
        for dropped_person, _ in monitor.take_dropped():
            engine.forget(dropped_person)  # the track broke: identity must be earned again on the new one
        if verdict is not None:
            break
    accepted = verdict is not None and verdict.status == "live"
    reason = verdict.reason if verdict is not None else ("no identity decision" if identity_at is None
                                                         else "no liveness verdict before the end")
    decided = verdict.detail.get("elapsed_s") if verdict is not None else None
    return Attempt(presentation.species, presentation.attack, presentation.source, presentation.seed,
                   identity_at is not None, accepted, verdict.method if verdict is not None else None, reason,
                   prompt, decided, float(np.median(liveness_ms)) if liveness_ms else float("nan"),
                   dict(verdict.detail) if verdict is not None else {})


def new_engine() -> DecisionEngine:
    """The daemon's identity votes (default `decision.*`), with a cooldown longer than any presentation."""
    return DecisionEngine.from_config(replace(DecisionConfig(), cooldown_s=3600.0))


def new_monitor(landmarker: Any, mode: str, seed: int, passive_s: float | None = None) -> LivenessMonitor:
    """The daemon's liveness monitor, built from the default `liveness.*` config as the daemon builds it,
    with challenge directions drawn from `seed`."""
    config = replace(LivenessConfig(), mode=mode)
    if passive_s is not None:
        config = replace(config, passive_s=passive_s)
    return LivenessMonitor.from_config(config, landmarker, random_direction(random.Random(seed)))


def replay_attack(recognizer: Recognizer, videos: Path, seed: int, duration_s: float = 6.0) -> Any:
    """A phone replaying the bench's replay video (tools/pad_attacks.py REPLAY_VIDEO)."""
    from tools import pad_attacks

    return pad_attacks.make_attack("phone_replay", None, seed=seed, duration_s=duration_s,
                                   video_path=videos / pad_attacks.REPLAY_VIDEO, detector=recognizer.detector)


def enroll(recognizer: Recognizer, gallery: Gallery, person: str, image: np.ndarray) -> bool:
    faces = recognizer.detector.detect(image)
    if not faces:
        return False
    digest = hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest()
    gallery.add(person, recognizer.enrollment_embedding(image, faces[0])[None, :], [digest], [f"pad_eval {person}"])
    return True


def attack_photos(people: Path, count: int) -> list[tuple[str, Path, Path]]:
    """(person, enrollment photo, photo to print) for people with two or more photos, in name order."""
    out = []
    for folder in sorted(p for p in people.iterdir() if p.is_dir()):
        photos = sorted(folder.glob("*.jpg"))
        if len(photos) >= 2:
            out.append((folder.name, photos[0], photos[1]))
    return out[:count]


def evaluate(mode: str = "challenge", seed: int = 0, attempts: int = 4, species: Sequence[str] | None = None,
             people: Path = SHARED / "people", videos: Path = SHARED / "videos", model: Path | None = None,
             mtcnn_dir: Path | None = None, landmarks_dir: Path | None = None,
             duration_s: float = 9.0, iris: bool = False, passive_s: float | None = None,
             progress: bool = False) -> list[Attempt]:
    """Every species `attempts` times (different people and seeds) plus every bona fide presentation."""
    from edge.images import load_image
    from edge.landmarks import FaceLandmarker
    from tools import pad_attacks

    models = REPO / "models"
    recognizer = Recognizer.from_paths(model or models / "facenet" / "facenet_dynamic.tflite", None,
                                       mtcnn_dir=mtcnn_dir or models / "mtcnn", threads=1, min_face_size=40)
    landmarker = FaceLandmarker(landmarks_dir or models / "landmarks", threads=1, iris=iris)
    results: list[Attempt] = []
    chosen = list(species or pad_attacks.SPECIES)
    subjects = attack_photos(people, attempts)
    with tempfile.TemporaryDirectory() as tmp:
        jobs: list[tuple[Any, str, np.ndarray]] = []
        for kind in chosen:
            for n in range(attempts):
                if kind == "phone_replay":
                    replay = replay_attack(recognizer, videos, seed * 1000 + n, duration_s)
                    # The video's subject, enrolled from the replay's own first frame: a screen in front of a
                    # camera costs FaceNet 0.1-0.2 of distance, and this bench asks about liveness, not identity.
                    jobs.append((replay, "subject", replay.frame(0)))
                    continue
                person, enroll_photo, print_photo = subjects[n % len(subjects)]
                photo = load_image(print_photo)
                faces = recognizer.detector.detect(photo)
                attack = pad_attacks.make_attack(kind, photo, seed=seed * 1000 + n, duration_s=duration_s,
                                                 face_box=faces[0].box if faces else None)
                jobs.append((attack, person, load_image(enroll_photo)))
        bona = pad_attacks.bona_fide_presentations(videos, seed, recognizer.detector, duration_s=duration_s)
        for presentation in bona:
            jobs.append((presentation, "subject", presentation.frame(0)))
        for number, (presentation, person, enroll_image) in enumerate(jobs):
            gallery = Gallery(Path(tmp) / f"g{number}.db", recognizer.embedder.model_id)
            recognizer.gallery = gallery
            if not enroll(recognizer, gallery, person, enroll_image):
                raise SystemExit(f"pad_eval: no face in the enrollment image of {presentation.source}")
            engine = new_engine()
            monitor = new_monitor(landmarker, mode, seed * 7919 + number, passive_s=passive_s)
            attempt = run_presentation(presentation, person, recognizer, monitor, engine)
            gallery.close()
            results.append(attempt)
            if progress:
                print(f"  {attempt.species:18s} {'ACCEPTED' if attempt.accepted else 'rejected':8s} "
                      f"{attempt.method or attempt.reason} [{attempt.source}]", file=sys.stderr, flush=True)
    return results


def summarize(results: list[Attempt]) -> dict[str, Any]:
    """APCER per species (max over species is the headline), BPCER, times, the worst species."""
    species: dict[str, dict[str, Any]] = {}
    for kind in dict.fromkeys(r.species for r in results):
        rows = [r for r in results if r.species == kind]
        judged = [r for r in rows if r.identity]
        times = [r.decision_s for r in judged if r.decision_s is not None]
        entry: dict[str, Any] = {"presentations": len(rows), "identity_refused": len(rows) - len(judged),
                                 "judged": len(judged),
                                 "median_decision_s": float(np.median(times)) if times else None}
        for key in ("parallax", "yaw_followed", "turn_parallax"):
            values = [r.evidence[key] for r in judged if key in r.evidence and np.isfinite(r.evidence[key])]
            entry[key] = [round(min(values), 3), round(max(values), 3)] if values else None
        if rows[0].attack:
            entry["accepted"] = sum(r.accepted for r in judged)
            entry["apcer"] = entry["accepted"] / len(judged) if judged else None
        else:
            entry["rejected"] = sum(not r.accepted for r in judged)
            entry["bpcer"] = entry["rejected"] / len(judged) if judged else None
        species[kind] = entry
    attacks = {k: v for k, v in species.items() if "apcer" in v and v["apcer"] is not None}
    worst = max(attacks, key=lambda k: attacks[k]["apcer"]) if attacks else None
    bona = species.get("bona_fide", {})
    ms = [r.liveness_ms for r in results if np.isfinite(r.liveness_ms)]
    return {"species": species, "worst_species": worst,
            "max_apcer": attacks[worst]["apcer"] if worst else None, "bpcer": bona.get("bpcer"),
            "liveness_ms_median": float(np.median(ms)) if ms else None}


def markdown(summary: dict[str, Any], mode: str) -> str:
    lines = [f"Liveness mode `{mode}`.", "",
             "| species | presentations | judged | accepted / rejected | APCER / BPCER | median time to decision "
             "| parallax at the verdict | yaw followed | parallax after the prompt |",
             "|---|---|---|---|---|---|---|---|---|"]
    for kind, e in summary["species"].items():
        rate = e.get("apcer", e.get("bpcer"))
        count = e.get("accepted", e.get("rejected"))
        label = "accepted" if "apcer" in e else "rejected"
        t = f"{e['median_decision_s']:.1f} s" if e["median_decision_s"] is not None else "-"
        ranges = " | ".join("-" if e[key] is None else f"{e[key][0]:.3f}-{e[key][1]:.3f}"
                            for key in ("parallax", "yaw_followed", "turn_parallax"))
        lines.append(f"| {kind} | {e['presentations']} | {e['judged']} | {count} {label} | "
                     f"{'-' if rate is None else f'{rate:.2f}'} | {t} | {ranges} |")
    lines += ["", f"Worst attack species: {summary['worst_species']} (APCER {summary['max_apcer']}); "
              f"BPCER {summary['bpcer']}; liveness {summary['liveness_ms_median']:.1f} ms per frame (median)."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Presentation-attack bench (APCER/BPCER per ISO/IEC 30107-3).")
    parser.add_argument("--mode", choices=("passive", "challenge"), default="challenge")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--attempts", type=int, default=4, help="attack presentations per species")
    parser.add_argument("--species", nargs="*", help="only these attack species")
    parser.add_argument("--people", type=Path, default=SHARED / "people")
    parser.add_argument("--videos", type=Path, default=SHARED / "videos")
    parser.add_argument("--duration", type=float, default=9.0, help="seconds per presentation (at 15 fps)")
    parser.add_argument("--iris", action="store_true", help="refine eyelids with the iris model (liveness.iris)")
    parser.add_argument("--passive-s", type=float, default=None,
                        help="liveness.passive_s: wait for passive evidence this long before the challenge "
                             "(default: the config's default)")
    parser.add_argument("--json", action="store_true", help="print every attempt and the summary as JSON")
    args = parser.parse_args(argv)
    for folder in (args.people, args.videos):
        if not folder.is_dir():
            print(f"error: {folder} is missing (see ../shared/faces/README.md)", file=sys.stderr)
            return 2
    results = evaluate(args.mode, args.seed, args.attempts, args.species, args.people, args.videos,
                       duration_s=args.duration, iris=args.iris, passive_s=args.passive_s, progress=True)
    summary = summarize(results)
    if args.json:
        print(json.dumps({"mode": args.mode, "seed": args.seed, "summary": summary,
                          "attempts": [asdict(r) for r in results]}, indent=2))
    else:
        print(markdown(summary, args.mode))
    return 0


if __name__ == "__main__":
    sys.exit(main())
