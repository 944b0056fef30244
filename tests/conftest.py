import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

# Small tensors on 2 shared cores: threads beyond that only add contention.
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session")
def cifar10_root() -> Path:
    """The shared CIFAR-10 image-folder copy; a missing copy fails the real-data tests loudly."""
    root = Path(os.environ.get("DNM_CIFAR10_ROOT") or REPO.parent / "shared" / "datasets" / "cifar10-jpeg")
    if not (root / "train").is_dir():
        if os.environ.get("DNM_ALLOW_NO_CIFAR") == "1":
            pytest.skip(f"no CIFAR-10 at {root} and DNM_ALLOW_NO_CIFAR=1")
        pytest.fail(f"CIFAR-10 image folders not found at {root}; set DNM_CIFAR10_ROOT")
    return root


@pytest.fixture(scope="session")
def data_cache_dir(tmp_path_factory) -> Path:
    """One decode cache for the whole test session (or DNM_CACHE_DIR when set, e.g. by CI)."""
    return Path(os.environ.get("DNM_CACHE_DIR") or tmp_path_factory.mktemp("decode-cache"))
