"""The STS benchmark, read from ../shared/data/stsb beside the checkout (reference data, not in this repository)."""

from __future__ import annotations

import csv
from pathlib import Path

STSB = Path(__file__).resolve().parents[2] / "shared" / "data" / "stsb"


def read_stsb(split: str) -> list[tuple[str, str, float]]:
    """(sentence1, sentence2, score from 0 to 5) for each pair of ``split`` ("train", "dev" or "test")."""
    if not STSB.is_dir():
        raise SystemExit(f"The STS benchmark is not at {STSB}; this benchmark needs it.")
    with open(STSB / f"stsb-en-{split}.tsv", encoding="utf-8", newline="") as f:
        return [(r["sentence1"], r["sentence2"], float(r["score"]))
                for r in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)]
