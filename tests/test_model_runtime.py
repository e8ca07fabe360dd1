"""Runtime reader (cusemo_batch.model): metadata, provider fallback, streaming, errors.

The model files are real exports of a small CRNN (export check off: test_export covers parity);
Model itself must work without torch or onnx imported.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from cusemo_batch import model as runtime
from cusemo_batch.export.onnx import STREAM_ATOL, export_model
from cusemo_batch.model import Model, ModelError, Stream, stream_path_for
from cusemo_batch.training.model import CRNN, ModelConfig

SMALL = ModelConfig(conv_channels=(8, 16, 16), lstm_hidden=32, mlp_sizes=(32,))
META = {"name": "rt", "normalisation": "none", "label_rate_ms": 500}


def _export(tmp: Path, name: str, seed: int) -> Path:
    torch.manual_seed(seed)
    model = CRNN(SMALL).eval()
    with torch.no_grad():
        model.mlp[-1].weight.mul_(50.0)  # visible output spread
    return export_model(model, {**META, "name": name}, tmp / f"{name}.onnx", check=False).path


@pytest.fixture(scope="module")
def onnx_pair(tmp_path_factory) -> Path:
    return _export(tmp_path_factory.mktemp("rt"), "rt", 0)


@pytest.fixture(scope="module")
def model(onnx_pair) -> Model:
    return Model(onnx_pair, device="cpu", threads=1)


@pytest.fixture(scope="module")
def audio() -> np.ndarray:
    rng = np.random.default_rng(7)
    t = np.arange(int(23.3 * 8000)) / 8000
    voiced = np.sin(2 * np.pi * 140 * t) * (np.sin(2 * np.pi * 0.7 * t) > 0)
    return (0.1 * voiced + 0.02 * rng.standard_normal(t.size)).astype(np.float32)


def test_typed_metadata(model, onnx_pair):
    assert model.providers == ["CPUExecutionProvider"]
    assert (model.sample_rate, model.hop, model.frame_rate) == (8000, 250, 32.0)
    assert (model.pad_left, model.pad_right, model.receptive_field) == (154, 153, 557)
    assert (model.lstm_layers, model.lstm_hidden) == (2, 32)
    assert model.outputs == ("valence", "arousal") and model.normalisation == "none"
    assert model.label_rate_ms == 500 and model.quantized == "none" and model.name == "rt"
    assert model.stream_path == onnx_pair.with_name("rt.stream.onnx")
    assert len(model.sha256) == 64 and model.metadata["graph"] == "whole"


def test_infer_shapes_and_1d(model, audio):
    y = model.infer(audio)
    assert set(y) == {"valence", "arousal"} and y["valence"].shape == (len(audio) // 250,)
    y2 = model.infer(np.stack([audio, audio]))
    assert y2["arousal"].shape == (2, len(audio) // 250)
    np.testing.assert_allclose(y2["arousal"][1], y["arousal"], atol=1e-6)
    assert model.infer(audio[:250])["valence"].shape == (1,)


@pytest.mark.parametrize("chunk_frames", [1, 7, 100, 10_000])
def test_infer_stream_equals_infer(model, audio, chunk_frames):
    whole = model.infer(audio)
    chunked = model.infer_stream(audio, chunk_frames=chunk_frames)
    for h in model.outputs:
        assert chunked[h].shape == whole[h].shape
        assert np.abs(chunked[h] - whole[h]).max() < STREAM_ATOL


def test_push_stream_with_ragged_pieces_and_batch(model, audio):
    batch = np.stack([audio, audio[::-1].copy()])
    whole = model.infer(batch)
    st = model.stream(batch=2, chunk_frames=64)
    rng = np.random.default_rng(3)
    cuts = np.sort(rng.choice(np.arange(1, batch.shape[1]), size=40, replace=False))
    pieces = np.split(batch, cuts, axis=1)
    outs = list(st.frames(iter(pieces)))
    assert st.frames_out == batch.shape[1] // 250 and st.samples_in == batch.shape[1]
    got = {h: np.concatenate([o[h] for o in outs], axis=1) for h in model.outputs}
    for h in model.outputs:
        assert np.abs(got[h] - whole[h]).max() < STREAM_ATOL
    # Bounded memory: the buffer never holds more than one chunk plus context and one piece.
    st2 = Stream(model, 1, chunk_frames=64)
    for p in np.array_split(audio, 200):
        st2.push(p)
        assert st2._buf.shape[1] <= 64 * 250 + model.receptive_field + len(p)
    with pytest.raises(ModelError, match="already finished"):
        st.push(batch[:, :10])


def test_stream_shorter_than_a_frame_gives_no_frames(model):
    st = model.stream()
    assert st.push(np.zeros(100, np.float32))["valence"].shape == (1, 0)
    assert st.finish()["valence"].shape == (1, 0)


def test_input_errors(model):
    with pytest.raises(ModelError, match="shorter than one frame"):
        model.infer(np.zeros(249, np.float32))
    with pytest.raises(ModelError, match=r"audio must be"):
        model.infer(np.zeros((1, 2, 300), np.float32))
    with pytest.raises(ModelError, match=r"expected audio \[2, n\]"):
        model.stream(batch=2).push(np.zeros((3, 10), np.float32))


def test_file_errors(onnx_pair, tmp_path):
    text = tmp_path / "x.onnx"
    text.write_text("hello")
    with pytest.raises(ModelError, match="not a loadable ONNX model"):
        Model(text)
    with pytest.raises(ModelError, match="no such model file"):
        Model(tmp_path / "missing.onnx")
    with pytest.raises(ModelError, match="must end in .onnx"):
        Model(tmp_path / "model.bin")
    with pytest.raises(ModelError, match="must end in .onnx"):
        Model(stream_path_for(onnx_pair))
    with pytest.raises(ModelError, match="unknown device"):
        Model(onnx_pair, device="tpu")


def test_stream_file_missing_or_from_another_model(onnx_pair, tmp_path, audio):
    other = _export(tmp_path / "other", "rt", 1)  # same name, other weights
    d = tmp_path / "pair"
    d.mkdir()
    shutil.copy(onnx_pair, d / "rt.onnx")
    m = Model(d / "rt.onnx", device="cpu")
    m.infer(audio)  # the whole pass works without the stream file
    with pytest.raises(ModelError, match="streaming graph missing"):
        m.infer_stream(audio)
    shutil.copy(stream_path_for(other), d / "rt.stream.onnx")
    with pytest.raises(ModelError, match="does not belong"):
        Model(d / "rt.onnx", device="cpu").infer_stream(audio)


def test_stream_graph_passed_as_whole_is_refused(onnx_pair, tmp_path):
    p = tmp_path / "s.onnx"
    shutil.copy(stream_path_for(onnx_pair), p)
    with pytest.raises(ModelError, match="'stream' graph"):
        Model(p)


# -- providers ------------------------------------------------------------------------------------

def test_cuda_request_gets_cuda_or_a_model_error(onnx_pair, audio):
    """``cuda`` means CUDA or nothing (a scheduler that asked for GPUs must hear it did not get them)."""
    try:
        m = Model(onnx_pair, device="cuda")
    except ModelError as e:
        assert "device cuda" in str(e) and "\n" not in str(e)
        return
    assert m.providers[0] == "CUDAExecutionProvider"  # a real GPU
    np.testing.assert_allclose(m.infer(audio)["valence"], Model(onnx_pair, device="cpu").infer(audio)["valence"],
                               atol=1e-3)


def test_auto_device_is_quiet_on_cpu_only(onnx_pair, caplog):
    with caplog.at_level(logging.WARNING, logger="cusemo_batch.model"):
        m = Model(onnx_pair, device="auto")
    assert m.providers[-1] == "CPUExecutionProvider"
    if m.providers[0] != "CUDAExecutionProvider" and "CUDAExecutionProvider" not in ort.get_available_providers():
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert m.device_note == ""


def _cuda_listed_but_failing(monkeypatch) -> list[list[str]]:
    """onnxruntime-gpu on a machine without a GPU: CUDA is listed, creating it raises."""
    real = ort.InferenceSession
    tried: list[list[str]] = []

    def session(path, so=None, providers=None, **kw):
        tried.append(list(providers))
        if "CUDAExecutionProvider" in providers:
            raise RuntimeError("CUDA failure 100: no CUDA-capable device is detected")
        return real(path, so, providers=providers, **kw)

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "InferenceSession", session)
    return tried


def test_auto_falls_back_to_cpu_with_one_line_and_a_note(onnx_pair, monkeypatch, caplog):
    tried = _cuda_listed_but_failing(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="cusemo_batch.model"):
        m = Model(onnx_pair, device="auto")
        m.check_stream()  # the stream graph follows the whole graph's device: no second attempt
    assert tried == [["CUDAExecutionProvider", "CPUExecutionProvider"], ["CPUExecutionProvider"],
                     ["CPUExecutionProvider"]]
    assert m.providers == ["CPUExecutionProvider"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "no CUDA-capable device" in warnings[0]
    assert "no CUDA-capable device" in m.device_note


def test_cuda_request_on_failing_cuda_is_a_model_error(onnx_pair, monkeypatch):
    tried = _cuda_listed_but_failing(monkeypatch)
    with pytest.raises(ModelError, match="device cuda unavailable .*no CUDA-capable device"):
        Model(onnx_pair, device="cuda")
    assert tried == [["CUDAExecutionProvider", "CPUExecutionProvider"]]


def test_cuda_not_listed_is_a_model_error(onnx_pair, monkeypatch):
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(ModelError, match="no CUDAExecutionProvider"):
        Model(onnx_pair, device="cuda")


def test_runtime_imports_neither_torch_nor_onnx(onnx_pair):
    code = (
        "import sys, numpy as np\n"
        "from cusemo_batch.model import Model\n"
        f"m = Model({str(onnx_pair)!r}, device='cpu', threads=1)\n"
        "x = np.zeros(8000, np.float32)\n"
        "assert m.infer_stream(x, 8)['valence'].shape == (32,)\n"
        "bad = [k for k in ('torch', 'onnx') if k in sys.modules]\n"
        "assert not bad, bad\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert runtime.FORMAT == "cusemo-onnx/1"
