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
