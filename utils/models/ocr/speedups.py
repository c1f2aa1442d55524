"""Faster pieces fitted around rapidocr's models: two around the text detector, reading what rapidocr reads.

Measured on this project's Xeon, one thread, a 1280 x 1280 image (the commonest detector input: 31% of the 960
labelled images; 992 x 992 22%, 736 x 736 7%, 1024 x 1024 6%):

- ``FastDetPreProcess``: rapidocr normalises the detector's input in float64 (its mean and std are float64 arrays)
  and casts back: 61 ms per image. The same arithmetic in float32, in place, takes 19 ms and gives the very same
  bits for rapidocr's mean and std of 0.5 (subtracting and dividing by 0.5 are exact in float32); for any other
  mean or std rapidocr's own code runs.
- ``StaticShapeSession`` (OpenVINO only): the detector's ONNX model has a dynamic input shape, and OpenVINO runs it
  0.42 s per image against 0.35 s for the model reshaped to that one shape (outputs equal within 1e-7). An input
  shape seen ``after`` (3) times gets a model compiled for it (about 0.4 s, once per worker process: it pays back
  after about 6 images of that shape), for at most ``most`` (8) shapes; other shapes run the dynamic model.

And one around the recogniser, a setting (``OcrSettings.charset``) since it reads other texts where an image shows
the characters it leaves out:

- ``narrow_recogniser``: rapidocr's recogniser scores 18,709 characters at every step of a line, 16,820 of them
  Chinese, Japanese and Korean characters and emoji, none of which an answer is made of; its output layer (a
  120 x 18,710 matrix and a softmax over it) is a fifth of its time. Cut to the 1,888 others (Latin, Greek,
  Cyrillic, Devanagari ..., digits, punctuation, symbols, full-width forms) and the blank, a line's greedy reading
  is the one the full layer gives wherever its best character is among them: the same texts on 34 of 40 dev
  images, the other 6 differing only where Chinese characters were read; 0.86 -> 0.76 CPU s per image.

``install(engine)`` puts the detector's two on a ``rapidocr.RapidOCR`` whose detector is loaded. They reach into
rapidocr's ``TextDetector`` (``get_preprocess``, ``session``) and ``TextRecognizer`` (``session``,
``postprocess_op``); ``tests/test_ocr.py`` checks that the texts and boxes stay those of rapidocr's own pieces, so a
rapidocr release that changes them fails there.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np
from rapidocr.ch_ppocr_det.utils import DetPreProcess

#: OpenVINO properties copied from a model rapidocr compiled to each one compiled here (threads, precision, pinning).
COPIED_PROPERTIES = ("INFERENCE_NUM_THREADS", "INFERENCE_PRECISION_HINT", "ENABLE_CPU_PINNING", "PERFORMANCE_HINT",
                     "NUM_STREAMS", "ENABLE_HYPER_THREADING", "SCHEDULING_CORE_TYPE")


def compiled_properties(request: Any) -> dict[str, Any]:
    """The ``COPIED_PROPERTIES`` of the model behind an OpenVINO infer request (those this OpenVINO build has)."""
    compiled = request.get_compiled_model()
    out: dict[str, Any] = {}
    for name in COPIED_PROPERTIES:
        try:
            out[name] = compiled.get_property(name)
        except Exception:  # noqa: BLE001 - a property this OpenVINO build does not have
            continue
    return out


def compile_request(model: Any, properties: dict[str, Any]) -> Any:
    """An infer request for ``model`` compiled on the CPU with ``properties``."""
    from openvino import Core

    return Core().compile_model(model, "CPU", properties).create_infer_request()


class FastDetPreProcess(DetPreProcess):
    """rapidocr's ``DetPreProcess`` with the normalisation in float32 when its mean and std are 0.5 (bit-identical)."""

    def __init__(self, limit_side_len: int, limit_type: str, mean: Any, std: Any) -> None:
        super().__init__(limit_side_len, limit_type, mean, std)
        self.halves = bool(np.all(np.asarray(self.mean) == 0.5) and np.all(np.asarray(self.std) == 0.5))

    def __call__(self, img: np.ndarray) -> np.ndarray | None:
        if not self.halves:
            return super().__call__(img)
        resized = self.resize(img)
        if resized is None:
            return None
        out = resized.transpose((2, 0, 1)).astype(np.float32)  # CHW, a new contiguous float32 array
        out *= np.float32(self.scale)
        out -= np.float32(0.5)
        out /= np.float32(0.5)
        return out[None]


