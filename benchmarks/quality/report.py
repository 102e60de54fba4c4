"""Print the FINDINGS table: bare cosine at 0.80-0.95 vs the default AcceptConfig, per set."""

from __future__ import annotations

from benchmarks.quality.explore import evaluate, load, reasons
from benchmarks.quality.metrics import HitQuality, hit_quality
from cache_service.cache.guards import AcceptConfig


def row(policy: str, name: str, q: HitQuality) -> str:
    rec = f"{q.recall:.3f}" if q.positives else "-"
    prec = f"{q.precision:.3f}" if q.positives else "-"
    neg = f"{q.negatives_served:.3f} ({q.wrong_hits})" if q.negatives else "-"
    return f"| {name} | {policy} | {prec} | {rec} | {neg} | {q.error_rate:.4f} |"


def main() -> None:
    data = load()
    print("| set | policy | precision | recall | negatives served | wrong hits / lookup |")
    print("|---|---|---|---|---|---|")
    default = evaluate(data, AcceptConfig())
    for name, (pairs, sim, _) in data.items():
        labels = [p.label for p in pairs]
        for t in (0.80, 0.85, 0.90, 0.92, 0.95):
            print(row(f"cosine ≥ {t:.2f}", name, hit_quality(labels, list(sim >= t))))
        print(row("**default**", name, default[name]))
    for name in data:
        print(name, reasons(data, name, AcceptConfig()))


if __name__ == "__main__":
    main()
