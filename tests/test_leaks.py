"""The suite's leak check: a test that leaks a connection fails itself, not a later test."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

_LEAKY = '''
import aiohttp


async def test_leaks_a_session():
    """Opens an aiohttp session and never closes it; a reference cycle keeps it alive until
    the garbage collector runs, as a task stuck in a failed test does."""
    box = [aiohttp.ClientSession()]
    box.append(box)


def test_after_the_leak():
    """Runs after the leak and must pass."""
'''


def test_a_leaked_session_fails_the_test_that_leaked_it(pytester: pytest.Pytester) -> None:
    """An unclosed aiohttp session that only the garbage collector frees fails the test that
    opened it (named, in its teardown), and the next test passes."""
    pytester.makepyfile(test_leaky=_LEAKY)
    pytester.makeini(
        "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n"
        "filterwarnings = error\n"
    )
    root = str(Path(__file__).resolve().parent.parent)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    result = pytester.runpytest_subprocess("-p", "tests.leaks", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, errors=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["ERROR test_leaky.py::test_leaks_a_session - *"])
