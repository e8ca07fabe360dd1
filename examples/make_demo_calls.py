"""Build the demo calls in examples/calls/ from RAVDESS speech (../shared/data/ravdess).

    python examples/make_demo_calls.py [--data ../shared/data/ravdess] [--out examples/calls]

Four short two-party "calls", one per input layout, each a dialogue of real acted utterances
(an agent and a client, alternating turns, the other side silent meanwhile):

* ``anger_escalation.flac``    stereo (agent, client): the client goes from neutral/calm to angry;
* ``recovery.flac`` + ``.rttm`` mono mix + RTTM diarization: the client starts sad and angry, ends happy;
* ``steady/agent.flac`` + ``steady/client.flac`` per-speaker files: a calm, pleasant call;
* ``negative_end.flac``        mono, client only: neutral, then sad to the end; contains a 6 s hold
  silence that the scorer compresses to 1 s.

Plus ``calls.csv`` (call_id, date, queue, agent_id) as call metadata. The output is deterministic.
Licence: RAVDESS is CC BY-NC-SA 4.0 (Livingstone & Russo 2018, PLoS ONE 13(5): e0196391), so these
derived files are too: non-commercial use, attribution, share-alike (examples/calls/LICENCE.md).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
import soundfile as sf

from cusemo_batch.audio import load_audio

SR = 8000
HERE = Path(__file__).resolve().parent
# RAVDESS file names: modality-channel-emotion-intensity-statement-repetition-actor.
EMO = {"neutral": 1, "calm": 2, "happy": 3, "sad": 4, "angry": 5, "fearful": 6, "disgust": 7, "surprised": 8}


def utt(data: Path, actor: int, emotion: str, intensity: int = 2, statement: int = 1, rep: int = 1) -> np.ndarray:
    if emotion == "neutral":
        intensity = 1
    name = f"03-01-{EMO[emotion]:02d}-{intensity:02d}-{statement:02d}-{rep:02d}-{actor:02d}.flac"
    x = load_audio(data / "audio" / name, SR)
    return x


def dialogue(data: Path, turns: list[tuple[str, int, str, int, int, int]], rng: np.random.Generator,
             hold_after: int | None = None) -> tuple[dict[str, np.ndarray], list[tuple[float, float, str]]]:
    """Alternate turns; returns one track per role (silent while the other speaks) and RTTM segments."""
    tracks: dict[str, list[np.ndarray]] = {"agent": [], "client": []}
    segments = []
    t = 0
    for i, (role, actor, emotion, intensity, statement, rep) in enumerate(turns):
        x = utt(data, actor, emotion, intensity, statement, rep)
        gap = np.zeros(int(SR * rng.uniform(0.2, 0.5)), np.float32)
        seg = np.concatenate([x, gap])
        if hold_after is not None and i == hold_after:
            seg = np.concatenate([seg, np.zeros(6 * SR, np.float32)])  # hold music removed: 6 s silence
        for r in tracks:
            tracks[r].append(seg if r == role else np.zeros_like(seg))
        segments.append((t / SR, len(x) / SR, role))
        t += len(seg)
    noise = lambda n: rng.normal(0, 10 ** (-62 / 20), n).astype(np.float32)  # line noise floor
    out = {r: np.concatenate(v) for r, v in tracks.items()}
    out = {r: v + noise(len(v)) for r, v in out.items()}
    return out, segments


def build(data: Path, out: Path) -> None:
    rng = np.random.default_rng(7)
    out.mkdir(parents=True, exist_ok=True)
    # Actors of the default model's *test* split (speaker-disjoint), so the demo shows unseen voices:
    A, C1, C2, C3 = 7, 14, 20, 19  # agent: actor 7 (male); clients: 14 and 20 (female), 19 (male)

    # 1. stereo: calm client becomes angry
    turns = [("agent", A, "calm", 1, 1, 1), ("client", C1, "neutral", 1, 1, 1),
             ("agent", A, "neutral", 1, 2, 1), ("client", C1, "calm", 1, 2, 1),
             ("agent", A, "calm", 1, 1, 2), ("client", C1, "neutral", 1, 2, 2),
             ("agent", A, "neutral", 1, 1, 2), ("client", C1, "angry", 1, 1, 1),
             ("agent", A, "calm", 1, 2, 2), ("client", C1, "angry", 2, 2, 1),
             ("client", C1, "angry", 2, 1, 2), ("agent", A, "calm", 2, 1, 1),
             ("client", C1, "angry", 2, 2, 2), ("client", C1, "angry", 1, 2, 2)]
    tr, _ = dialogue(data, turns, rng)
    sf.write(out / "anger_escalation.flac", np.stack([tr["agent"], tr["client"]], axis=1), SR, subtype="PCM_16")

    # 2. mono mix + RTTM: sad/angry client recovers to happy
    turns = [("agent", A, "neutral", 1, 1, 1), ("client", C2, "sad", 2, 1, 1),
             ("agent", A, "calm", 1, 2, 1), ("client", C2, "angry", 1, 2, 1),
             ("client", C2, "sad", 2, 2, 2), ("agent", A, "calm", 2, 1, 2),
             ("client", C2, "neutral", 1, 1, 2), ("agent", A, "happy", 1, 2, 2),
             ("client", C2, "happy", 1, 1, 1), ("client", C2, "happy", 2, 2, 1),
             ("agent", A, "happy", 2, 1, 1), ("client", C2, "happy", 2, 1, 2)]
    tr, segs = dialogue(data, turns, rng)
    sf.write(out / "recovery.flac", tr["agent"] + tr["client"], SR, subtype="PCM_16")
    labels = {"agent": "SPEAKER_00", "client": "SPEAKER_01"}
    (out / "recovery.rttm").write_text("".join(
        f"SPEAKER recovery 1 {on:.3f} {dur:.3f} <NA> <NA> {labels[role]} <NA> <NA>\n" for on, dur, role in segs))

    # 3. per-speaker files: a steady, pleasant call
    turns = [("agent", A, "happy", 1, 1, 1), ("client", C3, "calm", 1, 1, 1),
             ("agent", A, "calm", 1, 2, 1), ("client", C3, "happy", 1, 2, 1),
             ("agent", A, "calm", 1, 1, 2), ("client", C3, "calm", 2, 2, 2),
             ("agent", A, "happy", 1, 2, 2), ("client", C3, "happy", 1, 1, 2),
             ("client", C3, "calm", 1, 2, 2)]
    tr, _ = dialogue(data, turns, rng)
    (out / "steady").mkdir(exist_ok=True)
    for role in ("agent", "client"):
        sf.write(out / "steady" / f"{role}.flac", tr[role], SR, subtype="PCM_16")

    # 4. mono client only, with a 6 s hold: neutral start, sad end
    turns = [("client", C1, "neutral", 1, 1, 2), ("client", C1, "calm", 1, 1, 1),
             ("client", C1, "neutral", 1, 2, 1), ("client", C1, "calm", 2, 2, 1),
             ("client", C1, "sad", 1, 1, 1), ("client", C1, "sad", 2, 1, 2),
             ("client", C1, "sad", 2, 2, 1), ("client", C1, "sad", 2, 2, 2), ("client", C1, "sad", 1, 2, 2)]
    tr, _ = dialogue(data, turns, rng, hold_after=2)
    sf.write(out / "negative_end.flac", tr["client"], SR, subtype="PCM_16")

    with open(out / "calls.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["call_id", "date", "queue", "agent_id"])
        w.writerows([["anger_escalation", "2026-11-24", "billing", "A017"],
                     ["recovery", "2026-11-24", "support", "A017"],
                     ["steady", "2026-11-24", "sales", "A042"],
                     ["negative_end", "2026-11-25", "support", "A042"]])
    (out / "LICENCE.md").write_text(
        "These demo calls are derived from RAVDESS speech (Livingstone SR, Russo FA (2018). The Ryerson "
        "Audio-Visual Database of Emotional Speech and Song (RAVDESS). PLoS ONE 13(5): e0196391. "
        "https://doi.org/10.1371/journal.pone.0196391), licensed CC BY-NC-SA 4.0: attribution, "
        "non-commercial use only, share-alike. They are redistributed here under the same licence, "
        "converted to 8 kHz and concatenated into dialogues by examples/make_demo_calls.py.\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=HERE.parent.parent / "shared" / "data" / "ravdess")
    ap.add_argument("--out", type=Path, default=HERE / "calls")
    a = ap.parse_args()
    build(a.data, a.out)
    print(f"demo calls written to {a.out}")


if __name__ == "__main__":
    main()
