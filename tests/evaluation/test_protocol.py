"""The benchmark end to end at the smoke profile, and the bad input it must refuse."""

from __future__ import annotations

import csv
import json
import shutil
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from harmonizing_flows.data.datasets import load_subjects
from harmonizing_flows.data.prepare import read_volumes
from harmonizing_flows.data.slices import Slices
from harmonizing_flows.errors import InputError, OutputExistsError
from harmonizing_flows.evaluation.cache import load_setting, setting_key
from harmonizing_flows.evaluation.protocol import RULES, VARIANTS, benchmark
from harmonizing_flows.evaluation.report import TABLE1_METHODS
from harmonizing_flows.evaluation.results import START
from harmonizing_flows.method.adaptation import HM_START, PRETRAINED_START
from harmonizing_flows.method.distributed import Context
from harmonizing_flows.method.store import load_model
from harmonizing_flows.method.training import fit_model
from harmonizing_flows.profiles import apply_overrides


def _run_b(simulated, profile, out: Path, lines: list[str]) -> dict[str, Path]:
    """Setting B, four variants (two curve harmonizers, one with a restorer): the run every test here looks at."""
    return benchmark(
        simulated.manifest,
        out,
        profile,
        settings=["B"],
        variants=["paper-faithful", "brain-only", "curve+jacobian", "curve+restoration"],
        progress=False,
        log=lines.append,
        command="test",
    )


