"""``cusemo-batch export`` (checkpoint -> verified ONNX pair; needs torch) and ``cusemo-batch info``
(describe an exported model; onnxruntime only)."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.markup import escape
from rich.table import Table

from .common import UserError, console, user_errors

NO_DEFAULT = "no checkpoint given and no embedded default checkpoint yet"


def default_checkpoint() -> Path | None:
    """The checkpoint shipped inside the package, once there is one (then package-data must list it).

    Returning its path here is all ``export`` needs to re-export the embedded default model.
    """
    from importlib.resources import files

    p = files("cusemo_batch") / "models" / "default.pt"
    return Path(str(p)) if p.is_file() else None


def _export_errors() -> tuple[type[BaseException], ...]:
    """User-facing error types, imported lazily (torch is heavy)."""
    from cusemo_batch.audio import AudioError
    from cusemo_batch.export.onnx import ExportError
    from cusemo_batch.export.quantize import QuantizationError
    from cusemo_batch.model import ModelError
    from cusemo_batch.training.checkpoint import CheckpointError

    return (AudioError, CheckpointError, ExportError, ModelError, QuantizationError)


@click.command("export")
@click.argument("checkpoint", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="NAME.onnx to write (NAME.stream.onnx is written beside it). "
                   "Default: CHECKPOINT's file stem + .onnx in the current directory.")
@click.option("--opset", type=click.IntRange(min=17, max=20), default=17, show_default=True, help="ONNX opset.")
@click.option("--quantize", type=click.Choice(["int8"]),
              help="int8: dynamic for MatMul/LSTM weights; with --calibration-audio also int8 "
                   "convolutions (row-scaled: any input level), ~1.3x faster end to end.")
@click.option("--calibration-audio", multiple=True, type=click.Path(exists=True, path_type=Path),
              help="With --quantize: real speech (files or folders; training audio, not the test set) to "
                   "calibrate the int8 convolutions' output ranges. Repeatable; up to 600 s are used.")
@click.option("--int8-weights", type=click.Choice(["per-tensor", "per-channel"]), default="per-tensor",
              show_default=True,
              help="With --quantize: one scale per MatMul/LSTM weight tensor (the embedded model's) or "
                   "one per output channel (closer to fp32 on thresholded outputs; MODEL_CARD.md).")
@click.option("--no-check", is_flag=True, help="Skip the onnxruntime-vs-torch parity check.")
@click.option("--check-audio", multiple=True, type=click.Path(exists=True, path_type=Path),
              help="Real audio (files or folders) for the parity check, besides random signals. Repeatable.")
@click.option("--validation", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="With --quantize: CSV manifest (file + valence,arousal or emotion[,intensity]) "
                   "to report the CCC change of int8 vs fp32.")
def export_cmd(checkpoint: Path | None, output: Path | None, opset: int, quantize: str | None,
               no_check: bool, check_audio: tuple[Path, ...], validation: Path | None,
               calibration_audio: tuple[Path, ...], int8_weights: str) -> None:
    """Export a trained CHECKPOINT to a self-describing ONNX pair and verify it.

    Writes NAME.onnx (whole pass: audio [batch, samples] -> one [batch, frames] output per head)
    and NAME.stream.onnx (chunk with context + LSTM state -> heads + state), both with the
    model's metadata. Fails, writing nothing, if onnxruntime and torch disagree beyond tolerance.
    """
    if checkpoint is None:
        checkpoint = default_checkpoint()
        if checkpoint is None:
            raise UserError(NO_DEFAULT)
    if validation is not None and quantize is None:
        raise UserError("--validation only applies with --quantize")
    if calibration_audio and quantize is None:
        raise UserError("--calibration-audio only applies with --quantize")
    if int8_weights != "per-tensor" and quantize is None:
        raise UserError("--int8-weights only applies with --quantize")
    if output is None:
        output = Path(checkpoint.stem + ".onnx")
    try:
        import torch  # noqa: F401
    except ImportError:
        raise UserError("export needs torch and onnx: pip install 'cusemo-batch[train]'") from None

    @user_errors(*_export_errors())
    def run() -> None:
        from cusemo_batch.export.onnx import export_checkpoint

        res = export_checkpoint(checkpoint, output, opset=opset, quantize=quantize, check=not no_check,
                                check_audio=check_audio, validation=validation, calibration=calibration_audio,
                                int8_weights=int8_weights.replace("-", "_"), log=console.print)
        if res.parity and not check_audio:
            console.print("note: parity checked on random signals only; pass --check-audio for real speech")
        if res.parity:
            worst = max(res.parity, key=lambda r: r.max_abs_diff / r.tolerance)
            console.print(f"parity ok: {len(res.parity)} checks, worst max-abs-diff {worst.max_abs_diff:.2e} "
                          f"({worst.case}, {worst.graph}; tolerance {worst.tolerance:g})")
        else:
            console.print("parity check skipped (--no-check)")
        if res.quantization is not None:
            _print_quant(res.quantization)

    run()


def _print_quant(rep) -> None:  # rep: cusemo_batch.export.quantize.QuantReport
    ops = ", ".join(rep.ops) + (f"; row-scaled {', '.join(rep.int8_convs)} calibrated on {rep.calibration_seconds:.0f} s"
                                if rep.int8_convs else "")
    t = Table(title=f"int8 vs fp32 (quantized: {ops})")
    for col in ("head", "agreement CCC", "CCC fp32", "CCC int8", "change"):
        t.add_column(col, justify="right" if col != "head" else "left")
    f = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    for h in rep.heads:
        t.add_row(h.head, f(h.agreement_ccc), f(h.ccc_fp32), f(h.ccc_int8),
                  "-" if h.ccc_change is None else f"{h.ccc_change:+.4f}")
    console.print(t)
    val = (f"validation: {rep.n_validation} files, {rep.validation_seconds:.0f} s" if rep.n_validation
           else "no --validation set: CCC vs gold not measured")
    console.print(f"{val}; int8 max-abs-diff vs fp32 {rep.max_abs_diff:.3g}; "
                  f"int8 chunked vs whole {rep.stream_max_abs_diff:.3g}")


@click.command("info")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
def info_cmd(model: Path) -> None:
    """Print an exported model's metadata, inputs/outputs and size (either file of the pair)."""
    from cusemo_batch.audio import describe_normalisation
    from cusemo_batch.files import sha256_file
    from cusemo_batch.model import (REQUIRED_KEYS, ModelError, decode_metadata, open_session, read_metadata,
                                    stream_path_for)

    try:
        session = open_session(model, device="cpu")
        meta = read_metadata(session, model)
    except ModelError as e:
        raise UserError(str(e)) from None
    console.print(f"[bold]{escape(str(model))}[/]  {model.stat().st_size / 1e6:.2f} MB  sha256 {sha256_file(model)}")
    t = Table(show_header=True, title="metadata")
    t.add_column("key")
    t.add_column("value", overflow="fold")
    decoded = decode_metadata(meta)
    order = [k for k in REQUIRED_KEYS if k in decoded] + sorted(set(decoded) - set(REQUIRED_KEYS))
    for k in order:
        v = decoded[k]
        t.add_row(k, escape(v if isinstance(v, str) else json.dumps(v)))
    console.print(t)
    console.print(f"input level: {escape(describe_normalisation(str(decoded.get('normalisation'))))}")
    io = Table(title="inputs / outputs")
    for col in ("", "name", "type", "shape"):
        io.add_column(col)
    for kind, args in (("in", session.get_inputs()), ("out", session.get_outputs())):
        for a in args:
            io.add_row(kind, a.name, a.type, escape("[" + ", ".join(str(d) for d in a.shape) + "]"))
    console.print(io)
    if meta["graph"] == "whole":
        sp = stream_path_for(model)
        if not sp.is_file():
            console.print(f"stream graph {sp.name}: [red]missing[/]")
        else:
            ok = sha256_file(sp) == meta.get("stream_sha256")
            console.print(f"stream graph {sp.name}: {sp.stat().st_size / 1e6:.2f} MB, "
                          + ("sha256 matches" if ok else "[red]sha256 does NOT match this model[/]"))
