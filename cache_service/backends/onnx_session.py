"""What the two ONNX models (the embedder and the verifier's pair scorer) share: a CPU
session at a chosen thread count, and the BERT inputs a `tokenizers` batch becomes."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def cpu_session(onnx_file: Path, threads: int) -> Any:
    """An ONNX Runtime session on the CPU. One intra-op thread by default everywhere: on 2
    cores more threads fight the event loop, FAISS and the other model's thread."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(onnx_file), options, providers=["CPUExecutionProvider"])


def input_names(session: Any) -> frozenset[str]:
    """The inputs the graph declares (exports differ: some drop token_type_ids)."""
    return frozenset(i.name for i in session.get_inputs())


def bert_inputs(
    encodings: Sequence[Any], declared: frozenset[str]
) -> dict[str, np.ndarray[Any, Any]]:
    """ids, attention mask and token types of a padded batch, as int64, limited to the
    `declared` inputs (`input_names`)."""
    feeds = {
        "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
        "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
    }
    return {k: v for k, v in feeds.items() if k in declared}
