"""docs/pixsearch.service is a unit systemd accepts, run the way its comments say to install it."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[1] / "docs" / "pixsearch.service"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze is not installed (Debian: apt-get install systemd)")
def test_the_systemd_unit_verifies(tmp_path):
    text = UNIT.read_text()
    assert "ExecStart=/opt/pixsearch/.venv/bin/pixsearch serve " in text
    # as installed: ExecStart pointing at the pixsearch of this environment (systemd checks that it is executable)
    installed = tmp_path / "pixsearch.service"
    installed.write_text(text.replace("/opt/pixsearch/.venv/bin/pixsearch", str(Path(sys.executable).with_name("pixsearch"))))
    result = subprocess.run(["systemd-analyze", "verify", str(installed)], capture_output=True, text=True)
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr
