"""What a new user's first commands rely on: `make test` installs the system packages its tests
need (or stops at once saying which), and a moved checkout remakes its venv instead of failing."""

import os
import re
import shutil
import subprocess

from conftest import ROOT

SYSTEM_PACKAGES = ROOT / "tools" / "system_packages.sh"


def makefile_rule(target: str) -> list[str]:
    text = (ROOT / "Makefile").read_text()
    m = re.search(rf"^{re.escape(target)}:(.*)$", text, re.M)
    assert m, target
    return m.group(1).split()


def test_every_test_stage_installs_the_system_packages_first():
    assert makefile_rule("test") == ["test-rust", "test-python"]
    for stage in ("test-rust", "test-python"):
        assert makefile_rule(stage)[0] == "system-packages", stage
    # CI is a thin wrapper: it installs nothing make test would not.
    ci = (ROOT / ".ci" / "run").read_text()
    assert "apt-get" not in ci and "make test" in ci
    # Every program a test looks for is in the list.
    script = SYSTEM_PACKAGES.read_text()
    for command in ("chromium", "chromedriver", "packer", "systemd-analyze", "nasm", "node", "npm"):
        assert f"[{command}]=" in script, command


def test_missing_packages_without_apt_are_named_at_once(tmp_path):
    """Where nothing can install them, the script names every missing package and how to get
    them, and fails before anything is built."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "id", "sort", "printf", "env"):
        os.symlink(shutil.which(tool), bin_dir / tool)
    out = subprocess.run([str(bin_dir / "bash"), str(SYSTEM_PACKAGES)], env={"PATH": str(bin_dir)},
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 1, out
    for package in ("chromium", "chromium-driver", "packer", "systemd", "nasm", "nodejs", "npm"):
        assert package in out.stderr, (package, out.stderr)
    assert "apt-get install" in out.stderr


def fake_checkout(tmp_path):
    """A folder with the Makefile and a `python` that makes an empty venv, to run the venv rule."""
    shutil.copy(ROOT / "Makefile", tmp_path / "Makefile")
    (tmp_path / "tools").mkdir()
    shutil.copy(ROOT / "tools" / "requirements.txt", tmp_path / "tools" / "requirements.txt")
    python = tmp_path / "python"
    python.write_text('#!/bin/sh\n[ "$1" = -m ] && [ "$2" = venv ] && mkdir -p "$3/bin"\nexit 0\n')
    python.chmod(0o755)
    return python


def make_venv(folder, python):
    out = subprocess.run(["make", "-s", "venv", f"PYTHON={python}", "PY=true"], cwd=folder,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_a_moved_checkouts_venv_is_remade(tmp_path):
    python = fake_checkout(tmp_path)
    venv = tmp_path / ".venv"
    (venv / "bin").mkdir(parents=True)
    # As `python -m venv` writes it, in the folder the checkout was in before.
    (venv / "bin" / "pip").write_text("#!/old/place/.venv/bin/python3\n")
    (venv / "old-package").write_text("")
    out = make_venv(tmp_path, python)
    assert "made in another folder" in out
    assert not (venv / "old-package").exists()
    assert list(venv.glob(".installed-*")), "no stamp"


def test_a_venv_made_in_place_is_kept(tmp_path):
    python = fake_checkout(tmp_path)
    venv = tmp_path / ".venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "pip").write_text(f"#!{venv}/bin/python3\n")
    (venv / "package").write_text("")
    out = make_venv(tmp_path, python)
    assert "another folder" not in out
    assert (venv / "package").exists()
    # The stamp names this folder: the same checkout does not remake it again.
    assert make_venv(tmp_path, python) == ""
