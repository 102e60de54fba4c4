"""What the two ONNX models (the embedder and the verifier's pair scorer) share: a CPU
session at a chosen thread count, and how a batch of tokenized inputs is run through it.

A batch is run in groups of similar length (`length_groups`), each padded to its own
longest. One run padded to the batch's longest cost more than running every input alone:
measured on this box (MiniLM, one thread, `benchmarks/model_batches.py`), a batch of 32 QQP
questions took 372 ms as one run and 228 ms one by one; 32 of GPTCache's web sentences (up
to 256 word pieces) 976 ms against 405 ms. Grouped, they took 165 and 333 ms.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

RUN_COST_TOKENS = 8
"""What one more run costs, in padded tokens (a token of one row). Fitted on this box over
batches of 1-32 rows of 8-128 tokens: a run cost ~2.5 ms plus ~0.3 ms per padded token (the
weights are read once per run, whatever its size). So one input joins a group of longer ones
only while the padding it adds costs less than the run it saves."""

PAD_ID = 0  # [PAD] in BERT's WordPiece vocabularies (both models' tokenizers)


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


def length_groups(lengths: Sequence[int], run_cost: int = RUN_COST_TOKENS) -> list[list[int]]:
    """The positions of `lengths`, split into groups to run one after another, that cost the
    fewest padded tokens plus `run_cost` per group (each group padded to its longest).

    Optimal groups of lengths taken in sorted order are contiguous runs of it, so a dynamic
    programme over the sorted order finds them: O(n²), n being at most a batch (32)."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    # cost[j]: the cheapest way to run the j shortest; start[j]: where its last group starts.
    cost = [0] * (len(order) + 1)
    start = [0] * (len(order) + 1)
    for j in range(1, len(order) + 1):
        longest = lengths[order[j - 1]]
        cost[j] = run_cost + j * longest  # all j in one group; then try every later start
        for i in range(1, j):
            candidate = cost[i] + run_cost + (j - i) * longest
            if candidate < cost[j]:
                cost[j], start[j] = candidate, i
    groups: list[list[int]] = []
    j = len(order)
    while j > 0:
        groups.append(order[start[j] : j])
        j = start[j]
    return groups[::-1]


def bert_inputs(
    encodings: Sequence[Any], declared: frozenset[str]
) -> tuple[dict[str, np.ndarray[Any, Any]], np.ndarray[Any, Any]]:
    """The feeds of unpadded encodings padded to their longest (ids, attention mask, token
    types as int64, limited to the `declared` inputs, see `input_names`), and the mask."""
    longest = max(len(e.ids) for e in encodings)
    ids = np.full((len(encodings), longest), PAD_ID, dtype=np.int64)
    mask = np.zeros_like(ids)
    types = np.zeros_like(ids)
    for row, e in enumerate(encodings):
        width = len(e.ids)
        ids[row, :width] = e.ids
        mask[row, :width] = e.attention_mask
        types[row, :width] = e.type_ids
    feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
    return {k: v for k, v in feeds.items() if k in declared}, mask


def forward(
    session: Any,
    output: str,
    encodings: Sequence[Any],
    declared: frozenset[str],
    run_cost: int = RUN_COST_TOKENS,
) -> Iterator[tuple[list[int], np.ndarray[Any, Any], np.ndarray[Any, Any]]]:
    """Run unpadded `encodings` in `length_groups`: per group, the positions it holds, the
    `output` for them, and their attention mask."""
    for rows in length_groups([len(e.ids) for e in encodings], run_cost):
        feeds, mask = bert_inputs([encodings[i] for i in rows], declared)
        (result,) = session.run([output], feeds)
        yield rows, np.asarray(result), mask
