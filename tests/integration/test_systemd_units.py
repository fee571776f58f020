"""The unit files in systemd/: `systemd-analyze verify` clean, security exposure below 3.0.

PID 1 here is not systemd, so both commands run offline against a scratch root that holds
the host's stock units, ours, and stand-ins for the programs ExecStart names (verify checks
that they exist; they are installed by the admin, see README "Run under systemd").
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.integration.conftest import REPO

UNITS = ("supportd.service", "supportd-agent.service", "supportd.socket")
EXPOSURE_LIMIT = 3.0


@pytest.fixture
def root(tmp_path: Path) -> Path:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is missing: `make test` installs the systemd package")
    stock = next((p for p in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system"))
                  if (p / "multi-user.target").exists()), None)
    if stock is None:
        pytest.skip("no stock systemd units (multi-user.target) to verify against")
    shutil.copytree(stock, tmp_path / "usr/lib/systemd/system", symlinks=True)
    units = tmp_path / "etc/systemd/system"
    units.mkdir(parents=True)
    for unit in UNITS:
        shutil.copy(REPO / "systemd" / unit, units / unit)
    for unit in UNITS:
        for program in re.findall(r"^Exec\w+=[-@:+!]*(/\S+)", (units / unit).read_text(), re.M):
            stand_in = tmp_path / program.lstrip("/")
            stand_in.parent.mkdir(parents=True, exist_ok=True)
            stand_in.write_text("#!/bin/sh\n")
            stand_in.chmod(0o755)
    return tmp_path


def test_units_pass_systemd_analyze_verify(root: Path) -> None:
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", f"--root={root}", *UNITS],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr


@pytest.mark.parametrize("unit", ["supportd.service", "supportd-agent.service"])
def test_security_exposure_is_below_three(root: Path, unit: str) -> None:
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", f"--root={root}",
         f"--threshold={int(EXPOSURE_LIMIT * 10)}", "--no-pager", unit],
        capture_output=True, text=True, timeout=120)
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert found, result.stdout + result.stderr
    exposure = float(found.group(1))
    print(f"{unit}: systemd-analyze security exposure {exposure}")
    assert exposure < EXPOSURE_LIMIT
    assert result.returncode == 0, result.stderr
