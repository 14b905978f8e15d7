"""SDS vs DreamDPO (τ ∈ {0, small, large}, different-timestep variant) in the toy world.

    python bench/compare_toy.py [--seeds 2] [--steps N] [--prompts ...] [--json rows.json] [key=value ...]

Same as `dreamdpo toyworld compare` (the logic lives in dreamdpo/toyworld/compare.py so the
installed command has it). Prints a markdown table of the evaluator's alignment (NOT the toy
reward's score) per method × prompt, averaged over seeds; recorded in bench/BENCHMARKS.md.
"""
from __future__ import annotations

import sys

from dreamdpo.cli import main

if __name__ == "__main__":
    sys.exit(main(["toyworld", "compare", *sys.argv[1:]]))
