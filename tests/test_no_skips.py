"""CI's rule: a test that needs a component fails, not skips, when it is missing.

`.ci/run` sets ``SHARDVAULT_NO_SKIPS=1``; the hook in ``tests/conftest.py`` then
reports a skip as a failure. Checked here in a pytest of its own, on a test
that skips, with and without the switch.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import NO_SKIPS

_CONFTEST = Path(__file__).with_name("conftest.py")


def _run(tmp_path: Path, switch: str | None) -> subprocess.CompletedProcess[str]:
    (tmp_path / "conftest.py").write_text(
        "import importlib.util\n"
        f"spec = importlib.util.spec_from_file_location('suite_conftest', {str(_CONFTEST)!r})\n"
        "module = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(module)\n"
        "pytest_runtest_makereport = module.pytest_runtest_makereport\n"
    )
    (tmp_path / "test_needs_a_component.py").write_text(
        "import pytest\n\ndef test_it():\n    pytest.skip('no such device here')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != NO_SKIPS}
    if switch is not None:
        env[NO_SKIPS] = switch
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_a_skip_fails_under_the_ci_switch(tmp_path: Path) -> None:
    done = _run(tmp_path, "1")
    assert done.returncode == 1, done.stdout
    assert "1 failed" in done.stdout and "no such device here" in done.stdout


def test_a_skip_is_a_skip_without_it(tmp_path: Path) -> None:
    done = _run(tmp_path, None)
    assert done.returncode == 0, done.stdout
    assert "1 skipped" in done.stdout