@pytest.fixture(scope="module")
def report(simulated, smoke_profile, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "results"
    lines: list[str] = []
    return out, _run_b(simulated, smoke_profile, out, lines), lines


def test_tables_json_and_figures_are_written(report):
    out, written, _ = report
    assert set(written) == {"tables.md", "results.json", "figures"}
    tables = (out / "tables.md").read_text()
    for heading in ("Table 1", "Table 2", "Table 3", "Table 4: the flow", "Dice (%)", "HD95 (mm)",
                    "modified Hausdorff distance (mm)", "3D consistency"):  # fmt: skip
        assert heading in tables
    for method in TABLE1_METHODS:
        assert f"| {method} " in tables
    assert f"| curve+jacobian | start (step 0): {HM_START} |" in tables
    assert f"| paper-faithful | start (step 0): {PRETRAINED_START} |" in tables
    assert "ceiling: segmenter on its source test split" in tables
    # CPU results depend on the thread count, so the provenance names it
    threads = torch.get_num_threads()
    assert json.loads((out / "results.json").read_text())["meta"]["machine"]["torch_threads"] == threads
    assert f"({threads} torch threads)" in tables
    for name in ("slices_B.png", "histograms_B.png", "curves_B.png"):
        assert (out / "figures" / name).stat().st_size > 10_000


def test_every_method_is_scored_on_every_test_volume_of_every_target(report, simulated):
    out, _, _ = report
    doc = json.loads((out / "results.json").read_text())
    setting = doc["results"]["B"]
    sites = sorted({s.site for s in load_subjects(simulated.manifest)})
    assert setting["source"] == sites[1]
    assert set(setting["targets"]) == set(sites) - {sites[1]}
    parts = {"fit segmenter", "fit BigAug segmenter", "fit models", "TENT", "ComBat", "score", "WhiteStripe"}
    assert parts <= set(setting["timings"]) and all(t >= 0 for t in setting["timings"].values())
    assert any(part.startswith("adapt and score ") for part in setting["timings"])
    for target in setting["targets"].values():
        n = len(target["test_subjects"])
        for method in ("none", "histogram matching", "Nyul", "WhiteStripe", "ComBat", "TENT", "BigAug"):
            assert len(target["scores"][method]) == n
            assert all(0 <= s["dice"] <= 100 and s["hd95"] >= 0 for s in target["scores"][method])
            assert all(s["neighbour_difference"] > 0 for s in target["scores"][method])
        # the segmenters see the raw images: their 3D consistency is the raw images', whatever their labels
        for method in ("TENT", "BigAug"):
            assert [s["neighbour_difference"] for s in target["scores"][method]] == [
                s["neighbour_difference"] for s in target["scores"]["none"]
            ]
        for variant in target["variants"].values():
            for rule in RULES:
                assert len(variant["scores"][f"adapted ({rule})"]) == n
                assert variant["kept"][rule]["step"] in [r["step"] for r in variant["curve"]]
            dice = [r["dice"] for r in variant["curve"]]
            oracle = variant["kept"]["oracle"]["step"]
            assert dice[[r["step"] for r in variant["curve"]].index(oracle)] == max(dice)
            assert variant["kept"]["steps"]["step"] == variant["curve"][-1]["step"]
        # the curve harmonizer has no per-slice gain, and it moved from histogram matching
        curve = target["variants"]["curve+jacobian"]["curve"]
        assert all(r["alpha"] == 1.0 for r in curve) and curve[-1]["brain_mean"] != curve[0]["brain_mean"]
        # step 0 is scored as the start: the pre-trained harmonizer for the paper's family, histogram matching
        # (not the pre-trained harmonizer) for the curve
        paper, hm_start = target["variants"]["paper-faithful"], target["variants"]["curve+jacobian"]
        assert paper["started_as"] == PRETRAINED_START and hm_start["started_as"] == HM_START
        assert paper["scores"][START] == paper["scores"]["pre-trained harmonizer"]
        assert len(hm_start["scores"][START]) == n
        assert hm_start["scores"][START] != hm_start["scores"]["pre-trained harmonizer"]
        # the flow each variant adapted with: its stored adequacy, and an AUROC against this target
        for variant in target["variants"].values():
            assert set(variant["flow"]) == {"brain_bpd", "auroc_augmented", "auroc_target"}
            assert 0 <= variant["flow"]["auroc_target"] <= 1 and variant["flow"]["brain_bpd"] > 0
        assert paper["flow"] == hm_start["flow"]  # they share one fitted model


def test_an_interrupted_run_resumes_from_its_finished_settings(report, simulated, smoke_profile, tmp_path):
    out, _, _ = report
    again = tmp_path / "again"
    shutil.copytree(out / "settings", again / "settings")  # as a run stopped after setting B leaves it
    lines: list[str] = []
    _run_b(simulated, smoke_profile, again, lines)
    assert any("reusing" in line and "B.json" in line for line in lines)
    assert any("ceiling:" in line for line in report[2])  # what a setting logs when it runs ...
    assert not any("ceiling:" in line or "fitted in" in line for line in lines)  # ... and did not log here
    first = json.loads((out / "results.json").read_text())
    second = json.loads((again / "results.json").read_text())
    assert second["results"] == first["results"] and second["meta"]["resumed"] == ["B"]
    assert (again / "figures" / "slices_B.png").stat().st_size > 10_000
    assert "setting B reused from an earlier run" in (again / "tables.md").read_text()


def test_a_run_from_scratch_reproduces_the_numbers(report, simulated, smoke_profile, tmp_path):
    out, _, _ = report
    _run_b(simulated, smoke_profile, tmp_path / "scratch", [])  # fits and adapts anew: nothing to reuse
    first = _without_timings(json.loads((out / "results.json").read_text())["results"])
    second = _without_timings(json.loads((tmp_path / "scratch" / "results.json").read_text())["results"])
    assert second == first


def _without_timings(value):
    """The numbers of a report, without its wall-clock times (the setting's, its parts' and each curve point's)."""
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in value.items() if k not in ("seconds", "timings")}
    if isinstance(value, list):
        return [_without_timings(v) for v in value]
    return value


def test_a_damaged_or_foreign_finished_setting_is_not_reused(report, tmp_path):
    out, _, _ = report
    folder = tmp_path / "settings"
    shutil.copytree(out / "settings", folder)
    key = json.loads((folder / "B.json").read_text())["key"]
    assert load_setting(folder, "B", key) is not None
    assert load_setting(folder, "B", "another run's key") is None
    data = (folder / "B.npz").read_bytes()
    middle = len(data) // 2  # inside a compressed member: zlib fails, not the zip directory
    flipped = bytes(b ^ 0xFF for b in data[middle : middle + 64])
    (folder / "B.npz").write_bytes(data[:middle] + flipped + data[middle + 64 :])
    assert load_setting(folder, "B", key) is None
    (folder / "B.npz").write_bytes(data[:100])
    assert load_setting(folder, "B", key) is None
    (folder / "B.npz").write_bytes(data)
    assert load_setting(folder, "B", key) is not None
    for damaged in ('{"key": "' + key + '", "res', json.dumps({"key": key, "result": 3, "examples": []}), "[]"):
        (folder / "B.json").write_text(damaged)
        assert load_setting(folder, "B", key) is None


