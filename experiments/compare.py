"""``teachgym compare``: every teacher on every seed, one after another, then a leaderboard.

A thin layer over :mod:`teachgym.experiments.sweep`: the same trials, run
directories and reports as ``teachgym sweep``, run in this process with every
core given to one episode, and no Ray needed.
"""

from __future__ import annotations

from teachgym.experiments.sweep import compare_teachers, leaderboard_table, paired_table

__all__ = ["compare_teachers", "leaderboard_table", "paired_table"]
