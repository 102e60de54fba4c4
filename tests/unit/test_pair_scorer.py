"""The ONNX pair scorer on a real (tiny, random) BERT exported to ONNX: the contract the
shipped verifier model follows, checked end to end without shipping weights."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest

from cache_service.backends.pair_scorer import OnnxPairScorer

MAX_LEN = 32


@pytest.fixture(scope="session")
def tiny_verifier_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from cache_service.backends.embedder import bundled_model_path

    bundled = bundled_model_path()
    with (bundled / "vocab.txt").open(encoding="utf-8") as vocab:
        vocab_size = sum(1 for _ in vocab)
    config = transformers.BertConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        num_labels=1,
    )
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(config).eval()
    out = tmp_path_factory.mktemp("verifier")
    ids = torch.ones((2, 8), dtype=torch.long)

    class Logits(torch.nn.Module):  # type: ignore[name-defined,misc]  # torch is importorskip's Any
        def __init__(self) -> None:
            super().__init__()
            self.bert = model

        def forward(self, input_ids, attention_mask, token_type_ids):  # type: ignore[no-untyped-def]
            return self.bert(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).logits

    # The legacy TorchScript exporter: no onnxscript needed, and it warns that it is legacy.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Logits(),
            (ids, torch.ones_like(ids), torch.zeros_like(ids)),
            str(out / "model.onnx"),
            input_names=["input_ids", "attention_mask", "token_type_ids"],
            output_names=["logits"],
            dynamic_axes={
                name: {0: "batch", 1: "seq"}
                for name in ("input_ids", "attention_mask", "token_type_ids")
            }
            | {"logits": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    shutil.copy(bundled / "tokenizer.json", out / "tokenizer.json")
    (out / "manifest.json").write_text(
        json.dumps(
            {
                "name": "tiny-test-verifier",
                "onnx_file": "model.onnx",
                "max_len": MAX_LEN,
                "threshold": 0.5,
                "calibration": [
                    {"threshold": 0.3, "wrong_share": 0.1},
                    {"threshold": 0.5, "wrong_share": 0.05},
                    {"threshold": 0.7, "wrong_share": 0.01},
                ],
                "floor": 0.75,
            }
        )
    )
    return out


PAIRS = [
    ("how do i reset my password", "how can i reset my password"),
    ("flights from boston to denver", "flights from denver to boston"),
    ("what is the capital of france", "capital city of france?"),
]


def test_one_probability_per_pair(tiny_verifier_dir: Path) -> None:
    scorer = OnnxPairScorer(tiny_verifier_dir)
    scores = scorer.score(PAIRS)
    assert len(scores) == len(PAIRS)
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert scorer.manifest["name"] == "tiny-test-verifier"
    assert scorer.score([]) == []
    # Order matters to a cross-encoder (segment ids), and the scores are not all one value.
    assert len({round(s, 6) for s in scores}) > 1


def test_padding_in_a_batch_does_not_change_a_score(tiny_verifier_dir: Path) -> None:
    scorer = OnnxPairScorer(tiny_verifier_dir)
    batched = scorer.score(PAIRS)
    single = [scorer.score([pair])[0] for pair in PAIRS]
    assert batched == pytest.approx(single, abs=1e-5)


def test_long_inputs_are_truncated_not_refused(tiny_verifier_dir: Path) -> None:
    scorer = OnnxPairScorer(tiny_verifier_dir)
    long = "word " * 2000
    scores = scorer.score([(long, "short question"), ("short question", long), (long, long)])
    assert len(scores) == 3 and all(0.0 <= s <= 1.0 for s in scores)
    # Truncation keeps a piece of each side (longest_first), so the tokens stay in budget.
    enc = scorer._tokenizer.encode(long, "short question")
    assert len(enc.ids) == MAX_LEN and 0 in enc.type_ids and 1 in enc.type_ids


async def test_the_app_builds_the_verifier_from_the_model_directory(
    tiny_verifier_dir: Path, tmp_path: Path
) -> None:
    from cache_service.cache.matching import Candidate
    from cache_service.protocols import Entry
    from cache_service.settings import load_settings
    from cache_service.verifier_setup import load as _verifier

    settings = load_settings(
        None,
        data_dir=tmp_path,
        verifier="on",
        verifier_dir=tiny_verifier_dir,
        verifier_error_bound=0.02,
    )
    verifier = await _verifier(settings, None)
    assert verifier is not None
    try:
        # The calibration table's loosest threshold within 2% wrong, the manifest's floor.
        assert (verifier.threshold, verifier.floor) == (0.7, 0.75)
        entry = Entry("e", "s", "k", "ns", "m", PAIRS[0][0], None, "{}", 0.0, None)
        verdicts = await verifier.verify(PAIRS[0][1], [Candidate(entry, 0.8)])
        assert len(verdicts) == 1 and verifier.judged == 1 and verifier.errors == 0
    finally:
        verifier.close()
    off = load_settings(None, data_dir=tmp_path, verifier_dir=tmp_path / "absent")
    assert await _verifier(off, None) is None  # auto, nothing shipped: off


def test_searches_serve_from_the_verifiers_floor_or_the_lowest_request_threshold(
    tiny_verifier_dir: Path, tmp_path: Path
) -> None:
    from cache_service.settings import load_settings
    from cache_service.verifier_setup import search_floor

    off = load_settings(data_dir=tmp_path, verifier="off", min_threshold=0.9)
    assert search_floor(off, None) == 0.9
    on = load_settings(data_dir=tmp_path, verifier="on", verifier_dir=tiny_verifier_dir)
    manifest = json.loads((tiny_verifier_dir / "manifest.json").read_text())
    assert search_floor(on, None) == manifest["floor"]
    assert search_floor(on.model_copy(update={"verifier_floor": 0.8}), None) == 0.8
