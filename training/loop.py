"""One training run per seed and the multi-seed driver (evaluation: ``evaluation.py``).

Run directory layout (every file written atomically; a finished seed is never retrained, so an
interrupted multi-seed run resumes where it stopped)::

    RUN_DIR/config.json          resolved config (+ data hash)
    RUN_DIR/split.json           call_id -> train/dev/test (by speaker/group)
    RUN_DIR/seed_42/metrics.jsonl   one line per epoch
    RUN_DIR/seed_42/best.pt      best-dev checkpoint (with dev/test CCC in its metadata)
    RUN_DIR/seed_42/result.json  dev/test CCC of the best checkpoint
    RUN_DIR/summary.json         mean (sd) of test CCC over seeds

A refit run (``run_training(refit_from=RUN)``, :mod:`.refit`) has the same layout: its split.json
marks the source's dev calls ``train``, metrics.jsonl has no dev numbers, and best.pt is the
weights after the last replayed epoch.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from cusemo_batch.files import atomic_write_text

from .adversary import SpeakerAdversary, require_speakers, segment_speakers, speaker_ids
from .checkpoint import load_checkpoint, save_checkpoint
from .config import Config
from .corpus import Corpus, read_corpus
from .data import CallData, augment_calls, batch_arrays, data_hash, load_calls, make_segments, split_groups
from .losses import bce_loss, ccc_loss, total_loss
from .evaluation import Pooler, collapsed, evaluate_calls, summarise
from .model import CRNN
from .refit import read_refit_plan, refit_split

Log = Callable[[str], None]


@dataclass
class Prepared:
    """Everything a run needs that does not depend on the seed (decoded once, shared by seeds)."""

    cfg: Config
    corpus: Corpus
    calls: list[CallData]
    split: dict[str, str]
    data_sha256: str

    def indices(self, name: str) -> list[int]:
        return [i for i, c in enumerate(self.calls) if self.split[c.call_id] == name]


def prepare(corpus_dir: str | Path, cfg: Config, calls: Sequence[str] | None = None) -> Prepared:
    """Read and decode the corpus once; ``calls`` restricts it to those call ids (a selection)."""
    cfg = cfg.resolved()
    corpus = read_corpus(corpus_dir, min_annotators=cfg.data.min_annotators)
    if calls is not None:
        corpus.calls = select_calls(corpus, calls)
    if cfg.data.max_calls and cfg.data.max_calls < len(corpus.calls):
        keep = np.random.default_rng(cfg.data.split_seed).choice(len(corpus.calls), cfg.data.max_calls, replace=False)
        corpus.calls = [corpus.calls[i] for i in sorted(keep)]
    calls = load_calls(corpus, cfg)
    names = split_groups([c.group for c in calls], cfg.data.split, cfg.data.split_seed)
    split = {c.call_id: n for c, n in zip(calls, names)}
    return Prepared(cfg, corpus, calls, split, data_hash(corpus))


def select_calls(corpus: Corpus, call_ids: Sequence[str]) -> list:
    """The corpus calls named in ``call_ids`` (e.g. ``prepare select``'s list), in corpus order.

    Every id must be in the corpus: a selection made on another corpus (or a typo) is an error,
    not a silently smaller training set.
    """
    wanted = list(dict.fromkeys(str(c).strip() for c in call_ids if str(c).strip()))
    if not wanted:
        raise ValueError("the call list is empty: nothing to train on")
    known = {c.call_id for c in corpus.calls}
    missing = [c for c in wanted if c not in known]
    if missing:
        raise ValueError(f"{len(missing)} listed call(s) not in the corpus (or dropped by its checks): "
                         f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
    keep = set(wanted)
    return [c for c in corpus.calls if c.call_id in keep]


def read_call_list(path: str | Path) -> list[str]:
    """Call ids from a CSV or Parquet with a ``call_id`` column, or a text file with one id per line."""
    import polars as pl

    path = Path(path)
    if path.suffix.lower() in (".csv", ".parquet"):
        try:
            df = pl.read_parquet(path) if path.suffix.lower() == ".parquet" else pl.read_csv(path, infer_schema=False)
        except Exception as e:
            raise ValueError(f"{path}: cannot read the call list ({str(e).strip().splitlines()[0][:160]})") from None
        if "call_id" not in df.columns:
            raise ValueError(f"{path}: no call_id column (columns: {', '.join(df.columns)})")
        return df["call_id"].cast(pl.Utf8).to_list()
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and not line.startswith("#")]


def batch_loss(model: CRNN, pool: Pooler, batch: dict[str, np.ndarray], cfg: Config,
               adversary: SpeakerAdversary | None = None) -> tuple[torch.Tensor, dict]:
    """Eq. 3's loss of one batch, plus the speaker adversary's cross-entropy when there is one
    (``batch["speaker"]``: each row's training-speaker class)."""
    audio = torch.from_numpy(batch["audio"])
    mask = torch.from_numpy(batch["mask"])
    lengths = torch.from_numpy(batch["lengths"])
    if adversary is None:
        frames = model(audio, lengths)
    else:
        frames, seq = model(audio, lengths, return_hidden=True)
        l_speaker, l_push = adversary.parts(seq, torch.div(lengths, model.config.hop, rounding_mode="floor"),
                                            torch.from_numpy(batch["speaker"]))
    bins = pool(frames, mask.shape[1])
    w = cfg.loss.mse_weight
    lv = ccc_loss(bins[..., 0], torch.from_numpy(batch["valence"]), mask, mse_weight=w)
    la = ccc_loss(bins[..., 1], torch.from_numpy(batch["arousal"]), mask, mse_weight=w)
    head = 2
    l_alpha = l_beta = None
    if cfg.loss.alpha > 0:
        target = torch.from_numpy(batch["alpha"])[:, None].expand_as(mask)
        l_alpha = ccc_loss(bins[..., head], target, mask)
        head += 1
    if cfg.loss.beta > 0:
        logits = (bins[..., head] * mask).sum(1) / mask.sum(1).clamp(min=1)
        l_beta = bce_loss(logits, torch.from_numpy(batch["beta"]))
    loss = total_loss(lv, la, l_alpha, l_beta, cfg.loss.alpha, cfg.loss.beta)
    parts = {"valence": float(lv.detach()), "arousal": float(la.detach())}
    if adversary is not None:
        # the head minimises its cross-entropy; the network gets that gradient reversed (x weight), or
        # with "confusion" minimises the head's certainty instead (x weight)
        loss = loss + l_speaker
        parts["speaker"] = float(l_speaker.detach())
        if l_push is not None:
            loss = loss + adversary.weight * l_push
            parts["speaker_confusion"] = float(l_push.detach())
    if l_alpha is not None:
        parts["alpha"] = float(l_alpha.detach())
    if l_beta is not None:
        parts["beta"] = float(l_beta.detach())
    return loss, parts


def _optimizer(model: CRNN, lr: float, lstm_lr_factor: float,
               adversary: SpeakerAdversary | None = None, adversary_lr_factor: float = 1.0) -> torch.optim.Adam:
    """Adam with the LSTM in its own parameter group (``lr_factor`` scales its learning rate), and
    the speaker adversary's head in a third (at ``adversary_lr_factor`` times the rate) when there
    is one."""
    lstm = list(model.lstm.parameters())
    ids = {id(p) for p in lstm}
    groups = [
        {"params": [p for p in model.parameters() if id(p) not in ids], "lr": lr, "lr_factor": 1.0},
        {"params": lstm, "lr": lr * lstm_lr_factor, "lr_factor": lstm_lr_factor},
    ]
    if adversary is not None:
        groups.append({"params": list(adversary.parameters()), "lr": lr * adversary_lr_factor,
                       "lr_factor": adversary_lr_factor})
    return torch.optim.Adam(groups, lr=lr)


def _select(metrics: dict, on: str) -> float:
    v = (metrics["valence"] + metrics["arousal"]) / 2 if on == "mean" else metrics[on]
    return v if math.isfinite(v) else -1.0


def _ema(model: CRNN, decay: float) -> torch.optim.swa_utils.AveragedModel | None:
    """torch's weight averaging as an EMA with warm-up (buffers too: batch-norm statistics are averaged
    like weights), or None.

    The rate after ``n`` updates is ``min(decay, (1 + n) / (10 + n))`` (as TensorFlow's and timm's
    EMA): a plain EMA starts at the initial weights and, with ~20 steps an epoch, spent the first
    epochs averaging the random init with a fast-moving model -- constant dev predictions that
    the plateau schedule took for stalls (measured: lr halved after epoch 2, seeds 42 and 24).
    Dev evaluation and early stopping see the average, which is what ships.
    """
    if not decay:
        return None
    from torch.optim.swa_utils import AveragedModel

    def ema(avg: torch.Tensor, new: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        d = min(decay, (1.0 + float(n)) / (10.0 + float(n)))
        return avg * d + new * (1.0 - d) if avg.is_floating_point() else new

    return AveragedModel(model, avg_fn=ema, use_buffers=True)


def _batches(segments: list, batch_size: int, rng: np.random.Generator, by_length: bool) -> list[np.ndarray]:
    """Shuffled mini-batches of segment indices.

    ``by_length`` (models with batch norm): segments of similar length share a batch -- most are
    full ``segment_s`` windows, drawn at random among themselves; the shorter tails go together --
    so almost no batch carries zero padding, which would otherwise enter the batch statistics
    (MaskedBatchNorm1d keeps what padding remains out, at a cost). The batch order is shuffled.
    """
    n = len(segments)
    if not by_length:
        order = rng.permutation(n)
        return [order[i:i + batch_size] for i in range(0, n, batch_size)]
    lengths = np.array([s.bin1 - s.bin0 for s in segments])
    order = np.lexsort((rng.random(n), -lengths))  # longest first, random among equal lengths
    batches = [order[i:i + batch_size] for i in range(0, n, batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


class _SeedModel:
    """The network, its optimiser, the weight average and the learning-rate state of one seed.

    One owner for what a collapse restart replaces together (model, optimiser, EMA, step count).
    """

    def __init__(self, cfg: Config, model: CRNN | None = None, lr: float | None = None,
                 speakers: dict[int, int] | None = None) -> None:
        self.cfg = cfg
        self.model = model if model is not None else CRNN(cfg.model)
        self.lr = cfg.train.lr if lr is None else lr
        # call index -> training-speaker class; the adversary (built after the network, so a recipe
        # without it draws the same initial weights) exists only with [loss] speaker_adversary > 0
        self.speakers = speakers or {}
        self.adversary = (SpeakerAdversary(cfg.model.lstm_hidden, len(set(self.speakers.values())),
                                           cfg.loss.speaker_adversary, cfg.loss.speaker_adversary_mode)
                          if cfg.loss.speaker_adversary > 0 else None)
        self.opt = _optimizer(self.model, self.lr, cfg.train.lstm_lr_factor, self.adversary,
                              cfg.loss.speaker_adversary_lr_factor)
        self.ema = _ema(self.model, cfg.train.ema_decay)
        self.step = 0

    @property
    def kept(self) -> CRNN:
        """What dev evaluation sees and the checkpoint stores: the weight average when there is one."""
        return self.model if self.ema is None else self.ema.module

    def train_step(self, loss: torch.Tensor) -> None:
        """Backward, clip, warm-up/plateau rate for every group, Adam step, EMA update."""
        t = self.cfg.train
        self.opt.zero_grad()
        loss.backward()
        if t.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip)
        self.step += 1
        warm = min(1.0, self.step / t.warmup_steps) if t.warmup_steps else 1.0
        for group in self.opt.param_groups:
            group["lr"] = group["lr_factor"] * self.lr * warm
        self.opt.step()
        if self.ema is not None:
            self.ema.update_parameters(self.model)


@dataclass
class _Schedule:
    """Best-dev tracking, early stopping, ReduceLROnPlateau and collapse restarts of one seed."""

    best: float = -math.inf
    best_epoch: int = 0
    stale: int = 0
    plateau: int = 0
    restarts: int = 0

    def improved(self, score: float, epoch: int) -> None:
        self.best, self.best_epoch, self.stale, self.plateau = score, epoch, 0, 0

    def stalled(self, train_cfg) -> tuple[bool, bool]:
        """One more epoch without a new best: (lower the rate now?, stop now?)."""
        self.stale += 1
        self.plateau += 1
        lower = bool(train_cfg.plateau_factor) and self.plateau >= train_cfg.plateau_patience
        if lower:
            self.plateau = 0
        return lower, bool(train_cfg.patience) and self.stale >= train_cfg.patience


def _train_epoch(sm: _SeedModel, prep: Prepared, segments: list, train_idx: list[int], pool: Pooler,
                 rng: np.random.Generator, aug_rng: np.random.Generator, progress: Callable[[int], None]
                 ) -> dict[str, float]:
    """One pass over the training segments (batch order, augmentation and cuts drawn from the seed's rngs).

    Returns the epoch's mean training loss, and with a speaker adversary its mean cross-entropy
    (``speaker_loss``: near ln(speakers) means the head cannot name the voice from the network's
    output -- the adversary is winning, or not learning) and, in confusion mode, the mean
    confusion term (``speaker_confusion``, unweighted)."""
    cfg = prep.cfg
    sm.model.train()
    if sm.adversary is not None:
        sm.adversary.train()
    batches = _batches(segments, cfg.train.batch_size, rng, by_length=cfg.model.conv_norm == "batch")
    line_audio = augment_calls(prep.calls, train_idx, cfg, aug_rng)
    if cfg.train.max_batches_per_epoch:
        batches = batches[: cfg.train.max_batches_per_epoch]
    losses, speaker, confusion = [], [], []
    for b in batches:
        segs = [segments[i] for i in b]
        batch = batch_arrays(segs, prep.calls, cfg, rng, line_audio)
        if sm.adversary is not None:
            batch["speaker"] = segment_speakers([s.call for s in segs], sm.speakers)
        loss, parts = batch_loss(sm.model, pool, batch, cfg, sm.adversary)
        sm.train_step(loss)
        losses.append(float(loss.detach()))
        if "speaker" in parts:
            speaker.append(parts["speaker"])
        if "speaker_confusion" in parts:
            confusion.append(parts["speaker_confusion"])
        progress(1)
    out = {"train_loss": float(np.mean(losses))}
    if speaker:
        out["speaker_loss"] = float(np.mean(speaker))
    if confusion:  # logged so that the emotion part of train_loss can be told apart
        out["speaker_confusion"] = float(np.mean(confusion))
    return out


def _training_speakers(prep: Prepared) -> dict[int, int] | None:
    """Call index -> training-speaker class for the speaker adversary (None without one); raises
    ValueError with fewer than 2 training speakers."""
    if prep.cfg.loss.speaker_adversary <= 0:
        return None
    ids = speaker_ids([c.group for c in prep.calls], prep.indices("train"))
    require_speakers(len(set(ids.values())))
    return ids


def _seed_setup(prep: Prepared, seed: int, out_dir: Path, threads: int | None
                ) -> tuple[np.random.Generator, np.random.Generator, _SeedModel, Pooler]:
    """What one seed starts from, in a fixed order (torch seed, then the initial weights): the
    batch/cut rng, the augmentation rng, the model and optimiser, the label pooler."""
    cfg = prep.cfg
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    # separate stream for the channel augmentation: switching it on or off (or changing how many
    # draws a line takes) leaves the segment cuts and the batch order of a seed unchanged
    aug_rng = np.random.default_rng([seed, 1])
    if threads or cfg.train.threads:
        torch.set_num_threads(threads or cfg.train.threads)
    sm = _SeedModel(cfg, speakers=_training_speakers(prep))
    pool = Pooler(1 / cfg.model.frame_rate, cfg.data.label_rate_ms / 1000)
    return rng, aug_rng, sm, pool


def train_seed(prep: Prepared, seed: int, out_dir: Path, log: Log = print,
               progress: Callable[[int], None] = lambda n=1: None, threads: int | None = None) -> dict:
    """Train one seed; keep the best-dev checkpoint; evaluate it on test. Returns result.json.

    ``threads`` overrides ``[train] threads`` (parallel seeds share the cores; the numbers do not
    depend on it beyond float rounding).
    """
    cfg = prep.cfg
    rng, aug_rng, sm, pool = _seed_setup(prep, seed, out_dir, threads)
    train_idx, dev_idx, test_idx = prep.indices("train"), prep.indices("dev"), prep.indices("test")
    if not train_idx:
        raise ValueError("the training split is empty (too few calls or speakers for the split fractions)")
    segments = make_segments(prep.calls, train_idx, cfg)
    dev_calls = [prep.calls[i] for i in dev_idx] or [prep.calls[i] for i in train_idx]
    meta = _checkpoint_meta(prep, seed)
    sched = _Schedule()
    lines: list[str] = []
    for epoch in range(1, cfg.train.epochs + 1):
        t0 = time.perf_counter()
        if cfg.data.segment_jitter:
            segments = make_segments(prep.calls, train_idx, cfg, rng)
        train = _train_epoch(sm, prep, segments, train_idx, pool, rng, aug_rng, progress)
        dev = evaluate_calls(sm.kept, dev_calls, cfg)
        record = {"epoch": epoch, **train, "dev": dev, "lr": sm.lr,
                  "seconds": round(time.perf_counter() - t0, 2)}
        lines.append(json.dumps(record))
        atomic_write_text(out_dir / "metrics.jsonl", "\n".join(lines) + "\n")
        spk = f" (speaker {train['speaker_loss']:.3f})" if "speaker_loss" in train else ""
        log(f"seed {seed} epoch {epoch}/{cfg.train.epochs}: loss {record['train_loss']:.4f}{spk}  "
            f"dev CCC valence {dev['valence']:.3f} arousal {dev['arousal']:.3f}  ({record['seconds']:.0f} s)")
        score, dead = _select(dev, cfg.train.select_on), collapsed(dev)
        if score > sched.best and not dead:
            sched.improved(score, epoch)
            save_checkpoint(out_dir / "best.pt", sm.kept, {**meta, "epoch": epoch, "dev_ccc": _dims(dev)})
        elif dead and sched.restarts < cfg.train.collapse_restarts:
            sched.restarts += 1
            sm = _restart(sm, sched, out_dir)
            sched.stale = 0
            log(f"seed {seed} epoch {epoch}: dev predictions collapsed (constant, diverged or uncorrelated); restart "
                f"{sched.restarts}/{cfg.train.collapse_restarts} from epoch {sched.best_epoch or 'init'} with lr {sm.lr:g}")
        else:
            lower, stop = sched.stalled(cfg.train)
            if lower:
                sm.lr *= cfg.train.plateau_factor  # the step loop sets every group's rate from lr
                log(f"seed {seed} epoch {epoch}: no dev improvement for {cfg.train.plateau_patience} epochs; lr {sm.lr:g}")
            if stop:
                log(f"seed {seed}: early stop after {epoch} epochs (best epoch {sched.best_epoch})")
                break
    if not sched.best_epoch:  # every epoch collapsed: keep the last model so that the run still reports
        save_checkpoint(out_dir / "best.pt", sm.kept, {**meta, "epoch": len(lines), "dev_ccc": {}})
    return _final_result(prep, seed, out_dir, dev_calls, test_idx, sched, len(lines))


def refit_seed(prep: Prepared, seed: int, out_dir: Path, lrs: Sequence[float], log: Log = print,
               progress: Callable[[int], None] = lambda n=1: None, threads: int | None = None,
               refit: dict | None = None) -> dict:
    """Train one seed on ``prep``'s training calls for ``len(lrs)`` epochs at those rates; keep the
    last weights (the EMA when the recipe has one) and evaluate them on test.

    The refit half of :mod:`.refit`: ``prep.split`` already counts the source's dev calls as
    training calls, and nothing here looks at held-out data until the end. The seed's random
    streams are set up as in :func:`train_seed`, so a refit is as deterministic as a run.
    """
    cfg = prep.cfg
    rng, aug_rng, sm, pool = _seed_setup(prep, seed, out_dir, threads)
    train_idx, test_idx = prep.indices("train"), prep.indices("test")
    segments = make_segments(prep.calls, train_idx, cfg)
    lines: list[str] = []
    for epoch, lr in enumerate(lrs, 1):
        t0 = time.perf_counter()
        sm.lr = float(lr)  # the rate the source seed had in this epoch (its plateau schedule, replayed)
        if cfg.data.segment_jitter:
            segments = make_segments(prep.calls, train_idx, cfg, rng)
        train = _train_epoch(sm, prep, segments, train_idx, pool, rng, aug_rng, progress)
        record = {"epoch": epoch, **train, "lr": sm.lr,
                  "seconds": round(time.perf_counter() - t0, 2)}
        lines.append(json.dumps(record))
        atomic_write_text(out_dir / "metrics.jsonl", "\n".join(lines) + "\n")
        log(f"seed {seed} refit epoch {epoch}/{len(lrs)}: loss {record['train_loss']:.4f}  lr {sm.lr:g}  "
            f"({record['seconds']:.0f} s)")
    meta = {**_checkpoint_meta(prep, seed), "epoch": len(lines), "dev_ccc": {}, "refit_from": refit or {}}
    save_checkpoint(out_dir / "best.pt", sm.kept, meta)
    sched = _Schedule(best_epoch=len(lines))
    return _final_result(prep, seed, out_dir, [], test_idx, sched, len(lines))


def _restart(sm: _SeedModel, sched: _Schedule, out_dir: Path) -> _SeedModel:
    """After a collapse: the best checkpoint so far (or fresh weights), a lower rate, a new optimiser."""
    cfg = sm.cfg
    lr = sm.lr * cfg.train.collapse_lr_factor
    if sched.best_epoch:
        model = sm.model
        model.load_state_dict(load_checkpoint(out_dir / "best.pt")[0].state_dict())
    else:
        model = CRNN(cfg.model)  # collapsed before any usable epoch: fresh weights
    return _SeedModel(cfg, model, lr, sm.speakers)


def _checkpoint_meta(prep: Prepared, seed: int) -> dict:
    cfg = prep.cfg
    return {
        "name": cfg.name, "seed": seed, "sample_rate": cfg.model.sample_rate,
        "label_rate_ms": cfg.data.label_rate_ms, "normalisation": cfg.data.normalisation,
        "heads": list(cfg.model.outputs), "config": cfg.to_dict(),
        "train_data": {"description": _describe(prep), "sha256": prep.data_sha256},
    }


def _final_result(prep: Prepared, seed: int, out_dir: Path, dev_calls: list[CallData], test_idx: list[int],
                  sched: _Schedule, epochs_run: int) -> dict:
    """Evaluate the best checkpoint on dev and test, stamp it, write result.json."""
    cfg = prep.cfg
    best_model, best_meta = load_checkpoint(out_dir / "best.pt")
    test = evaluate_calls(best_model, [prep.calls[i] for i in test_idx], cfg) if test_idx else {}
    dev = evaluate_calls(best_model, dev_calls, cfg) if dev_calls else {}
    best_meta.pop("checkpoint_sha256", None)
    save_checkpoint(out_dir / "best.pt", best_model, {**best_meta, "dev_ccc": _dims(dev), "test_ccc": _dims(test)})
    result = {"seed": seed, "best_epoch": sched.best_epoch, "epochs_run": epochs_run,
              "collapse_restarts": sched.restarts, "dev": dev, "test": test}
    atomic_write_text(out_dir / "result.json", json.dumps(result, indent=2))
    return result


def _dims(m: dict) -> dict:
    return {k: m[k] for k in ("valence", "arousal", "valence_per_call", "arousal_per_call") if k in m}


def _describe(prep: Prepared) -> str:
    hours = sum(len(c.audio) for c in prep.calls) / prep.cfg.model.sample_rate / 3600
    counts = {n: sum(1 for v in prep.split.values() if v == n) for n in ("train", "dev", "test")}
    return (f"{prep.corpus.root.name}: {len(prep.calls)} calls, {hours:.2f} h, split train/dev/test "
            f"{counts['train']}/{counts['dev']}/{counts['test']} calls by {prep.cfg.data.group_by}")


def _seed_job(corpus_dir: str, cfg_dict: dict, calls: Sequence[str] | None, seed: int, seed_dir: str,
              threads: int, refit: dict | None = None) -> dict:
    """One seed in a worker process (``run_training(jobs > 1)``): decode, train, return result.json."""
    import os
    import threading

    from .config import from_dict

    parent = os.getppid()

    def watchdog() -> None:  # a killed parent must not leave a seed training on (and racing a rerun)
        while os.getppid() == parent:
            time.sleep(2.0)
        os._exit(1)

    threading.Thread(target=watchdog, daemon=True).start()
    prep = prepare(corpus_dir, from_dict(cfg_dict), calls)
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    if refit is None:
        return train_seed(prep, seed, Path(seed_dir), log, threads=threads)
    prep.split = refit_split(prep.split)
    return refit_seed(prep, seed, Path(seed_dir), refit["lrs"], log, threads=threads, refit=refit["plan"])


def run_training(corpus_dir: str | Path, cfg: Config, out_dir: str | Path, log: Log = print,
                 progress_factory=None, calls: Sequence[str] | None = None, jobs: int = 1,
                 refit_from: str | Path | None = None) -> dict:
    """Train every seed of ``cfg`` (skipping seeds already finished in ``out_dir``) and summarise.

    ``calls`` restricts training, dev and test to those call ids (``train --calls``); the data
    hash then covers only them, so resuming with another selection is refused. ``jobs`` > 1 trains
    that many seeds at once in worker processes, sharing ``[train] threads`` (or all cores) between
    them: on 2 cores two one-thread seeds train faster than one two-thread seed after another
    (small LSTM batches do not scale over threads). A seed's numbers depend only on its thread
    count (float summation order), not on how many seeds run beside it.

    ``refit_from`` names a finished run of the same config on the same calls: each seed is then
    retrained on its train + dev calls for the epochs and rates dev chose there, and the seed to
    ship is the one dev chose there (:mod:`.refit`; raises :class:`~.refit.RefitError`).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    prep = prepare(corpus_dir, cfg, calls)
    plan = None
    if refit_from is not None:
        plan = read_refit_plan(refit_from, prep.cfg.to_dict(), prep.data_sha256, prep.split, prep.cfg.train.seeds)
        prep.split = refit_split(prep.split)
    _training_speakers(prep)  # raises before any seed starts (or a worker process fails on it)
    config_record = {"config": prep.cfg.to_dict(), "corpus": str(Path(corpus_dir).resolve()),
                     "data_sha256": prep.data_sha256,
                     "selected_calls": None if calls is None else len(prep.calls)}
    if plan is not None:
        config_record["refit_from"] = plan.to_dict()
    cfg_path = out_dir / "config.json"
    if cfg_path.is_file():
        previous = json.loads(cfg_path.read_text())
        if (previous.get("config") != config_record["config"] or previous.get("data_sha256") != prep.data_sha256
                or previous.get("refit_from") != config_record.get("refit_from")):
            raise ValueError(f"{out_dir} holds a run with another config or corpus; use a new --out")
    atomic_write_text(cfg_path, json.dumps(config_record, indent=2))
    atomic_write_text(out_dir / "split.json", json.dumps(prep.split, indent=2, sort_keys=True))
    n_split = {n: len(prep.indices(n)) for n in ("train", "dev", "test")}
    log(f"{len(prep.calls)} calls ({_describe(prep)}); train/dev/test = "
        f"{n_split['train']}/{n_split['dev']}/{n_split['test']}")
    results = []
    todo = [s for s in prep.cfg.train.seeds if not (out_dir / f"seed_{s}" / "result.json").is_file()]
    if jobs > 1 and len(todo) > 1:
        import multiprocessing
        import os

        total = prep.cfg.train.threads or os.cpu_count() or 1
        per = max(1, total // min(jobs, len(todo)))
        log(f"training seeds {todo} in {min(jobs, len(todo))} processes ({per} thread(s) each)")
        ctx = multiprocessing.get_context("spawn")  # no forked torch thread pools
        with ctx.Pool(min(jobs, len(todo))) as workers:
            workers.starmap(_seed_job, [(str(corpus_dir), prep.cfg.to_dict(), calls, s, str(out_dir / f"seed_{s}"), per,
                                         None if plan is None else {"lrs": plan.lrs[s], "plan": plan.to_dict()})
                                        for s in todo])
    for seed in prep.cfg.train.seeds:
        seed_dir = out_dir / f"seed_{seed}"
        done = seed_dir / "result.json"
        if done.is_file():
            if seed not in todo:
                log(f"seed {seed}: already finished, skipped")
            results.append(json.loads(done.read_text()))
            continue
        def one(advance: Callable[[int], None] = lambda n=1: None) -> dict:
            if plan is None:
                return train_seed(prep, seed, seed_dir, log, advance)
            return refit_seed(prep, seed, seed_dir, plan.lrs[seed], log, advance, refit=plan.to_dict())

        if progress_factory is None:
            results.append(one())
        else:
            with progress_factory(f"seed {seed}") as advance:
                results.append(one(advance))
    summary = summarise(results)
    summary["wall_s"] = round(time.perf_counter() - t0, 1)
    if plan is None:
        summary["best_seed"] = max(results, key=lambda r: _select(r["dev"], prep.cfg.train.select_on))["seed"]
    else:  # nothing is chosen in a refit: the seed dev chose in the source run
        summary["best_seed"] = plan.best_seed
        summary["refit_from"] = plan.to_dict()
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2))
    return summary


