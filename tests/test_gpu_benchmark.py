"""benchmarks/gpu.py runs small on a CPU and prints every field it promises."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu.py"


@pytest.mark.slow
def test_gpu_benchmark_small_prints_positive_ratios(tmp_path):
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--small", "--no-experiment"],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    )
    out = run.stdout
    for label in (
        "train lora ours/raw",
        "train full ours/raw",
        "eval lora ours/generate",
        "eval full ours/generate",
    ):
        match = re.search(rf"^{re.escape(label)}: ([0-9.]+)", out, re.MULTILINE)
        assert match, f"{label!r} missing from:\n{out}"
        assert float(match.group(1)) > 0
    assert re.search(r"^train full tokens/s: [0-9,]+ +mfu: n/a", out, re.MULTILINE)
    assert re.search(r"^train full tokens/s at batch \d+: [0-9,]+ +mfu: ", out, re.MULTILINE)
    assert "answers agree 100%" in out  # ours decodes what generate decodes
    assert re.search(r"^peak memory: (n/a|[0-9.]+ GiB)$", out, re.MULTILINE)
    assert "default experiment wall: skipped" in out
