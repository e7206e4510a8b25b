"""export and predict: the exported model is the one `compare` evaluated, it is usable without the study store, and
`predict` on the test split reproduces `compare`'s test metrics; export reuses compare's cached evaluation of the same
model; bad input is refused with one line."""

from __future__ import annotations

import csv
import json
import pickle
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import optuna
import pytest
from helpers import assert_refused, invoke

from hpo_astro.core.model import load_model
from hpo_astro.core.train import evaluate
from hpo_astro.data import exromana
from hpo_astro.data.prepare import PrepConfig, load_splits, stratified_split
from hpo_astro.results import evaluate as evaluate_module
from hpo_astro.store.record import params_full


def _compare(store: str, name: str) -> dict:
    result = invoke("compare", "--storage", store, "--study", name, "--format", "json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)["studies"][0]


def _export(store: str, name: str, out: Path) -> dict:
    result = invoke("export", "--storage", store, "--study", name, "--out", out)
    assert result.exit_code == 0, result.output
    assert "exported trial #" in result.stdout
    return json.loads((out / "model.json").read_text())


def test_table_numbers_equal_an_independent_evaluation_of_the_exported_model(
    store: str, tmp_path: Path, small_file: Path
) -> None:
    row = _compare(store, "tpe")
    manifest = _export(store, "tpe", tmp_path / "model")
    best = optuna.load_study(study_name="tpe", storage=store).best_trial
    assert manifest["params"] == params_full(best) and manifest["study"]["trial"] == best.number
    prep = manifest["preprocessing"]
    assert prep["channels"] == ["scorr"] and prep["scaling"] == "zscale" and prep["threshold"] == 0.5
    # Independently: load the exported files with the plain model loader and evaluate on freshly loaded splits.
    model, _ = load_model(tmp_path / "model")
    data = load_splits(small_file, PrepConfig(channels=tuple(prep["channels"])))
    assert manifest["pos_weight"] == pytest.approx(data.pos_weight)
    for split in ("train", "val", "test"):
        metrics = evaluate(model, *data.split(split), data.pos_weight, threshold=prep["threshold"]).as_dict()
        for name in ("loss", "accuracy", "roc_auc", "precision", "recall", "f1", "fpr_at_5fnr"):
            assert row[f"{split}_{name}"] == pytest.approx(metrics[name], rel=1e-6, abs=1e-9), (split, name)


def _test_split_file(small_file: Path, path: Path) -> Path:
    """The test split's records alone, in an ExRomana file of their own."""
    data = exromana.load(small_file)
    _, _, test = stratified_split(data.labels, seed=0)
    records = {"TP": [], "FP": []}
    for i in test:
        records["TP" if data.labels[i] else "FP"].append({"sample": data.samples[i]})
    return exromana.save(records, path)


def test_predict_on_the_test_split_reproduces_compares_test_metrics(
    store: str, tmp_path: Path, small_file: Path
) -> None:
    row = _compare(store, "random")
    _export(store, "random", tmp_path / "model")
    test_file = _test_split_file(small_file, tmp_path / "test.npy")
    scores_csv = tmp_path / "scores.csv"
    result = invoke("predict", "--model", tmp_path / "model", "--data", test_file, "--out", scores_csv)
    assert result.exit_code == 0, result.output
    printed = dict(re.findall(r"(loss|accuracy|ROC AUC|F1|FPR@5%FNR) (\d\.\d{4})", result.stdout))
    assert printed["accuracy"] == f"{row['test_accuracy']:.4f}" and printed["ROC AUC"] == f"{row['test_roc_auc']:.4f}"
    assert printed["loss"] == f"{row['test_loss']:.4f}" and printed["FPR@5%FNR"] == f"{row['test_fpr_at_5fnr']:.4f}"
    with scores_csv.open() as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["index", "label", "score", "prediction"]
    labels = np.array([int(r["label"]) for r in rows])
    predictions = np.array([int(r["prediction"]) for r in rows])
    scores = np.array([float(r["score"]) for r in rows])
    assert len(rows) == len(exromana.load(test_file).labels)
    assert np.array_equal(predictions, (scores >= 0.5).astype(int))
    assert (predictions == labels).mean() == pytest.approx(row["test_accuracy"])
    # --split test picks the same cutouts out of the full file
    again = invoke(
        "predict", "--model", tmp_path / "model", "--data", small_file, "--split", "test", "--out", tmp_path / "s.csv"
    )
    assert again.exit_code == 0, again.output
    assert again.stdout.split("metrics:")[1] == result.stdout.split("metrics:")[1]


def test_predict_scores_unlabelled_cutouts(store: str, tmp_path: Path, small_records: dict) -> None:
    _export(store, "tpe", tmp_path / "model")
    unlabelled = tmp_path / "new.npy"
    cutouts = [{"sample": r["sample"]} for r in small_records["FP"][:5] + small_records["TP"][:3]]
    unlabelled.write_bytes(pickle.dumps(cutouts))  # a plain list of records: no classes, so no labels
    out = tmp_path / "new.csv"
    result = invoke("predict", "--model", tmp_path / "model", "--data", unlabelled, "--out", out)
    assert result.exit_code == 0, result.output
    assert "scored 8 cutouts" in result.stdout and "metrics:" not in result.stdout
    lines = out.read_text().splitlines()
    assert lines[0] == "index,score,prediction" and len(lines) == 9 and lines[1].startswith("0,")


def test_predict_uses_the_recorded_zscale_contrast(store: str, tmp_path: Path, small_file: Path) -> None:
    """predict prepares cutouts with the contrast the manifest records; a manifest without one (written before it
    was recorded) is read as the 0.25 it was made with."""
    import shutil

    from hpo_astro.results.export import predict

    model = tmp_path / "model"
    manifest = _export(store, "tpe", model)
    assert manifest["preprocessing"]["zscale_contrast"] == 0.25
    default = predict(model, small_file).scores

    def variant(name: str, change: Callable[[dict], None]) -> np.ndarray:
        copy = shutil.copytree(model, tmp_path / name)
        edited = json.loads((copy / "model.json").read_text())
        change(edited["preprocessing"])
        (copy / "model.json").write_text(json.dumps(edited))
        return predict(copy, small_file).scores

    assert not np.allclose(variant("contrast", lambda prep: prep.update(zscale_contrast=0.05)), default)
    assert np.array_equal(variant("older", lambda prep: prep.pop("zscale_contrast")), default)


def test_export_replaces_an_earlier_export_only(store: str, tmp_path: Path) -> None:
    out = tmp_path / "model"
    _export(store, "random", out)
    first = (out / "model.pt").read_bytes()
    _export(store, "random", out)  # overwriting an earlier export is fine, and gives the same weights
    assert (out / "model.pt").read_bytes() == first
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    assert_refused(invoke("export", "--storage", store, "--study", "random", "--out", busy), "not an exported model")
    assert (busy / "notes.txt").read_text() == "mine"


def test_export_refuses_a_study_without_completed_trials(store: str, tmp_path: Path) -> None:
    result = invoke("export", "--storage", store, "--study", "pruned-only", "--out", tmp_path / "m")
    assert_refused(result, "study 'pruned-only' has no completed trial (2 pruned, 1 fail)")
    assert_refused(invoke("export", "--storage", store, "--study", "nope", "--out", tmp_path / "m"), "no study named")
    assert not (tmp_path / "m").exists()


def test_export_from_a_moved_data_file(store: str, tmp_path: Path, small_file: Path) -> None:
    optuna.load_study(study_name="tpe", storage=store).set_user_attr("data_source", str(tmp_path / "gone.npy"))
    assert_refused(invoke("export", "--storage", store, "--study", "tpe", "--out", tmp_path / "m"), "--data PATH")
    result = invoke("export", "--storage", store, "--study", "tpe", "--out", tmp_path / "m", "--data", small_file)
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "m" / "model.json").read_text())["data"]["source"] == str(small_file)


