"""The test suite's own schedule: under ``make test`` (pytest-xdist, ``--dist loadgroup``) the
tests marked ``xdist_group`` share a worker, so that their module fixture is built once."""

from __future__ import annotations

import os

import pytest


@pytest.mark.xdist_group("probe")
def test_a_grouped_test_names_its_group_in_its_node_id_under_loadgroup(request):
    if not getattr(request.config.option, "loadgroup", False):
        pytest.skip("not a worker of pytest-xdist's --dist loadgroup (make test runs one)")
    assert os.environ.get("PYTEST_XDIST_WORKER")
    # pytest-xdist's scheduler reads the group from the "@" suffix (tests/conftest.py passes it on)
    assert request.node.nodeid.endswith("@probe"), request.node.nodeid
