"""A pytest plugin: whatever a test leaks (an unclosed aiohttp session or connector, a socket,
a file) fails that test, by name, instead of surfacing later in an unrelated one.

Python reports such leaks as a `ResourceWarning` when the object is collected, which may be long
after the test that made it. Collecting garbage after every test, once its fixtures (and event
loop) are gone, makes the warning fire while pytest still attributes it to that test; with
`filterwarnings = error` it fails the test's teardown.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _leaks_fail_the_test_that_leaked() -> Iterator[None]:
    """Collect garbage after the test, so its leaked resources warn inside its teardown.

    What survives is then frozen (gc.freeze): the next test's collection looks only at objects
    made since, which keeps it to milliseconds instead of a scan of every module and fixture.
    """
    yield
    gc.collect()
    gc.freeze()
