"""The ``hflow`` command line, run in-process and as a user would run it."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import write_volume
from harmonizing_flows import __version__
from harmonizing_flows.cli import app
from harmonizing_flows.data.datasets import load_subjects

runner = CliRunner()


def test_help_and_version_are_quick_and_do_not_import_torch():
    code = "import sys; from harmonizing_flows.cli import app; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and __version__ in result.stdout
    result = runner.invoke(app, ["simulate", "--help"])
    assert result.exit_code == 0 and "--voxel-size" in result.stdout


def test_simulate_writes_a_loadable_dataset(tmp_path):
    out = tmp_path / "sim"
    args = [
        "simulate",
        "--out",
        str(out),
        "--sites",
        "mprage-3t,spgr-15t",
        "--subjects-per-site",
        "3",
        "--voxel-size",
        "6",
        "--seed",
        "2",
        "--quiet",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "simulated 6 subjects at 2 sites" in result.stdout
    subjects = load_subjects(out / "manifest.csv")
    assert {s.site for s in subjects} == {"mprage-3t", "spgr-15t"}
    # A second run without --overwrite is refused and leaves the first intact.
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    again = runner.invoke(app, args)
    assert again.exit_code == 2
    assert "already holds files" in again.output and str(out) in again.output
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    assert runner.invoke(app, [*args, "--overwrite"]).exit_code == 0


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--sites", "nowhere"], "unknown site"),
        (["--subjects-per-site", "2"], "--subjects-per-site"),  # at least 3: one per split
        (["--voxel-size", "0"], "voxel"),
        (["--sites-file", "missing.toml"], "missing.toml: site file does not exist"),
        (["--anatomy", "missing.mgz"], "missing.mgz"),
    ],
)
def test_simulate_errors_name_the_cause_and_exit_2(tmp_path, monkeypatch, extra, message):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["simulate", "--out", "sim", "--quiet", *extra])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "sim").exists()


def test_sites_lists_builtin_and_file_sites(tmp_path):
    result = runner.invoke(app, ["sites"])
    assert result.exit_code == 0
    for name in ("mprage-3t", "mprage-15t", "irspgr-3t", "spgr-15t"):
        assert name in result.stdout
    path = tmp_path / "s.toml"
    path.write_text('[sites.my-scanner]\nfield_strength = 1.5\nsequence = "spgr"\ntr_ms = 20.0\n')
    result = runner.invoke(app, ["sites", "--sites-file", str(path)])
    assert result.exit_code == 0 and "my-scanner" in result.stdout
    path.write_text("[sites.x]\nsnr = -3.0\n")
    result = runner.invoke(app, ["sites", "--sites-file", str(path)])
    assert result.exit_code == 2 and "snr must be positive" in result.output


def test_console_script_runs():
    exe = subprocess.run([sys.executable, "-m", "harmonizing_flows.cli", "--version"], capture_output=True, text=True)
    assert exe.returncode == 0 and __version__ in exe.stdout


def test_fit_adapt_harmonize_from_the_command_line(simulated, tmp_path):
    model, adapted, out = tmp_path / "model", tmp_path / "adapted", tmp_path / "harmonized"
    fit = runner.invoke(
        app,
        [
            "fit",
            str(simulated.manifest),
            "--site",
            "mprage-3t",
            "--out",
            str(model),
            "--profile",
            "smoke",
            "--set",
            "flow_training.epochs=1",
            "--set",
            "harmonizer_training.epochs=1",
            "--seed",
            "3",
            "--quiet",
        ],
    )
    assert fit.exit_code == 0, fit.output
    assert "fitted on site mprage-3t" in fit.stdout and "source validation bpd" in fit.stdout
    assert "flow adequacy: brain bpd" in fit.stdout  # one epoch: not adequate, and it says so
    assert "warning: the flow is not adequate" in fit.stderr
    adapt = runner.invoke(
        app,
        [
            "adapt",
            str(model),
            str(simulated.manifest),
            "--site",
            "spgr-15t",
            "--out",
            str(adapted),
            "--stop",
            "steps",
            "--steps",
            "4",
            "--set",
            "adapt.intensity_guard=0",  # this checks the steps rule alone; the guard has its own tests
            "--quiet",
        ],
    )
    assert adapt.exit_code == 0, adapt.output
    assert "took all 4 steps" in adapt.stdout and "kept step 4" in adapt.stdout
    site_folder = simulated.folder / "spgr-15t"
    result = runner.invoke(app, ["harmonize", str(adapted), str(site_folder), "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    assert len(list(out.glob("*_T1w.nii.gz"))) == len(list(site_folder.glob("*_T1w.nii.gz")))
    again = runner.invoke(app, ["harmonize", str(adapted), str(site_folder), "--out", str(out), "--quiet"])
    assert again.exit_code == 2 and "already exists" in again.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["fit", "missing.csv", "--out", "m"], "missing.csv: does not exist"),
        (["fit", "{manifest}", "--out", "m", "--profile", "huge"], "unknown profile"),
        (["fit", "{manifest}", "--out", "m", "--set", "flow.nothing=1"], "unknown setting"),
        (["adapt", "nomodel", "{manifest}", "--out", "a"], "nomodel: model folder does not exist"),
        (["harmonize", "nomodel", "x.nii.gz", "--out", "o.nii.gz"], "does not exist"),
        (["harmonize", "{model}", "{image}", "--out", "o.nii.gz", "--device", "foo"], "'foo' is not a device name"),
        # a folder to be made where a file stands: the system's error, as `error: PATH: cause`
        (["fit", "{manifest}", "--site", "mprage-3t", "--out", "afile/m", "--profile", "smoke"], "afile: is a file"),
        (["fit", "{manifest}", "--site", "mprage-3t", "--out", "notes", "--overwrite"], "notes: exists and is not"),
    ],
)
def test_method_commands_report_bad_input(simulated, fitted, tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("a file")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "mine.txt").write_text("mine")
    values = {
        "{manifest}": str(simulated.manifest),
        "{model}": str(fitted),
        "{image}": str(simulated.subjects[0].image),
    }
    args = [values.get(a, a) for a in args]
    result = runner.invoke(app, [*args, "--quiet"])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    # refused before any work: nothing trained, nothing replaced
    assert not (tmp_path / "notes.checkpoints").exists() and (tmp_path / "notes" / "mine.txt").is_file()


def test_the_cli_keeps_freed_memory_on_linux():
    code = "from harmonizing_flows.allocator import keep_freed_memory as k; print(k())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ("True" if sys.platform.startswith("linux") else "False")


def test_fit_segmenter_then_adapt_with_the_entropy_rule(simulated, fitted, smoke_profile, tmp_path):
    runner = CliRunner()
    seg = tmp_path / "seg"
    result = runner.invoke(
        app,
        [
            "fit-segmenter",
            str(simulated.manifest),
            "--site",
            "mprage-3t",
            "--out",
            str(seg),
            "--profile",
            "smoke",
            "--device",
            "cpu",
            "-q",
        ],
    )
    assert result.exit_code == 0, result.output
    out = tmp_path / "adapted"
    result = runner.invoke(
        app,
        [
            "adapt",
            str(fitted),
            str(simulated.manifest),
            "--site",
            "spgr-15t",
            "--out",
            str(out),
            "--segmenter",  # without --stop: a segmenter makes the entropy rule the paper harmonizer's default
            str(seg),
            "--set",
            "adapt.harmonizer=paper",
            "--steps",
            "10",
            "-q",
        ],
    )
    assert result.exit_code == 0, result.output
    curve = json.loads((out / "adaptation.json").read_text())["curve"]
    assert all("entropy" in r for r in curve)
    assert json.loads((out / "model.json").read_text())["adaptation"]["stop"] == "entropy"
    result = runner.invoke(
        app,
        [
            "adapt",
            str(fitted),
            str(simulated.manifest),
            "--site",
            "spgr-15t",
            "--out",
            str(tmp_path / "x"),
            "--stop",
            "entropy",
            "-q",
        ],
    )
    assert result.exit_code == 2 and "needs a segmenter" in result.output
    # a rule named in the settings is kept even with a segmenter; with none named, the curve harmonizer takes the
    # entropy rule too
    for name, family, rule in (
        ("y", ["--set", "adapt.harmonizer=paper", "--set", "adapt.stop=steps"], "steps"),
        ("z", [], "entropy"),
    ):
        result = runner.invoke(
            app,
            ["adapt", str(fitted), str(simulated.manifest), "--site", "spgr-15t", "--out", str(tmp_path / name),
             "--segmenter", str(seg), *family, "--steps", "3", "-q"],
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        assert json.loads((tmp_path / name / "model.json").read_text())["adaptation"]["stop"] == rule


def test_adapt_to_a_target_without_brain_names_the_mask(fitted, tmp_path):
    image = write_volume(tmp_path / "t1.nii.gz", np.full((20, 24, 20), 50.0, np.float32))
    mask = write_volume(tmp_path / "mask.nii.gz", np.zeros((20, 24, 20), np.uint8))
    manifest = tmp_path / "target.csv"
    manifest.write_text(f"subject,site,image,mask\ns1,elsewhere,{image},{mask}\n")
    result = runner.invoke(app, ["adapt", str(fitted), str(manifest), "--out", str(tmp_path / "a"), "--quiet"])
    assert result.exit_code == 2, result.output
    assert f"{mask}: mask is empty" in result.output
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--set", "adapt.steps=abc"], "adapt.steps must be a number, not 'abc'"),
        (["--set", "adapt.steps=2.5"], "adapt.steps must be a whole number"),
        (["--set", "adapt=1"], "adapt is a table of settings"),
        (["--set", "harmonizer.widths=[4]"], "cannot change harmonizer here: only adapt, seed"),
        (["--config", "{toml}"], "cannot change flow here"),
        (["--out", "{model}", "--overwrite"], "is the input model"),
    ],
)
def test_adapt_refuses_what_it_cannot_use_and_writes_nothing(simulated, fitted, tmp_path, extra, message):
    (tmp_path / "s.toml").write_text("seed = 3\n[flow]\nmargin = 2.0\n")
    before = {p.name: p.read_bytes() for p in fitted.iterdir() if p.is_file()}
    extra = [a.replace("{toml}", str(tmp_path / "s.toml")).replace("{model}", str(fitted)) for a in extra]
    args = ["adapt", str(fitted), str(simulated.manifest), "--site", "spgr-15t", "--out", str(tmp_path / "a")]
    result = runner.invoke(app, [*args, *extra, "--quiet"])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "a").exists()
    assert {p.name: p.read_bytes() for p in fitted.iterdir() if p.is_file()} == before  # the model untouched


def test_adapt_takes_its_settings_and_seed_from_a_file(simulated, fitted, tmp_path):
    (tmp_path / "s.toml").write_text("seed = 5\n[adapt]\nsteps = 3\neval_every = 1\nstop = 'steps'\n")

    def adapt(out, *extra):
        args = ["adapt", str(fitted), str(simulated.manifest), "--site", "spgr-15t", "--out", str(tmp_path / out)]
        result = runner.invoke(app, [*args, "--config", str(tmp_path / "s.toml"), *extra, "--quiet"])
        assert result.exit_code == 0, result.output
        curve = json.loads((tmp_path / out / "adaptation.json").read_text())["curve"]
        meta = json.loads((tmp_path / out / "model.json").read_text())["adaptation"]
        return meta, [r["target_bpd"] for r in curve]

    meta, five = adapt("a")
    assert meta["seed"] == 5 and meta["settings"]["steps"] == 3 and meta["kept_step"] == 3 and len(five) == 4
    meta, six = adapt("b", "--seed", "6")
    assert meta["seed"] == 6 and six != five  # the seed draws the batches and the noise
    assert adapt("c")[1] == five  # and the same seed, the same run


def test_demo_runs_end_to_end_and_prints_the_tables(tmp_path):
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--profile", "smoke", "--subjects-per-site", "4"]
    result = runner.invoke(app, args)  # with its progress, which goes to a log here (CliRunner's is not a terminal)
    assert result.exit_code == 0, result.output
    assert "\r" not in result.output
    flow = [line for line in result.output.splitlines() if line.startswith("flow: ")]  # a line per tenth
    assert 5 <= len(flow) <= 11 and re.match(r"flow: (\d+)/\1 step \(100 %\)", flow[-1]), flow
    assert "simulating 4 sites x 4 subjects at 4 mm" in result.output  # the smoke profile's voxel size
    tables = (out / "results" / "tables.md").read_text()
    assert "## Table 1" in result.output and tables.strip() in result.output
    results = json.loads((out / "results" / "results.json").read_text())
    assert list(results["results"]) == ["A"] and results["meta"]["profile"]["name"] == "smoke"
    assert sorted(p.name for p in (out / "results" / "figures").iterdir())  # figures written
    # the demo adapts the curve alone: the paper's harmonizer network is not pre-trained, nor has it a row
    assert not any(line.startswith("harmonizer: ") for line in result.output.splitlines())
    model = json.loads(next((out / "results" / "models").glob("*/model/model.json")).read_text())
    assert model["pretrained_harmonizer"] is False and model["training"]["harmonizer"] is None
    assert model["profile"]["adapt"]["harmonizer"] == "curve"  # so that `hflow adapt` on it adapts the curve
    assert "pre-trained harmonizer" not in tables and "| histogram matching |" in tables
    again = runner.invoke(app, args)
    assert again.exit_code == 2 and "already exists" in again.output


def test_system_errors_print_as_path_and_cause_with_notes(capsys):
    import typer

    from harmonizing_flows.cli import _fail
    from harmonizing_flows.errors import InputError, system_errors

    @system_errors
    def write() -> None:
        error = PermissionError(13, "Permission denied", "/data/out")
        error.add_note("2 of 5 volumes were written before this one and are kept")
        raise error

    with pytest.raises(InputError) as raised:
        write()
    with pytest.raises(typer.Exit) as info:
        _fail(raised.value)
    assert info.value.exit_code == 2
    printed = capsys.readouterr().err
    note = "2 of 5 volumes were written before this one and are kept"
    assert printed == f"error: /data/out: permission denied\n  {note}\n"


def test_a_bug_shows_its_traceback_and_debug_shows_it_for_user_errors_too(monkeypatch, tmp_path):
    import harmonizing_flows.method.training as training

    def broken(*args, **kwargs):
        raise ValueError("a programming error")

    monkeypatch.setattr(training, "fit", broken)
    result = runner.invoke(app, ["fit", str(tmp_path), "--out", str(tmp_path / "m")])
    assert result.exit_code == 1 and isinstance(result.exception, ValueError)  # not a tidy "error:" line
    monkeypatch.undo()
    missing = str(tmp_path / "nowhere")
    tidy = runner.invoke(app, ["fit", missing, "--out", str(tmp_path / "m2")])
    assert tidy.exit_code == 2 and "does not exist" in tidy.output and tidy.exception is not None
    debug = runner.invoke(app, ["--debug", "fit", missing, "--out", str(tmp_path / "m2")])
    from harmonizing_flows.errors import InputError

    assert isinstance(debug.exception, InputError)


def test_ctrl_c_during_fit_says_how_to_resume(monkeypatch, tmp_path):
    import harmonizing_flows.method.training as training

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "fit", interrupted)
    result = runner.invoke(app, ["fit", str(tmp_path), "--out", str(tmp_path / "m")])
    assert result.exit_code == 130 and "nothing to resume" in result.output
    (tmp_path / "m.checkpoints").mkdir()
    (tmp_path / "m.checkpoints" / "flow.safetensors").write_bytes(b"an epoch")
    result = runner.invoke(app, ["fit", str(tmp_path), "--out", str(tmp_path / "m")])
    assert result.exit_code == 130
    assert f"{tmp_path / 'm.checkpoints'}" in result.output and "--resume" in result.output


def test_fit_keeps_an_earlier_fits_checkpoints_unless_told(simulated, tmp_path):
    args = ["fit", str(simulated.manifest), "--site", "mprage-3t", "--out", str(tmp_path / "m"), "--profile", "smoke"]
    args += ["--set", "flow_training.epochs=1", "--set", "harmonizer_training.epochs=1", "--quiet"]
    assert runner.invoke(app, args).exit_code == 0
    checkpoints = tmp_path / "m.checkpoints"
    shutil.rmtree(tmp_path / "m")  # the model gone, its checkpoints left: as after an interrupted fit
    before = {p.name: p.read_bytes() for p in checkpoints.iterdir()}
    refused = runner.invoke(app, args)
    assert refused.exit_code == 2 and "holds checkpoints of an earlier fit" in refused.output
    assert "--resume" in refused.output and "--overwrite" in refused.output
    assert {p.name: p.read_bytes() for p in checkpoints.iterdir()} == before
    assert runner.invoke(app, [*args, "--overwrite"]).exit_code == 0


def test_harmonize_needs_only_the_harmonizer(simulated, fitted, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(fitted, model)
    (model / "flow.safetensors").unlink()  # never read: harmonizing needs the harmonizer alone
    image = simulated.subjects[0].image
    result = runner.invoke(app, ["harmonize", str(model), str(image), "--out", str(tmp_path / "h.nii.gz"), "-q"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "h.nii.gz").is_file()


def test_evaluation_commands_name_the_extra_they_need(monkeypatch, tmp_path):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "monai" else real(name, *a))
    for args in (["benchmark", "data.csv", "--out", "r"], ["demo", "--out", str(tmp_path / "d")]):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, result.output
        assert "needs the 'eval' extra (monai is not installed)" in result.output
        assert "pip install 'harmonizing-flows[eval]'" in result.output
    assert not (tmp_path / "d").exists()


def test_adapting_to_one_scan_says_that_it_is_one(simulated, fitted, tmp_path):
    subject = next(s for s in simulated.subjects if s.site == "spgr-15t")
    site = tmp_path / "one-scan"
    site.mkdir()
    shutil.copy2(subject.image, site / subject.image.name)
    shutil.copy2(subject.mask, site / subject.mask.name)
    args = ["adapt", str(fitted), str(site), "--out", str(tmp_path / "a"), "--steps", "2", "--quiet"]
    with pytest.warns(UserWarning, match=r"adapting to site one-scan from a single scan"):
        result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output


def test_progress_piped_to_a_log_is_lines_not_redraws(tmp_path):
    args = ["simulate", "--out", str(tmp_path / "s"), "--sites", "mprage-3t", "--subjects-per-site", "3"]
    result = runner.invoke(app, [*args, "--voxel-size", "6"])  # CliRunner's streams are not terminals
    assert result.exit_code == 0, result.output
    assert "\r" not in result.output
    lines = [line for line in result.output.splitlines() if line.startswith("simulating: ")]
    assert 1 <= len(lines) <= 11 and lines[-1].startswith("simulating: 4/4 scan (100 %)")


def test_fit_adapt_and_harmonize_need_no_evaluation_package(simulated, tmp_path):
    # `pip install harmonizing-flows` without the eval extra: monai, intensity-normalization, neuroCombat and pandas
    # are absent; the core commands must not import them
    script = f"""
