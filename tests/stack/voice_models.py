"""Small stand-ins for CosyVoice 2's two prompt front-end models, written as ONNX files for a test.

CosyVoice2-0.5B's `speech_tokenizer_v2.onnx` and `campplus.onnx` come with its download, which no test here can
fetch. These graphs have the same inputs and outputs (names, ranks, dtypes), so `VoicePromptModels` loads and runs
them with onnxruntime exactly as it runs the real files; their weights are seeded random numbers.
- tokenizer: feats (1, 128, T) float32 + feats_length (1,) int32 -> indices (1, ceil(T / 4)) int64, 25 Hz tokens
  (every 4th 100 Hz frame, projected and argmaxed over TOKEN_CLASSES);
- speaker: input (1, T, 80) float32 -> embedding (1, dim) float32 (the frames' mean, projected).
"""

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from minmo.model.voice_prompt import SPEAKER_MELS, TOKENIZER_MELS, VoicePromptModels

TOKEN_CLASSES = 64
FRAMES_PER_TOKEN = 4  # 100 Hz mel -> 25 Hz tokens
OPSET = 17


def write_voice_models(folder: Path, speaker_dim: int, seed: int = 0) -> Path:
    """Both files in `folder` (created); returns it, ready for MINMO_VOICE_PROMPT_MODELS."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    _save(_tokenizer(rng), folder / VoicePromptModels.TOKENIZER_FILE)
    _save(_speaker(rng, speaker_dim), folder / VoicePromptModels.SPEAKER_FILE)
    return folder


def _save(graph: onnx.GraphProto, path: Path) -> None:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _tokenizer(rng: np.random.Generator) -> onnx.GraphProto:
    weight = rng.standard_normal((TOKENIZER_MELS, TOKEN_CLASSES)).astype(np.float32)
    constants = [
        numpy_helper.from_array(np.array([0], np.int64), "starts"),
        numpy_helper.from_array(np.array([1 << 40], np.int64), "ends"),
        numpy_helper.from_array(np.array([2], np.int64), "axes"),
        numpy_helper.from_array(np.array([FRAMES_PER_TOKEN], np.int64), "steps"),
        numpy_helper.from_array(weight, "weight"),
    ]
    nodes = [
        helper.make_node("Slice", ["feats", "starts", "ends", "axes", "steps"], ["strided"]),
        helper.make_node("Transpose", ["strided"], ["frames"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["frames", "weight"], ["scores"]),
        helper.make_node("ArgMax", ["scores"], ["indices"], axis=2, keepdims=0),
    ]
    inputs = [
        helper.make_tensor_value_info("feats", TensorProto.FLOAT, [1, TOKENIZER_MELS, "T"]),
        helper.make_tensor_value_info("feats_length", TensorProto.INT32, [1]),
    ]
    outputs = [helper.make_tensor_value_info("indices", TensorProto.INT64, [1, "N"])]
    return helper.make_graph(nodes, "speech_tokenizer_stand_in", inputs, outputs, constants)


def _speaker(rng: np.random.Generator, dim: int) -> onnx.GraphProto:
    weight = rng.standard_normal((SPEAKER_MELS, dim)).astype(np.float32)
    nodes = [
        helper.make_node("ReduceMean", ["input"], ["mean"], axes=[1], keepdims=0),
        helper.make_node("MatMul", ["mean", "weight"], ["embedding"]),
    ]
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, "T", SPEAKER_MELS])]
    outputs = [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, [1, dim])]
    return helper.make_graph(nodes, "campplus_stand_in", inputs, outputs, [numpy_helper.from_array(weight, "weight")])