class StaticShapeSession:
    """Wraps rapidocr's OpenVINO detector session: recurring input shapes run a model compiled for that shape."""

    def __init__(self, session: Any, after: int = 3, most: int = 8) -> None:
        self.session = session  # rapidocr's OpenVINOInferSession: .model (ov.Model), .session (InferRequest)
        self.after, self.most = after, most
        self.seen: Counter[tuple[int, ...]] = Counter()
        self.static: dict[tuple[int, ...], Any] = {}
        self.properties = compiled_properties(session.session)

    def _compile(self, shape: tuple[int, ...]) -> Any:
        model = self.session.model.clone()
        model.reshape(list(shape))
        return compile_request(model, self.properties)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        shape = tuple(int(d) for d in x.shape)
        request = self.static.get(shape)
        if request is None:
            self.seen[shape] += 1
            if self.seen[shape] < self.after or len(self.static) >= self.most:
                return self.session(x)
            request = self.static[shape] = self._compile(shape)
        request.infer([x])
        return request.get_output_tensor().data


def install(engine: Any, openvino: bool) -> None:
    """Put the faster preprocessing (and, for OpenVINO, the static-shape detector) on a loaded ``RapidOCR``."""
    det = engine.text_det
    fast = FastDetPreProcess(det.limit_side_len, det.limit_type, det.mean, det.std)
    det.get_preprocess = lambda: fast
    if openvino and not isinstance(det.session, StaticShapeSession):
        det.session = StaticShapeSession(det.session)


def outside_cjk(char: str) -> bool:
    """Whether a recogniser character is kept by ``charset="no-cjk"``: every code point below U+2E80 (where the CJK
    radicals begin), or among the half- and full-width forms (U+FF00-U+FFEF: full-width digits, letters, brackets)."""
    return all(ord(c) < 0x2E80 or 0xFF00 <= ord(c) <= 0xFFEF for c in char)


def narrow_recogniser(rec: Any, keep: Callable[[str], bool], openvino: bool) -> int:
    """Cut rapidocr's loaded ``TextRecognizer`` to the characters ``keep`` accepts (and CTC's blank); returns how many
    classes remain. OpenVINO: the output layer's weights and bias are sliced, so the cut columns are never computed.
    onnxruntime: its output is sliced and renormalised, which is the same softmax over the kept logits (the same
    reading, no time saved)."""
    decode = rec.postprocess_op
    chars = list(decode.character)
    idx = np.array([i for i, c in enumerate(chars) if i == 0 or keep(c)])
    if openvino:
        rec.session.session = _narrowed_request(rec.session, idx)
    else:
        rec.session = _Renormalised(rec.session, idx)
    decode.character = [chars[i] for i in idx]
    decode.dict = {c: i for i, c in enumerate(decode.character)}
    return len(idx)


def _narrowed_request(session: Any, idx: np.ndarray) -> Any:
    """rapidocr's OpenVINO recogniser (MatMul -> Add -> Softmax at its end) compiled with only ``idx``'s columns."""
    from openvino import opset13

    model = session.model.clone()
    node = model.get_results()[0].input_value(0).get_node()
    if node.get_type_name() != "Softmax":
        raise RuntimeError(f"the recogniser does not end in a softmax but in {node.get_type_name()}")
    node = node.input_value(0).get_node()
    while node.get_type_name() == "Identity":
        node = node.input_value(0).get_node()
    add, matmul = node, node.input_value(0).get_node()
    if (add.get_type_name(), matmul.get_type_name()) != ("Add", "MatMul"):
        raise RuntimeError(f"the recogniser's output layer is {matmul.get_type_name()} -> {add.get_type_name()}, "
                           "not MatMul -> Add")
    weight = matmul.input_value(1).get_node().get_data()
    bias = add.input_value(1).get_node().get_data()
    matmul.input(1).replace_source_output(opset13.constant(np.ascontiguousarray(weight[:, idx])).output(0))
    add.input(1).replace_source_output(opset13.constant(np.ascontiguousarray(bias[idx])).output(0))
    model.validate_nodes_and_infer_types()
    return compile_request(model, compiled_properties(session.session))


class _Renormalised:
    """A recogniser session whose softmax output keeps only ``idx``'s columns, renormalised."""

    def __init__(self, session: Any, idx: np.ndarray) -> None:
        self.session, self.idx = session, idx

    def __call__(self, x: np.ndarray) -> np.ndarray:
        p = self.session(x)[..., self.idx]
        return p / p.sum(axis=-1, keepdims=True)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.session, name)