def test_predict_bad_input(store: str, tmp_path: Path, small_file: Path) -> None:
    model = tmp_path / "model"
    _export(store, "tpe", model)
    assert_refused(invoke("predict", "--model", tmp_path / "none", "--data", small_file), "model directory not found")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_refused(invoke("predict", "--model", empty, "--data", small_file), "model.json, model.pt missing")
    assert_refused(invoke("predict", "--model", model, "--data", small_file, "--split", "dev"), "'dev' is not one of")
    from hpo_astro.errors import UserError
    from hpo_astro.results.export import predict

    with pytest.raises(UserError, match="unknown split 'dev'; known: all, train, val, test"):  # called from Python
        predict(model, small_file, "dev")
    assert_refused(invoke("predict", "--model", model, "--data", tmp_path / "no.npy"), "data file not found")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.json").write_text("{not json")
    (broken / "model.pt").write_bytes(b"")
    assert_refused(invoke("predict", "--model", broken, "--data", small_file), "not a valid model manifest")
    mismatched = tmp_path / "mismatched"
    mismatched.mkdir()
    manifest = json.loads((model / "model.json").read_text())
    manifest["params"]["fc_width"] = 256 if manifest["params"]["fc_width"] != 256 else 32
    (mismatched / "model.json").write_text(json.dumps(manifest))
    (mismatched / "model.pt").write_bytes((model / "model.pt").read_bytes())
    assert_refused(invoke("predict", "--model", mismatched, "--data", small_file), "cannot load the weights")


# --- #17: what export replaces, and manifests and weights that must not be trusted --------------------------------


def test_export_into_an_earlier_export_keeps_the_users_other_files(store: str, tmp_path: Path) -> None:
    """An export folder where the user keeps notes and scores: a second export replaces model.pt and model.json
    only (it used to swap the whole folder and delete the rest)."""
    out = tmp_path / "model"
    _export(store, "random", out)
    (out / "notes.txt").write_text("mine")
    (out / "scores.csv").write_text("index,score\n")
    manifest = _export(store, "tpe", out)
    assert (out / "notes.txt").read_text() == "mine" and (out / "scores.csv").read_text() == "index,score\n"
    assert manifest["study"]["name"] == "tpe"
    assert sorted(p.name for p in out.iterdir()) == ["model.json", "model.pt", "notes.txt", "scores.csv"]


def test_export_refuses_the_working_directory_and_an_unwritable_out_before_evaluating(
    store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("mine")
    assert_refused(invoke("export", "--storage", store, "--study", "random", "--out", "."), "not an exported model")
    (tmp_path / "a-file").write_text("x")  # an --out below a file: no directory can be made there, even by root
    result = invoke("export", "--storage", store, "--study", "random", "--out", tmp_path / "a-file" / "m")
    assert_refused(result, "is not a writable directory")
    assert "retraining" not in result.output  # refused before the model was rebuilt


def test_a_torn_export_is_refused_by_the_weights_digest(store: str, tmp_path: Path, small_file: Path) -> None:
    """A crash between replacing model.pt and model.json leaves new weights beside an old manifest: the manifest's
    SHA-256 of model.pt tells them apart."""
    first, second = tmp_path / "a", tmp_path / "b"
    _export(store, "random", first)
    _export(store, "tpe", second)
    (first / "model.pt").write_bytes((second / "model.pt").read_bytes())
    assert_refused(invoke("predict", "--model", first, "--data", small_file), "SHA-256 differs")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m["params"].update(conv_layers=40), "conv_layers = 40 is out of range"),
        (lambda m: m.update(in_channels=10**7), "in_channels must be a whole number from 1 to 4"),
        (lambda m: m["params"].update(fc_width=8192, fc_layers=20), "more than the 50,000,000 allowed"),
        (lambda m: m.update(preprocessing="zscale"), "preprocessing must be an object"),
        (lambda m: m.update(pos_weight="x"), "pos_weight must be a finite number"),
        (lambda m: m["preprocessing"].update(threshold="x"), "threshold must be a finite number"),
        (lambda m: m["preprocessing"].update(threshold=None), "threshold must be a finite number"),
        (lambda m: m["preprocessing"].update(threshold=[0.5]), "threshold must be a finite number"),
        (lambda m: m["params"].update(fc_width=float("inf")), "fc_width = inf is not a finite number"),
    ],
)
def test_a_hostile_manifest_is_refused_before_anything_is_built(
    change: Callable[[dict], None], message: str, store: str, tmp_path: Path, small_file: Path
) -> None:
    out = tmp_path / "model"
    manifest = _export(store, "random", out)
    change(manifest)
    (out / "model.json").write_text(json.dumps(manifest))
    assert_refused(invoke("predict", "--model", out, "--data", small_file), message)