def test_the_setting_key_changes_with_whatever_changes_the_results(simulated, smoke_profile, tmp_path):
    subjects = load_subjects(simulated.manifest)
    cpu = torch.device("cpu")
    key = setting_key(smoke_profile, ["paper-faithful"], "mprage-3t", subjects, cpu)
    assert key == setting_key(smoke_profile, ["paper-faithful"], "mprage-3t", load_subjects(simulated.manifest), cpu)
    moved = [replace(s, split="val") if i == 0 else s for i, s in enumerate(subjects)]
    copied = tmp_path / "copy" / subjects[0].image.name
    copied.parent.mkdir()
    shutil.copyfile(subjects[0].image, copied)  # the same bytes elsewhere, written later: the same data
    elsewhere = [replace(s, image=copied) if i == 0 else s for i, s in enumerate(subjects)]
    assert setting_key(smoke_profile, ["paper-faithful"], "mprage-3t", elsewhere, cpu) == key
    changed_bytes = tmp_path / subjects[0].image.name
    changed_bytes.write_bytes(subjects[0].labels.read_bytes())
    other_file = [replace(s, image=changed_bytes) if i == 0 else s for i, s in enumerate(subjects)]
    for changed in (
        setting_key(replace(smoke_profile, seed=1), ["paper-faithful"], "mprage-3t", subjects, cpu),
        setting_key(smoke_profile, ["paper-faithful", "brain-only"], "mprage-3t", subjects, cpu),
        setting_key(smoke_profile, ["paper-faithful"], "spgr-15t", subjects, cpu),
        setting_key(smoke_profile, ["paper-faithful"], "mprage-3t", moved, cpu),
        setting_key(smoke_profile, ["paper-faithful"], "mprage-3t", other_file, cpu),
        setting_key(smoke_profile, ["paper-faithful"], "mprage-3t", subjects, torch.device("cuda")),
    ):
        assert changed != key


def test_a_second_run_needs_overwrite_and_then_reuses_the_fitted_networks(report, simulated, smoke_profile, tmp_path):
    out = tmp_path / "results"
    shutil.copytree(report[0], out)  # the other tests read the fixture's folder as it was written
    with pytest.raises(OutputExistsError):
        benchmark(simulated.manifest, out, smoke_profile, settings=["B"], progress=False, log=lambda _: None)
    lines: list[str] = []
    benchmark(
        simulated.manifest,
        out,
        smoke_profile,
        settings=["B"],
        variants=["paper-faithful", "positive-alpha"],
        overwrite=True,
        progress=False,
        log=lines.append,
    )
    assert any("model: reusing" in line for line in lines)
    assert any("segmenter: reusing" in line for line in lines)
    assert any("positive-alpha: fitted" in line for line in lines)
    # beside the paper-faithful model, positive-alpha refits only its harmonizer: the same model as a whole fit
    subjects = load_subjects(simulated.manifest)
    source = sorted({s.site for s in subjects})[1]  # setting B's
    volumes = read_volumes([s for s in subjects if s.site == source], smoke_profile.slices, labels=True)
    train, val = ([v for v in volumes if v.subject.split == split] for split in ("train", "val"))
    val = val or train  # as the benchmark does
    positive = apply_overrides(smoke_profile, VARIANTS["positive-alpha"])
    whole = fit_model(Slices.pool(train, labels=True), Slices.pool(val), positive, Context(), progress=False)
    assert whole is not None
    stored = load_model(out / "models" / source / "positive-alpha")
    paper_flow = load_model(out / "models" / source / "model").flow.state_dict()
    for expected, module in ((whole.harmonizer, stored.harmonizer), (whole.flow, stored.flow)):
        assert all(torch.equal(v, module.state_dict()[k]) for k, v in expected.state_dict().items())
    assert all(torch.equal(v, paper_flow[k]) for k, v in stored.flow.state_dict().items())
    # the same weights; the stored flow was loaded from disk in the default memory format, the whole fit's is
    # channels-last from training, so their convolutions round differently in the last digits
    assert stored.metadata["source_bpd"] == pytest.approx(whole.metadata["source_bpd"], rel=1e-6)


