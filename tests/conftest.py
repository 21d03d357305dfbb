import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
APP_TIER = ROOT / "target" / "release" / "app-tier"


@pytest.fixture(scope="session")
def datasets() -> Path:
    path = Path(os.environ.get("DATASETS", ROOT.parent / "shared" / "datasets"))
    if not (path / "imagenet-100").is_dir():
        pytest.fail(f"test images not found under {path} (set DATASETS)")
    return path


@pytest.fixture(scope="session")
def darknet_photos() -> list[Path]:
    path = Path(os.environ.get("DARKNET", ROOT / ".cache/darknet/usr/share/darknet/data"))
    photos = sorted(path.glob("*.jpg"))
    if len(photos) < 5:
        pytest.fail(f"darknet photos not found under {path}: run `make test`, which fetches them")
    return photos


@pytest.fixture(scope="session")
def app_tier() -> Path:
    if not APP_TIER.exists():
        pytest.fail(f"{APP_TIER} missing: `make build` first")
    return APP_TIER


@pytest.fixture()
def aws_binaries() -> Path:
    """The release binaries with AWS support, as `make test` builds them. A test that runs `make
    run` leaves the local build's (no AWS) in target/release: this puts the other back, which
    takes seconds when both are compiled (cargo keeps both feature sets' artifacts)."""
    out = subprocess.run(["make", "-s", "--no-print-directory", "build-aws"], cwd=ROOT, capture_output=True,
                         text=True, timeout=1800)
    if out.returncode != 0:
        pytest.fail(f"make build-aws failed:\n{out.stderr[-3000:]}")
    return ROOT / "target" / "release"


def run(cmd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, cwd=ROOT, timeout=600, **kw)
