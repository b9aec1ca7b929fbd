"""benchmarks/gpu_check.py --dry-run: the GPU check's code (throughput grid, MIC recipe, sliding evaluation) on CPU."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import REPO


@pytest.mark.slow
def test_gpu_check_dry_run_prints_its_table():
    out = subprocess.run([sys.executable, str(REPO / "benchmarks/gpu_check.py"), "--dry-run"], cwd=REPO,
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    rows = [line for line in lines if line.startswith(("DeepLabV3+", "SegFormer"))]
    assert len(rows) == 2, out.stdout
    for row in rows:  # plain and adapt images/s, their ratio: positive numbers
        plain, ours, ratio = (float(v) for v in row.split()[-6:-3])
        assert plain > 0 and ours > 0 and ratio == pytest.approx(ours / plain, rel=0.02)
    assert "bf16-mixed" in rows[1] and " eager " in rows[1] and rows[1].split()[-8] == "on"  # NHWC, compiled
    mic = next(line for line in lines if line.startswith("MIC recipe"))
    assert "2 iterations" in mic and "finite losses" in mic and "last.ckpt written" in mic
    assert "sliding-window evaluation mIoU" in mic
