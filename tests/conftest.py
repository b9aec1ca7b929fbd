"""Shared fixtures: a tiny synthetic domain pair written once per test session, and a CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_pair(tmp_path_factory) -> Path:
    """A 24-image-per-domain synthetic pair at 64x64 (root/source, root/target, splits train/val)."""
    from adapt.data import synthetic

    root = tmp_path_factory.mktemp("pair")
    synthetic.write_pair(root, num_images=24, size=(64, 64), seed=3)
    return root


def run_adapt(*args: str, cwd: Path = REPO, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run the real `adapt` command (same entry point as the console script) in a subprocess."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, "-m", "adapt.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)