import sys

for name in ("monai", "intensity_normalization", "neuroCombat", "pandas"):
    sys.modules[name] = None  # import raises ImportError, find_spec answers None: as if not installed
from typer.testing import CliRunner
from harmonizing_flows.cli import app

runner = CliRunner()
out = {str(tmp_path)!r}
for args in (
    ["fit", {str(simulated.manifest)!r}, "--site", "mprage-3t", "--out", out + "/m", "--profile", "smoke",
     "--set", "flow_training.epochs=1", "--set", "harmonizer_training.epochs=1"],
    ["adapt", out + "/m", {str(simulated.manifest)!r}, "--site", "spgr-15t", "--out", out + "/a", "--steps", "2"],
    ["harmonize", out + "/a", {str(simulated.folder / "spgr-15t")!r}, "--out", out + "/h"],
    ["benchmark", {str(simulated.manifest)!r}, "--out", out + "/b"],
):
    result = runner.invoke(app, [*args, "--quiet"])
    print(args[0], result.exit_code, result.output.strip().splitlines()[-1:], repr(result.exception))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    lines = dict(line.split(" ", 1) for line in done.stdout.splitlines())
    assert [lines[c].split()[0] for c in ("fit", "adapt", "harmonize")] == ["0", "0", "0"], done.stdout
    assert lines["benchmark"].startswith("2") and "needs the 'eval' extra" in lines["benchmark"]
