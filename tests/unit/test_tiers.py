"""The test tiers: markers and pytest-timeout limits come from the folder, and the unit
tier stays free of training (the fixtures that train are integration-only)."""
import ast
import importlib.util
from pathlib import Path

UNIT = Path(__file__).resolve().parent


def _root_conftest():
    """tests/conftest.py itself (``import conftest`` may name a tier's own conftest, e.g.
    tests/acceptance/conftest.py, depending on which pytest imported first)."""
    spec = importlib.util.spec_from_file_location("_entk_tests_root_conftest", UNIT.parent / "conftest.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


TIER_TIMEOUT_S = _root_conftest().TIER_TIMEOUT_S
TRAINING_FIXTURES = {"tiny_run_dir", "mlp29_run_dir", "mlp29_cache_dir", "install_run", "ray_cluster"}


def test_this_test_has_its_tier_marker_and_timeout(request):
    assert request.node.get_closest_marker("unit") is not None
    assert request.node.get_closest_marker("timeout").args == (TIER_TIMEOUT_S["unit"],)


def test_unit_tests_request_no_training_fixture():
    offenders = []
    for path in sorted(UNIT.glob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                used = {a.arg for a in node.args.args} & TRAINING_FIXTURES
                if used:
                    offenders.append(f"{path.name}::{node.name} uses {sorted(used)}")
    assert not offenders, "move these to tests/integration:\n" + "\n".join(offenders)
