"""Shared pytest configuration.

Options:
  --update-golden   rewrite tests/passes/golden/*.txt from the current graphs instead of comparing.
"""

import pytest


def pytest_addoption(parser):
    parser.addoption(
        "--update-golden",
        action="store_true",
        default=False,
        help="regenerate the golden graph texts under tests/passes/golden/ instead of comparing",
    )


@pytest.fixture
def update_golden(request) -> bool:
    return bool(request.config.getoption("--update-golden"))


@pytest.fixture(scope="session")
def inductor_cache(tmp_path_factory):
    """One inductor disk cache for the whole test run (TORCHINDUCTOR_CACHE_DIR, inherited by
    torchrun workers), so a graph compiled by one test is a cache hit in the next."""
    import os

    from tfcompile.compile_backend import cache_dir

    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(tmp_path_factory.mktemp("inductor"))
    return cache_dir()
