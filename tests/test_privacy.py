"""No trace of forgotten data: checkpoints, store, metadata and logs after unlearn requests."""

import json
import shutil

import numpy as np
import pytest

from ugclu_jax import audit as A
from ugclu_jax import cli
from ugclu_jax import config as C
from ugclu_jax import data as D
from ugclu_jax import runner
from ugclu_jax.checkpointing import Checkpointer

FAST = ["train.learn_epochs=2", "train.unlearn_iterations=40"]
# The smoke stream: L:t0 L:t1 L:t2 U:c1,5 L:t3 U:r0.1 L:t4 U:t3.
UNLEARN_STEPS = (4, 6, 8)


def _cfg():
  return C.apply_overrides(C.load_config("smoke"), FAST)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("privacy") / "run"
  runner.run_experiment(_cfg(), workdir, progress=False, echo=lambda s: None)
  return workdir


@pytest.fixture(scope="module")
def forgotten():
  """Every sample the smoke stream unlearns, re-derived (classes 1, 5, 6, 7 and a U:r0.1 draw)."""
  cfg, ds, _, requests, _ = runner.prepare(_cfg())
  sets = [
    idx
    for r, (idx, _) in enumerate(D.replay_stream(requests, y_train=ds.y_train, seed=cfg.seed))
    if requests[r].kind == "unlearn"
  ]
  out = np.unique(np.concatenate(sets))
  assert np.isin([1, 5, 6, 7], ds.y_train[out]).all()
  return out


def _meta(workdir, step):
  with Checkpointer(workdir / "checkpoints") as ckpt:
    return ckpt.verify(step)


def test_only_the_checkpoint_after_the_last_unlearn_request_is_kept(finished):
  with Checkpointer(finished / "checkpoints") as ckpt:
    assert ckpt.steps() == [8]
    assert ckpt.leftovers() == []
  log = (finished / "run.log").read_text()
  for step in UNLEARN_STEPS:  # Each unlearn request deleted the checkpoints before it.
    assert f"checkpoint(s) from before unlearn request [{step - 1}]" in log


def test_metadata_holds_no_forgotten_index_nor_per_sample_record(finished, forgotten):
  meta = _meta(finished, 8)
  text = json.dumps(meta)
  assert "forget_sets" not in text and "forget_correct" not in text
  # The typed history: numbers per method and request, no per-sample output. Relapse
  # keeps one forget accuracy per unlearn request, and one now per earlier unlearned set.
  assert set(meta) == {"cursor", "history", "config"}
  for records in meta["history"].values():
    assert [q["index"] for q in records] == list(range(8))
    assert "forget_probs" not in records[0]
    unlearn = {s - 1 for s in UNLEARN_STEPS}
    assert all(isinstance(q["forget_acc"], float) == (q["index"] in unlearn) for q in records)
    for q in records:
      assert all(
        int(j) in unlearn and int(j) < q["index"] and isinstance(v, float)
        for j, v in q["unlearned_acc"].items()
      )
  assert A.scan_json(meta, forgotten, "meta") == []
  # The scan is not blind: the old format's forget_sets would be found.
  planted = {**meta, "history": {"forget_sets": {"3": forgotten[:5].tolist()}}}
  assert A.scan_json(planted, forgotten, "meta")


def test_store_and_method_state_hold_no_forgotten_sample(finished, forgotten):
  state = runner.load_state(finished)
  stored = D.store_indices(state["store"])
  assert stored.size > 0 and not np.isin(stored, forgotten).any()
  assert not state["learned"][forgotten].any()


def test_relapse_is_reported_from_kept_numbers(finished):
  report = json.loads((finished / "report.json").read_text())
  for entry in report["methods"].values():
    relapse = [q["metrics"]["relapse"] for q in entry["requests"]]
    # Nothing unlearned before request 4; from then on, one value per request.
    assert relapse[:4] == [None] * 4 and all(isinstance(v, float) for v in relapse[4:])


def test_audit_is_clean_on_a_finished_run(finished, capsys):
  assert A.audit(finished) == []
  assert cli.main(["audit", str(finished)]) == 0
  out = capsys.readouterr().out.strip().splitlines()
  assert len(out) == 1 and out[0].startswith("clean:"), out


def test_audit_finds_planted_leftovers(finished, forgotten, tmp_path, capsys):
  workdir = tmp_path / "run"
  shutil.copytree(finished, workdir)
  # A checkpoint from before the last unlearn request (step 7), written with a valid hash:
  # its store holds forgotten samples (class 1), its metadata the old forget_sets.
  state = runner.load_state(workdir)
  cfg, ds, _, _, _ = runner.prepare(_cfg())
  class1 = forgotten[ds.y_train[forgotten] == 1][:10]
  store = state["store"]
  indices = store.indices.copy()
  indices[: class1.size] = class1
  tree = runner._state_tree(
    {n: tuple(s) for n, s in state["methods"].items()},
    store._replace(indices=indices),
    state["learned"],
  )
  meta = dict(
    state["meta"], cursor=7, history={"forget_sets": {"3": class1.tolist()}, "forget_correct": {}}
  )
  with Checkpointer(tmp_path / "plant") as ckpt:
    ckpt.save(7, tree, meta)
  shutil.move(tmp_path / "plant" / "7", workdir / "checkpoints" / "7")
  with open(workdir / "run.log", "a") as f:
    f.write(f"forgot {', '.join(map(str, class1[:4]))}\n")
  findings = A.audit(workdir)
  expected = [
    "checkpoint 7: older than unlearn request [7] U:t3",
    "checkpoint 7: the store holds 10 forgotten sample(s)",
    "checkpoint 7 metadata: holds history.forget_sets",
    "checkpoint 7 metadata: holds history.forget_correct",
    "run.log: lists 4 forgotten sample index(es)",
  ]
  for line in expected:
    assert any(f.startswith(line) for f in findings), (line, findings)
  assert not any(f.startswith("checkpoint 8") for f in findings), findings
  code = cli.main(["audit", str(workdir)])
  captured = capsys.readouterr()
  assert code == A.FINDINGS_EXIT
  assert captured.out.strip().splitlines() == findings
  assert len(captured.err.strip().splitlines()) == 1


def test_audit_finds_a_damaged_checkpoint(finished, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(finished, workdir)
  path = workdir / "checkpoints" / "8" / "meta" / "metadata"
  meta = json.loads(path.read_text())
  meta["history"]["ugclu"][3]["forget_acc"] = 0.5
  path.write_text(json.dumps(meta))
  findings = A.audit(workdir)
  assert findings == ["checkpoint 8: fails verification (content hash mismatch)"], findings
