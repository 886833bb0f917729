"""Shared test fixtures."""

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def shared_mnist_dir() -> Path:
    """The read-only reference MNIST files in ``../shared/data/mnist`` (skips when absent)."""
    path = Path(__file__).parents[1].parent / "shared/data/mnist"
    if not path.is_dir():
        pytest.skip(f"reference MNIST data not found at {path} (../shared/data/mnist of the repo)")
    return path
