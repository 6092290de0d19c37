"""The honest-skip plug-in (tests/_honest_skips.py): under CI=true every kind of skip fails
with its reason; locally a skip with a reason stays a skip and one without a reason fails."""
from __future__ import annotations

import pytest

import _honest_skips

SAMPLE = '''
import pytest

def test_passes():
    pass

def test_skip_in_call():
    pytest.skip("needs the moon")

@pytest.mark.skipif(True, reason="condition holds")
def test_skipif():
    pass

@pytest.fixture
def missing():
    pytest.importorskip("no_such_module_entk")

def test_importorskip_in_fixture(missing):
    pass

@pytest.mark.xfail(reason="known", strict=True)
def test_xfail():
    assert False
'''

MODULE_SKIP = '''
import pytest
pytest.importorskip("no_such_module_entk_either")

def test_never_collected():
    pass
'''

# The inner session runs inside an xdist worker; a pytest-benchmark plug-in installed in the
# interpreter would warn there that xdist is active (pyproject.toml blocks it the same way).
INNER_ARGS = ("-p", "no:cacheprovider", "-p", "no:benchmark")


def _run(pytester, monkeypatch, ci_value):
    if ci_value is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci_value)
    pytester.makepyfile(test_sample=SAMPLE, test_module_skip=MODULE_SKIP)
    # (a failed collection stops the session; here it should not hide the other outcomes)
    return pytester.runpytest_inprocess(*INNER_ARGS, "-rA", "--continue-on-collection-errors",
                                        plugins=[_honest_skips])


@pytest.mark.parametrize("value", ["true", "1", "YES"])
def test_under_ci_every_skip_fails_naming_its_reason(pytester, monkeypatch, value):
    res = _run(pytester, monkeypatch, value)
    outcomes = res.parseoutcomes()
    assert outcomes.get("skipped", 0) == 0, res.stdout.str()
    assert outcomes["passed"] == 1 and outcomes["xfailed"] == 1
    # a call-time skip fails; a skipif and a fixture's importorskip fail at setup (errors);
    # the module-level importorskip fails at collection (an error)
    assert outcomes["failed"] == 1 and outcomes["errors"] == 3, outcomes
    out = res.stdout.str()
    for reason in ("needs the moon", "condition holds", "could not import 'no_such_module_entk'",
                   "could not import 'no_such_module_entk_either'"):
        assert f"where nothing may skip: {reason}" in out, (reason, out)
    assert res.ret != 0


@pytest.mark.parametrize("value", [None, "", "false", "0"])
def test_locally_a_skip_with_a_reason_stays_a_skip(pytester, monkeypatch, value):
    res = _run(pytester, monkeypatch, value)
    assert res.parseoutcomes() == {"passed": 1, "skipped": 4, "xfailed": 1}, res.stdout.str()
    assert res.ret == 0
    assert "SKIPPED" in res.stdout.str() and "needs the moon" in res.stdout.str()


def test_locally_a_skip_without_a_reason_fails(pytester, monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    pytester.makepyfile(test_bare="import pytest\n\ndef test_bare():\n    pytest.skip()\n")
    res = pytester.runpytest_inprocess(*INNER_ARGS, plugins=[_honest_skips])
    res.assert_outcomes(failed=1)
    assert "a skip must name its reason" in res.stdout.str()


def test_the_suite_loads_the_plugin(request):
    assert request.config.pluginmanager.has_plugin("_honest_skips")
