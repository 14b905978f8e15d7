"""SDS vs DreamDPO (τ ∈ {0, small, large}, different-timestep pair, 8 candidates) on the toy prompt suite.

    python bench/compare_toy.py [--seeds 3] [--workers 2] [--steps N] [--groups ...] [--prompts ...] [key=value ...]

Same as `dreamdpo toyworld compare` (the logic lives in dreamdpo/toyworld/compare.py so the
installed command has it). Alignment is the evaluator's (NOT the toy reward's score). Prints the table
of mean and 95 % bootstrap CI per method × prompt group, and writes it with the per-prompt means
(table.md), the turntable thumbnails, prompts × methods (grid.png), and every run's metrics (rows.json)
into --out; recorded in bench/BENCHMARKS.md.
"""
from __future__ import annotations

import sys

from dreamdpo.cli import main

if __name__ == "__main__":
    sys.exit(main(["toyworld", "compare", *sys.argv[1:]]))
