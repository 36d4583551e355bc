"""tests/helpers.require: an oracle that is missing skips locally and fails in CI."""

from __future__ import annotations

import pytest

from helpers import REQUIRE_ORACLES_ENV, require


def test_present_oracle_is_imported():
    mod = require("numpy.linalg")
    assert hasattr(mod, "eigh")


def test_missing_oracle_skips_locally(monkeypatch):
    monkeypatch.delenv(REQUIRE_ORACLES_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception, match="no_such_oracle_xyz.*install"):
        require("no_such_oracle_xyz")


def test_missing_oracle_fails_when_oracles_are_required(monkeypatch):
    monkeypatch.setenv(REQUIRE_ORACLES_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match="no_such_oracle_xyz.*CAPTUM_ELFA_REQUIRE_ORACLES=1"):
        require("no_such_oracle_xyz")
    with pytest.raises(pytest.fail.Exception, match="pip install --no-deps elfa==0.0.8"):
        require("elfa.no_such_submodule")
