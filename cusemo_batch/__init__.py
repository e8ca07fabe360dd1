"""cusemo-batch: continuous speech-emotion (valence, arousal) analytics for call-center recordings.

The public API, importable from the top (``import cusemo_batch as cb``)::

    result = cb.score_folder("examples/calls", roles={"SPEAKER_00": "agent", "SPEAKER_01": "client"})
    result.calls, result.timeseries, result.events, result.errors     # polars DataFrames
    result = cb.score_files(["a.wav", "b.flac"])                       # one call per file
    summary = cb.score_nightly("examples/calls", "out/emotion")      # the nightly job: Parquet store
    model = cb.load_model()                                            # the embedded default model
    cb.report.build("out/emotion", output="report.html")              # the morning report

Options are keyword-only everywhere; :meth:`ScoreOptions.make` takes scoring and discovery options
as one flat set (``rate_s``, ``roles``, ``speakers``, ``min_speech_s``...). The runtime (this
package minus ``training``/``export``) needs only numpy, scipy, polars, pyarrow, soundfile and
onnxruntime -- never torch -- and ``import cusemo_batch`` itself imports none of them: every name
below is loaded on first use.
"""

from __future__ import annotations

from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

__version__ = "0.1.0"

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from .calls import DiscoveryOptions
    from .changes import ChangeConfig
    from .model import Model, ModelError
    from .engine import Engine
    from .nightly import RunSummary
    from .scorer import Result, ScoreOptions, Scorer

_LAZY = {
    "Scorer": "scorer", "ScoreOptions": "scorer", "Result": "scorer",
    "Model": "model", "ModelError": "model",
    "DiscoveryOptions": "calls", "ChangeConfig": "changes", "RunSummary": "nightly",
    "report": None,
}
__all__ = ["__version__", "load_model", "score_folder", "score_files", "score_nightly", *_LAZY]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'cusemo_batch' has no attribute {name!r}")
    module = import_module(f".{_LAZY[name] or name}", __name__)
    return module if _LAZY[name] is None else getattr(module, name)


def load_model(path: str | Path | None = None, *, device: str = "auto", threads: int | None = None) -> "Model":
    """Open an exported model (``NAME.onnx`` + ``NAME.stream.onnx``); None = the embedded default.

    Parameters
    ----------
    path : the whole-graph file written by ``cusemo-batch export``, or None.
    device : ``auto`` (CUDA when usable, else CPU with one warning), ``cpu`` or ``cuda`` (CUDA or
        a ModelError).
    threads : onnxruntime intra-op threads (default: all cores).

    Examples
    --------
    >>> import cusemo_batch as cb
    >>> m = cb.load_model(device="cpu")
    >>> m.outputs[:2], m.sample_rate
    (('valence', 'arousal'), 8000)
    """
    from .model import Model, ModelError
    from .scorer import DEFAULT_MODEL

    if path is None and not DEFAULT_MODEL.is_file():
        raise ModelError(f"no embedded default model in this install ({DEFAULT_MODEL}); pass a model file")
    model = Model(DEFAULT_MODEL if path is None else path, device=device, threads=threads)
    model.check_stream()
    return model


def _scorer(model: "str | Path | Model | None", device: str, threads: int | None,
            options: "ScoreOptions | None", option_kwargs: dict[str, Any]) -> "Scorer":
    from .scorer import ScoreOptions, Scorer

    if options is not None and option_kwargs:
        raise TypeError("pass either options=ScoreOptions(...) or option keywords, not both")
    opts = options or ScoreOptions.make(**option_kwargs)
    return Scorer(model, device=device, threads=threads, options=opts)


def score_folder(path: str | Path, *, model: "str | Path | Model | None" = None, device: str = "auto",
                 threads: int | None = None, options: "ScoreOptions | None" = None, **option_kwargs: Any
                 ) -> "Result":
    """Score every call under a folder in memory (no store): see ``cusemo-batch score`` for layouts.

    Parameters
    ----------
    path : folder searched recursively (stereo, per-speaker, mono + RTTM and mono calls, mixed).
    model : a model file or a :class:`Model`; None = the embedded default.
    options, **option_kwargs : a :class:`ScoreOptions`, or its fields and those of
        :class:`DiscoveryOptions` as keywords (``roles``, ``speakers``, ``rate_s``...).

    Returns
    -------
    Result with ``timeseries``, ``calls``, ``events`` and ``errors`` (polars DataFrames).

    Examples
    --------
    >>> import cusemo_batch as cb
    >>> r = cb.score_folder("examples/calls", device="cpu",
    ...                     roles={"SPEAKER_00": "agent", "SPEAKER_01": "client"})
    >>> sorted(r.calls["call_id"].unique())
    ['anger_escalation', 'negative_end', 'recovery', 'steady']
    """
    return _scorer(model, device, threads, options, option_kwargs).score_folder(path)


def score_files(files: Iterable[str | Path], *, model: "str | Path | Model | None" = None, device: str = "auto",
                threads: int | None = None, options: "ScoreOptions | None" = None, **option_kwargs: Any
                ) -> "Result":
    """Score audio files in memory, one call per file (call id = file name without suffix).

    Examples
    --------
    >>> import cusemo_batch as cb
    >>> r = cb.score_files(["examples/calls/negative_end.flac"], device="cpu")
    >>> r.timeseries.columns[:6]
    ['call_id', 'speaker', 't_start_s', 't_end_s', 'valence', 'arousal']
    """
    return _scorer(model, device, threads, options, option_kwargs).score_files(files)


def score_nightly(calls_dir: str | Path | None, out: str | Path, *, model: "str | Path | Model | None" = None,
                  device: str = "auto", threads: int | None = None, force: bool = False,
                  call_list: str | Path | None = None, engine: "Engine | None" = None,
                  options: "ScoreOptions | None" = None, **option_kwargs: Any) -> "RunSummary":
    """The nightly job (``cusemo-batch score``) as a function: score into the Parquet store at ``out``.

    Skips unchanged calls, never loses good rows, writes atomically, holds ``out``'s lock; see
    :mod:`cusemo_batch.nightly`. Returns the run's summary (``exit_code`` is what the CLI exits with).
    ``call_list``: score the calls listed in a CSV / Parquet / JSONL file (``--manifest``) instead
    of walking ``calls_dir`` (then None). ``engine``: where the per-call work runs -- this process
    (default) or ``cusemo_batch.engine_ray.RayEngine(RaySettings(...))`` (``--engine ray``).

    Examples
    --------
    >>> import cusemo_batch as cb
    >>> s = cb.score_nightly("examples/calls", "out/emotion", device="cpu")   # doctest: +SKIP
    >>> s.scored, s.skipped, s.failed, s.exit_code                            # doctest: +SKIP
    """
    from .nightly import run_nightly

    return run_nightly(calls_dir, out, _scorer(model, device, threads, options, option_kwargs), force=force,
                       call_list=call_list, engine=engine)
