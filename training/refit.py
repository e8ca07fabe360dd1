"""Refit: retrain each seed of a finished run on its train + dev calls, replaying what dev chose.

Why: the dev split exists to *choose* -- the recipe, how long each seed trains (its best dev
epoch, under early stopping and the plateau schedule) and which seed ships. Once those choices are
made, the dev speakers are data the shipped model could learn from: with 24 actors in RAVDESS, dev
holds 5 of the 20 non-test speakers, and a call center's own annotated calls are just as scarce.
The usual final fit (train on train + dev with the chosen settings) is what this module plans.

Nothing is chosen in a refit -- no held-out data is left to choose with. Each seed trains for
exactly its dev-chosen epoch count with the learning rate it had in each of those epochs (the
plateau schedule decided on dev, replayed), and the seed to ship is the one dev chose in the
source run. The test split is the source run's, untouched. The source must be a finished run of
the same config on the same calls, so its split (and the test calls) are the refit's too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


class RefitError(ValueError):
    """The source run cannot be refitted (one-line message)."""


@dataclass(frozen=True)
class RefitPlan:
    """What a refit replays from its source run."""

    source: Path
    lrs: dict[int, tuple[float, ...]]  # per seed: the learning rate of each epoch up to the dev-chosen one
    best_seed: int  # the seed dev chose in the source run: the one a refit ships
    dev_calls: int  # how many source dev calls the refit trains on

    def to_dict(self) -> dict:
        return {"source": str(self.source), "best_seed": self.best_seed,
                "epochs": {str(s): len(v) for s, v in self.lrs.items()}, "dev_calls": self.dev_calls}


def read_refit_plan(source: str | Path, config: dict, data_sha256: str, split: dict[str, str],
                    seeds: tuple[int, ...]) -> RefitPlan:
    """The plan for refitting ``seeds`` of the finished run in ``source``.

    ``config``, ``data_sha256`` and ``split`` are the refit's own (resolved config dict, data hash,
    call -> split before refitting): they must equal the source run's, so that the replayed epochs
    and rates mean the same thing and the test calls stay held out. Raises :class:`RefitError`.
    """
    source = Path(source)
    try:
        record = json.loads((source / "config.json").read_text())
        source_split = json.loads((source / "split.json").read_text())
        summary = json.loads((source / "summary.json").read_text())
    except (OSError, ValueError) as e:
        raise RefitError(f"{source}: not a finished training run ({type(e).__name__}: {e})") from None
    if record.get("refit_from"):
        raise RefitError(f"{source}: is itself a refit (it has no dev epochs to replay)")
    if _recipe(record.get("config")) != _recipe(config):
        raise RefitError(f"{source}: was trained with another config; a refit replays the source's own config")
    if record.get("data_sha256") != data_sha256 or source_split != split:
        raise RefitError(f"{source}: was trained on other calls (data hash or split differs)")
    best_seed = int(summary["best_seed"])
    if best_seed not in seeds:
        raise RefitError(f"seed {best_seed}, the one dev chose in {source}, must be among the refit's seeds")
    lrs: dict[int, tuple[float, ...]] = {}
    for seed in seeds:
        seed_dir = source / f"seed_{seed}"
        try:
            result = json.loads((seed_dir / "result.json").read_text())
            epochs = [json.loads(x) for x in (seed_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
        except (OSError, ValueError):
            raise RefitError(f"{source}: seed {seed} has not finished there") from None
        # the epochs whose weights the source kept: up to the best dev epoch, or all of them for a
        # seed whose every dev epoch collapsed (the source then kept its last weights)
        best = int(result.get("best_epoch") or 0) or int(result.get("epochs_run") or 0)
        if best < 1 or len(epochs) < best:
            raise RefitError(f"{source}: seed {seed} has no dev-chosen epoch to replay")
        if result.get("collapse_restarts"):
            raise RefitError(f"{source}: seed {seed} was restarted after a collapse; its schedule cannot be replayed")
        lrs[seed] = tuple(float(e["lr"]) for e in epochs[:best])
    dev = sum(1 for s in split.values() if s == "dev")
    if not dev:
        raise RefitError(f"{source}: has no dev calls, so there is nothing to refit on")
    return RefitPlan(source, lrs, best_seed, dev)


def _recipe(config: dict | None) -> dict | None:
    """The config without what may differ between a run and its refit: which seeds (a subset may be
    refitted) and the thread count (it moves numbers by float rounding only)."""
    if config is None:
        return None
    train = {k: v for k, v in config.get("train", {}).items() if k not in ("seeds", "threads")}
    return {**config, "train": train}


def refit_split(split: dict[str, str]) -> dict[str, str]:
    """The refit's split: dev calls become training calls, test stays test."""
    return {c: "train" if s == "dev" else s for c, s in split.items()}
