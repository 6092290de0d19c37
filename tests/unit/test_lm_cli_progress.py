"""The LM commands' progress lines on stderr when it is not a terminal (``probes`` with the
agreement filter shows candidates per tag; ``models --convert`` its phases), the heartbeat
of steps without their own progress, and nested probe sets (``probes --from``)."""
import json
import threading

import pytest

import _lm_models as M
from _cli import run_cli
from entk_core.cli.lm import heartbeat
from entk_core.families.causal_lm import build_probe_set, load_lm, load_probe_set
from entk_core.families.causal_lm.probes import subset_probe_set


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("lmcli")
    M.save_model_folder(root / "models" / "tiny", "gpt2", layers=2, tokenizer=M.build_tokenizer())
    stories = M.write_stories(root / "stories.txt", 120)
    return root, stories


def test_probes_with_the_agreement_filter_prints_candidates_per_tag_on_a_pipe(world, tmp_path):
    root, stories = world
    r = run_cli("probes", "--model", root / "models" / "tiny", "--stories", stories, "--out", tmp_path / "p",
                "--per-tag", "1", "--context", "8", "--tags", "NOUN,VERB", "--max-passes", "1",
                env={"ENTK_PROGRESS": "auto"})
    # a random model rarely agrees with the tagger: success or "too few candidates", progress either way
    assert r.returncode in (0, 2), r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("probes: ")]
    assert any("loaded tiny" in ln for ln in lines), r.stderr
    per_tag = [ln for ln in lines if "kept/candidates per tag" in ln]
    assert per_tag and "(model agreement filter)" in per_tag[-1], r.stderr
    last = per_tag[-1].split("per tag ")[1].split()
    assert last[0] == "NOUN" and last[2] == "VERB"
    kept, cands = map(int, last[1].split("/"))
    assert 0 <= kept <= 1 and cands >= 1


def test_progress_off_prints_nothing(world, tmp_path):
    root, stories = world
    r = run_cli("probes", "--model", root / "models" / "tiny", "--stories", stories, "--out", tmp_path / "p",
                "--per-tag", "2", "--context", "8", "--no-agreement", env={"ENTK_PROGRESS": "off"})
    assert r.returncode == 0 and r.stderr == ""


def test_models_convert_prints_each_phase(world, tmp_path):
    root, _ = world
    r = run_cli("models", "--convert", root / "models" / "tiny", "--out", tmp_path / "conv", "--json",
                env={"ENTK_PROGRESS": "auto"})
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["model"]["n_layers"] == 2
    err = r.stderr
    for phase in ("loaded tiny", "model.safetensors", "config.json and the tokenizer", "wrote "):
        assert phase in err, err
    assert all(ln.startswith("convert: ") for ln in err.splitlines())


def test_heartbeat_repeats_while_a_silent_step_runs():
    said = []
    done = threading.Event()

    def progress(d, n, msg):
        said.append(msg)
        if len(said) >= 2:
            done.set()

    with heartbeat(progress, every_s=0.01):
        assert done.wait(10)
    n = len(said)
    assert all("still working" in m and "elapsed" in m for m in said)
    assert done.wait(0.05) and len(said) == n  # stopped on exit


def test_nested_probe_set_takes_the_first_per_tag_of_each_tag(world, tmp_path):
    root, stories = world
    lm = load_lm(root / "models" / "tiny")
    big = build_probe_set(lm, stories, per_tag=4, context=8, agreement=False, tags=["NOUN", "VERB", "DET"])
    big.save(tmp_path / "big")
    small = subset_probe_set(load_probe_set(tmp_path / "big"), 2)
    assert small.N == 6 and small.provenance["counts"] == {"NOUN": 2, "VERB": 2, "DET": 2}
    for t in ("NOUN", "VERB", "DET"):
        want = [i for i, lab in enumerate(big.labels) if lab["upos"] == t][:2]
        got = [i for i, lab in enumerate(small.labels) if lab["upos"] == t]
        assert [small.labels[i] for i in got] == [big.labels[i] for i in want]
        assert small.input_ids[got].tolist() == big.input_ids[want].tolist()
    sub = small.provenance["subset_of"]
    assert sub["name"] == "big" and sub["N"] == 12 and sub["fingerprint"] == big.fingerprint
    assert small.provenance["options"]["per_tag"] == 2 and big.provenance["options"]["per_tag"] == 4
    # the CLI writes it, and a request for more than the parent has is one line
    r = run_cli("probes", "--from", tmp_path / "big", "--per-tag", "3", "--out", tmp_path / "three", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["N"] == 9 and load_probe_set(tmp_path / "three").fingerprint != small.fingerprint
    r = run_cli("probes", "--from", tmp_path / "big", "--per-tag", "5", "--out", tmp_path / "five")
    assert r.returncode == 2 and "cannot take 5 per tag" in r.stderr and r.stderr.count("\n") == 1
    assert not (tmp_path / "five").exists()
    r = run_cli("probes", "--out", tmp_path / "x")
    assert r.returncode == 2 and "--model and --stories" in r.stderr