def test_the_restoration_variant_adds_a_fitted_restorer_to_the_shared_model(report, simulated):
    out, _, lines = report
    source = sorted({s.site for s in load_subjects(simulated.manifest)})[1]  # setting B's
    shared = load_model(out / "models" / source / "model")
    restoring = load_model(out / "models" / source / "curve+restoration")
    assert shared.restorer is None and restoring.restorer is not None
    assert restoring.profile.restoration.enabled and restoring.metadata["training"]["restoration"]
    for module in ("flow", "harmonizer"):  # the restorer alone is fitted: the rest is the shared model's
        expected = getattr(shared, module).state_dict()
        assert all(torch.equal(v, expected[k]) for k, v in getattr(restoring, module).state_dict().items())
    assert restoring.metadata["source_bpd_curve"] == shared.metadata["source_bpd_curve"]
    assert any("curve+restoration: Dice none" in line for line in lines)
    tables = (out / "tables.md").read_text()
    assert f"| curve+restoration | start (step 0): {HM_START}, then the restorer |" in tables
    # both start at histogram matching; only the restorer can make their step-0 scores differ
    for target in json.loads((out / "results.json").read_text())["results"]["B"]["targets"].values():
        plain, restored = ([s["dice"] for s in target["variants"][v]["scores"][START]]
                           for v in ("curve+jacobian", "curve+restoration"))  # fmt: skip
        assert plain != restored


def _copy_site_data(simulated, tmp_path: Path, *, sites=None, relabel=None, drop_test=None) -> Path:
    """A manifest over the simulated files, optionally for fewer sites, one label map rewritten, or a site's
    test subjects moved to validation."""
    rows = list(csv.DictReader(simulated.manifest.open()))
    root = simulated.manifest.parent
    out_rows = []
    for row in rows:
        if sites and row["site"] not in sites:
            continue
        row = {k: (str(root / v) if k in ("image", "mask", "labels") and v else v) for k, v in row.items()}
        if relabel and row["subject"] == relabel:
            img = nib.load(row["labels"])
            data = np.asarray(img.dataobj)
            bad = np.where(data > 0, 1 + (data % 3), 0).astype(np.int16)  # a 3-class tissue map
            path = tmp_path / "tissue_labels.nii.gz"
            nib.save(nib.Nifti1Image(bad, img.affine), path)
            row["labels"] = str(path)
        if drop_test and row["site"] == drop_test and row["split"] == "test":
            row["split"] = "val"
        out_rows.append(row)
    manifest = tmp_path / "manifest.csv"
    with manifest.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(out_rows[0]))
        writer.writeheader()
        writer.writerows(out_rows)
    return manifest


def test_a_label_map_with_other_classes_is_refused(simulated, tmp_path, smoke_profile):
    subject = next(iter(load_subjects(simulated.manifest))).subject
    manifest = _copy_site_data(simulated, tmp_path, relabel=subject)
    with pytest.raises(InputError, match=r"tissue_labels.nii.gz.*only classes \[1, 2, 3\]"):
        read_volumes([s for s in load_subjects(manifest) if s.subject == subject], smoke_profile.slices, labels=True)


def test_a_target_without_test_volumes_or_a_single_site_is_refused(simulated, tmp_path, smoke_profile):
    sites = sorted({s.site for s in load_subjects(simulated.manifest)})
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    one = _copy_site_data(simulated, tmp_path / "one", sites=[sites[0]])
    with pytest.raises(InputError, match="holds 1 site"):
        benchmark(one, tmp_path / "r1", smoke_profile, progress=False, log=lambda _: None)
    two = _copy_site_data(simulated, tmp_path / "two", sites=sites[:2], drop_test=sites[1])
    with pytest.raises(InputError, match=f"target site {sites[1]} has no subject in its test split"):
        benchmark(
            two,
            tmp_path / "r2",
            smoke_profile,
            settings=["A"],
            variants=["paper-faithful"],
            progress=False,
            log=lambda _: None,
        )
    with pytest.raises(ValueError, match="unknown setting"):
        benchmark(simulated.manifest, tmp_path / "r3", smoke_profile, settings=["Z"], progress=False, log=print)
    with pytest.raises(ValueError, match="unknown variant"):
        benchmark(simulated.manifest, tmp_path / "r4", smoke_profile, variants=["magic"], progress=False, log=print)