def test_a_weights_zip_bomb_is_refused_before_torch_unpacks_it(store: str, tmp_path: Path, small_file: Path) -> None:
    """A small model.pt whose archive declares hundreds of MB (a member of zeros, deflated): refused by its
    unpacked size against the model its manifest describes, and a file that is no torch archive is one line too."""
    import zipfile

    out = tmp_path / "model"
    manifest = _export(store, "random", out)
    manifest.pop("weights_sha256")  # an older export, without the digest: the size check alone must hold
    (out / "model.json").write_text(json.dumps(manifest))
    with zipfile.ZipFile(out / "model.pt", "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
        zf.writestr("archive/data/0", bytes(300 << 20))
    assert (out / "model.pt").stat().st_size < 2 << 20
    assert_refused(invoke("predict", "--model", out, "--data", small_file), "too large for a model of")
    (out / "model.pt").write_text("not a model")
    assert_refused(invoke("predict", "--model", out, "--data", small_file), "not a torch weights file")


def test_export_reuses_the_cached_evaluation_of_the_same_model_only(
    store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """export evaluated all three splits every time (34 s; the second time 50 s), although the README promises that a
    second compare, report or export is instant: it reuses compare's cached evaluation when that is of the very
    model it exports (its weights' digest), whoever wrote it, and evaluates anew when the weights changed."""
    import shutil

    import torch

    study = optuna.load_study(study_name="random", storage=store)
    folder = shutil.copytree(study.user_attrs["artifacts"], tmp_path / "artifacts")
    study.set_user_attr("artifacts", str(folder))  # this store's own copy of the weights, changed below
    evaluated: list[str] = []
    real = evaluate_module.evaluate_model

    def counting(*args: object, **kwargs: object) -> evaluate_module.Evaluation:
        evaluated.append("evaluated")
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(evaluate_module, "evaluate_model", counting)
    row = _compare(store, "random")
    assert len(evaluated) == 1
    first = _export(store, "random", tmp_path / "model")  # compare's evaluation of these weights
    second = _export(store, "random", tmp_path / "model")
    assert len(evaluated) == 1 and first["metrics"] == second["metrics"]
    assert first["metrics"]["test"]["accuracy"] == pytest.approx(row["test_accuracy"])
    assert first["study"]["model_source"] == "weights"

    weights = folder / study.user_attrs["best_weights"]["artifact_id"]

    def change_weights() -> None:
        state = torch.load(weights, weights_only=True)
        torch.save({name: t + 0.25 if t.is_floating_point() else t for name, t in state.items()}, weights)

    change_weights()
    changed = _export(store, "random", tmp_path / "model")
    assert len(evaluated) == 2 and changed["metrics"]["train"]["loss"] != first["metrics"]["train"]["loss"]
    assert _compare(store, "random")["train_loss"] == pytest.approx(changed["metrics"]["train"]["loss"])
    assert len(evaluated) == 2  # compare reads the entry export wrote for these weights
    assert _export(store, "random", tmp_path / "model")["metrics"] == changed["metrics"] and len(evaluated) == 2
    change_weights()  # compare, too, evaluates weights that are not those of its cached entry
    assert _compare(store, "random")["train_loss"] != pytest.approx(changed["metrics"]["train"]["loss"])
    assert len(evaluated) == 3
