"""Every random draw of a run, named: one seed per (run seed, step, stream, index).

Each draw of step k comes from its own generator, so `--resume` continues bit for bit, every logged
pair can be regenerated from the seeds stored with it, and no two draws share a stream (the QC draw
of step k is not the audit draw of step k + 1). Pure arithmetic: stable across runs and machines.
"""
from __future__ import annotations

import random
from enum import IntEnum

import torch


class Stream(IntEnum):
    CAMERAS = 0
    BACKGROUND = 1
    TIMESTEP = 2
    NOISE_A = 3
    NOISE_B = 4
    OCCUPANCY = 5  # the occupancy grid's random sample points
    AUDIT = 6  # does people see this model-judged step as an audit pair
    QC = 7  # which quality-control pairs follow a live pair
    NOISE_MORE = 9  # the noises of candidates beyond the pair (dpo.candidates > 2)


def step_seed(seed: int, step: int, stream: Stream | int, index: int = 0) -> int:
    """A distinct 63-bit seed per (run seed, step, stream, index); `index` numbers repeated draws
    of one stream in one step (a redrawn pair's noises)."""
    return ((seed * 1_000_003 + step) * 7919 + int(stream) * 104_729 + index * 15_485_863 + 17) % (2**63 - 1)


def generator(seed: int, step: int, stream: Stream | int, index: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(step_seed(seed, step, stream, index))


def rng(seed: int, step: int, stream: Stream | int) -> random.Random:
    """A Python RNG for draws made outside torch (cadence and QC decisions)."""
    return random.Random(step_seed(seed, step, stream))
