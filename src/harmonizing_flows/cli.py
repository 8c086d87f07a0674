"""The ``hflow`` command line. Heavy modules are imported inside each command, so ``hflow --help`` is instant."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from harmonizing_flows.config import SimulationConfig  # dataclasses only: keeps --help instant
from harmonizing_flows.errors import HflowError  # light: keeps --help instant

__all__ = ["app"]

_SIM = SimulationConfig()

app = typer.Typer(
    name="hflow",
    help="Harmonizing Flows: make brain MRI from different scanners look as if one scanner took it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


_DEBUG = False  # --debug: errors of the user's making show their traceback too


def _fail(exc: HflowError) -> NoReturn:
    """Print ``error: PATH: cause`` (and any notes), without a traceback, and exit with code 2."""
    message = str(exc)
    for note in getattr(exc, "__notes__", ()):
        message += f"\n  {note}"
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


@contextmanager
def _user_errors() -> Iterator[None]:
    """Turn the package's own errors (a bad file, a bad setting, an output in the way) into one tidy line; any
    other exception is a bug and shows its traceback."""
    try:
        yield
    except HflowError as exc:
        if _DEBUG:
            raise
        _fail(exc)


@contextmanager
def _resumable(out: Path) -> Iterator[None]:
    """On Ctrl-C, say where the checkpoints are and how to continue from them, and exit with code 130."""
    import os

    try:
        yield
    except KeyboardInterrupt:
        checkpoints = out.with_name(out.name + ".checkpoints")
        if os.environ.get("RANK", "0") == "0":  # under torchrun, one process says it
            saved = sorted(checkpoints.glob("*.safetensors")) if checkpoints.is_dir() else []
            hint = (
                f"the last finished epochs are in {checkpoints}: run the same command with --resume to continue"
                if saved
                else "no epoch had finished, so there is nothing to resume: run the command again"
            )
            typer.secho(f"interrupted; {hint}", fg=typer.colors.YELLOW, err=True)
        raise typer.Exit(code=130) from None


def _require_eval(what: str) -> None:
    from harmonizing_flows.evaluation import require_eval_extra

    require_eval_extra(what)


def _command() -> str:
    """The command line as typed, for the reports that record how they were made."""
    import shlex

    return shlex.join(["hflow", *sys.argv[1:]])


def _print_version(value: bool) -> None:
    if value:
        from harmonizing_flows import __version__

        typer.echo(f"harmonizing-flows {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", is_eager=True, callback=_print_version, help="Print the version and exit.")
    ] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show the full traceback of every error.")] = False,
) -> None:
    """Harmonizing Flows: make brain MRI from different scanners look as if one scanner took it."""
    global _DEBUG
    from harmonizing_flows.allocator import keep_freed_memory

    _DEBUG = debug
    keep_freed_memory()


# Options shared by several commands, declared once.
ProfileOption = Annotated[
    str, typer.Option(help="Settings preset: paper (GPU), fast (CPU default), smoke (tests). See `hflow profiles`.")
]
ConfigOption = Annotated[Path | None, typer.Option(help="TOML file of settings.")]
SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override one setting, e.g. --set flow.margin=2.0 --set adapt.steps=500 (repeatable)."),
]
SeedOption = Annotated[int | None, typer.Option(help="Seed (default: the profile's).")]
DeviceOption = Annotated[str, typer.Option(help="auto (CUDA when present), cpu, cuda or cuda:N.")]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]
SourceSiteOption = Annotated[str | None, typer.Option(help="The source site, if SOURCE holds several.")]


@app.command()
def simulate(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (must not hold other files).")],
    sites: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated site names (see `hflow sites`). Default: all built-in sites, "
            "or all sites of --sites-file."
        ),
    ] = None,
    subjects_per_site: Annotated[
        int, typer.Option(min=3, help="Pseudo-subjects per site (at least 3: one per split).")
    ] = _SIM.subjects_per_site,
    voxel_size: Annotated[float, typer.Option(help="Output voxel size in mm (2 for quick runs).")] = _SIM.voxel_size,
    seed: Annotated[int, typer.Option(help="Seed of every draw; same seed and threads, same bytes.")] = _SIM.seed,
    sites_file: Annotated[Path | None, typer.Option(help="TOML file defining more sites.")] = None,
    anatomy: Annotated[
        Path | None,
        typer.Option(help="An aseg-style label map (e.g. a FreeSurfer aseg.mgz) to deform instead of fsaverage."),
    ] = None,
    split: Annotated[
        str,
        typer.Option(
            help="Train,validation,test shares of each site's subjects, written to the manifest (or participants.tsv)."
        ),
    ] = ",".join(f"{x:g}" for x in _SIM.split_fractions),
    layout: Annotated[
        str,
        typer.Option(
            help="sites: a folder per site and manifest.csv; bids: a BIDS dataset (participants.tsv with site and "
            "split columns, scanner sidecars; masks and label maps under derivatives/simulation/)."
        ),
    ] = "sites",
    overwrite: Annotated[bool, typer.Option(help="Replace an earlier simulation in --out.")] = False,
    quiet: QuietOption = False,
) -> None:
    """Simulate a multi-site T1-weighted dataset with exact labels, from real anatomy."""
    import time

    from harmonizing_flows.simulate import simulate as run

    start = time.perf_counter()
    with _user_errors():
        config = SimulationConfig(subjects_per_site=subjects_per_site, voxel_size=voxel_size, seed=seed,
                                  split_fractions=_fractions(split))  # fmt: skip
        names = [s.strip() for s in sites.split(",") if s.strip()] if sites else None
        result = run(out, sites=names, sites_file=sites_file, config=config, anatomy=anatomy,
                     overwrite=overwrite, progress=not quiet, layout=layout)  # fmt: skip
    n_sites = len({s.site for s in result.subjects})
    data = "BIDS root: " if result.layout == "bids" else "manifest:   "
    typer.echo(
        f"simulated {len(result.subjects)} subjects at {n_sites} sites in {time.perf_counter() - start:.0f} s\n"
        f"  {data}{result.manifest}\n  parameters: {result.parameters}\n  montage:    {result.montage}"
    )


def _fractions(text: str) -> tuple[float, float, float]:
    from harmonizing_flows.errors import ConfigError

    try:
        values = tuple(float(x) for x in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3:
        raise ConfigError(f"--split {text!r}: give three shares, train,validation,test, e.g. 0.5,0.125,0.375")
    return values  # type: ignore[return-value]


def _profile(profile: str, config: Path | None, overrides: list[str] | None, seed: int | None):
    from dataclasses import replace

    from harmonizing_flows.profiles import load_profile

    loaded = load_profile(profile, config, overrides or [])
    return replace(loaded, seed=seed) if seed is not None else loaded


@app.command()
def fit(
    source: Annotated[
        Path, typer.Argument(help="Source data: a manifest CSV, site folders, a BIDS dataset or one site's folder.")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Model folder to write.")],
    site: SourceSiteOption = None,
    profile: ProfileOption = "fast",
    config: ConfigOption = None,
    set_: SetOption = None,
    seed: SeedOption = None,
    device: DeviceOption = "auto",
    resume: Annotated[bool, typer.Option(help="Continue from the checkpoints in OUT.checkpoints/.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing model folder.")] = False,
    quiet: QuietOption = False,
) -> None:
    """Fit a model on one source site: pre-train the harmonizer, train the flow, store the source bpd."""
    import json

    from harmonizing_flows.method.training import fit as run

    with _user_errors(), _resumable(out):
        folder = run(source, out, _profile(profile, config, set_, seed), site=site, device=device, resume=resume,
                     overwrite=overwrite, progress=not quiet)  # fmt: skip
    if folder is not None:
        meta = json.loads((folder / "model.json").read_text())
        bpd = meta["source_bpd"]
        adequacy = meta["flow_adequacy"]
        training = meta["training"]
        typer.echo(
            f"fitted on site {meta['source_site']} in {training['seconds']:.0f} s; "
            f"source validation bpd {bpd['all_pixels']:.3f} (brain only {bpd['brain_only']:.3f})\n"
            f"  flow: the weights of epoch {training['flow_kept_epoch']} of {len(training['flow'])}\n"
            f"  flow adequacy: brain bpd {adequacy['brain_bpd']:.2f}, AUROC source vs augmented "
            f"{adequacy['auroc_augmented']:.2f}\n  model: {folder}"
        )
        for problem in adequacy["problems"]:
            typer.secho(f"warning: the flow is not adequate: {problem}", err=True, fg=typer.colors.YELLOW)


@app.command()
def adapt(
    model: Annotated[Path, typer.Argument(help="A model folder from `hflow fit`.")],
    target: Annotated[
        Path, typer.Argument(help="Target data, as for fit, or a folder of the site's images (labels are not used).")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Adapted model folder to write.")],
    site: Annotated[str | None, typer.Option(help="The target site, if TARGET holds several.")] = None,
    split: Annotated[
        list[str] | None, typer.Option(help="Only subjects of this split (repeatable); default: all.")
    ] = None,
    stop: Annotated[
        str | None,
        typer.Option(
            help="Stopping rule: source-bpd, entropy (needs --segmenter) or steps. Default: with --segmenter, "
            "entropy (it measured best); without, the profile's (the curve: steps)."
        ),
    ] = None,
    segmenter: Annotated[
        Path | None, typer.Option(help="A segmenter folder from `hflow fit-segmenter`: adds its entropy to the curve.")
    ] = None,
    steps: Annotated[int | None, typer.Option(help="Most adaptation steps.")] = None,
    config: Annotated[
        Path | None,
        typer.Option(help="TOML file of adaptation settings: an adapt table and a seed (the rest is fixed)."),
    ] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override adapt.* settings, e.g. adapt.lr=1e-5.")
    ] = None,
    seed: SeedOption = None,
    device: DeviceOption = "auto",
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output folder.")] = False,
    quiet: QuietOption = False,
) -> None:
    """Adapt a fitted model's harmonizer to a new site, without labels or source data."""
    from harmonizing_flows.method.adaptation import HM_START, choose_settings
    from harmonizing_flows.method.adaptation import adapt as run
    from harmonizing_flows.method.store import load_model
    from harmonizing_flows.profiles import update_profile

    with _user_errors():
        fitted = load_model(model)
        profile = update_profile(fitted.profile, config, set_ or [], only=["adapt", "seed"])
        seg = None
        if segmenter is not None:
            _require_eval("hflow adapt --segmenter")
            from harmonizing_flows.evaluation.segmenter import check_compatible, load_segmenter

            seg = load_segmenter(segmenter)
            check_compatible(seg, fitted, segmenter)
        settings = choose_settings(profile.adapt, stop=stop, steps=steps, with_segmenter=seg is not None,
                                   stop_chosen=_sets_stop(config, set_ or []))  # fmt: skip
        folder, result = run(model, target, out, config=settings, site=site, splits=tuple(split) if split else None,
                             device=device, segmenter=seg, seed=profile.seed if seed is None else seed,
                             overwrite=overwrite, progress=not quiet)  # fmt: skip
    kept = result.summary["kept"]
    start = result.summary["start"]
    colour = typer.colors.YELLOW if result.guard or result.chosen_step == 0 else None
    typer.secho(f"{result.reason}", fg=colour)
    if result.chosen_step == 0:
        typer.secho(f"kept step 0: the adapted model harmonizes as its start did ({result.summary['started_as']}); "
                    "adaptation changed nothing, for the reason above", fg=colour)  # fmt: skip
    moved = (f"alpha {start['alpha']:.3f} -> {kept['alpha']:.3f}" if result.summary["started_as"] != HM_START
             else f"brain mean {start['brain_mean']:.1f} -> {kept['brain_mean']:.1f}")  # fmt: skip
    typer.echo(
        f"kept step {result.chosen_step}: target bpd {start['target_bpd']:.3f} -> {kept['target_bpd']:.3f} "
        f"(source {result.summary['source_bpd']:.3f}), {moved}\n"
        f"  adapted model: {folder}\n  curve: {folder / 'adaptation.json'}"
    )


def _sets_stop(config: Path | None, overrides: list[str]) -> bool:
    """Whether a settings file or an override names ``adapt.stop`` (then a segmenter does not switch the rule)."""
    if any(item.partition("=")[0].strip() == "adapt.stop" for item in overrides):
        return True
    if config is None:
        return False
    from harmonizing_flows.profiles import read_settings

    return "stop" in read_settings(config).get("adapt", {})


@app.command()
def harmonize(
    model: Annotated[Path, typer.Argument(help="A model folder (fitted or adapted).")],
    inputs: Annotated[
        Path, typer.Argument(help="A NIfTI/MGZ file or a folder of them; a FreeSurfer subject or a folder of them.")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output file (.nii.gz) or folder.")],
    mask: Annotated[Path | None, typer.Option(help="Brain mask of a single input file.")] = None,
    dtype: Annotated[str, typer.Option(help="uint8 (as the model's source images) or float32.")] = "uint8",
    device: DeviceOption = "auto",
    overwrite: Annotated[bool, typer.Option(help="Replace existing output files.")] = False,
    skip_existing: Annotated[
        bool, typer.Option(help="Keep existing output files and harmonize the rest (to finish a folder).")
    ] = False,
    quiet: QuietOption = False,
) -> None:
    """Write harmonized NIfTI volumes on each input's own grid and header, background zero."""
    from harmonizing_flows.harmonize import harmonize as run

    with _user_errors():
        written = run(model, inputs, out, mask=mask, device=device, dtype=dtype, overwrite=overwrite,
                      skip_existing=skip_existing, progress=not quiet)  # fmt: skip
    typer.echo(f"harmonized {len(written)} volume(s) into {out}")


@app.command(context_settings={"allow_extra_args": True})  # --participant-label 01 02, as BIDS apps take it
def bids(
    ctx: typer.Context,
    bids_dir: Annotated[Path, typer.Argument(help="The BIDS dataset (read only; never written).")],
    out_dir: Annotated[Path, typer.Argument(help="The derivatives folder to write (outside BIDS_DIR).")],
    analysis_level: Annotated[
        str, typer.Argument(help="group: fit on the source site. participant: adapt and harmonize participants.")
    ],
    source_site: Annotated[
        str | None, typer.Option(help="group: the site to fit on (the one every other is made to look like).")
    ] = None,
    participant_label: Annotated[
        list[str] | None,
        typer.Option(help="participant: these participants only, with or without sub- (01 02, 01,02 or repeated)."),
    ] = None,
    site_column: Annotated[
        str | None,
        typer.Option(
            help="The participants.tsv / sessions.tsv column naming the site (default: site, site_id, "
            "scanner, centre or center; else the scanner in the scans' sidecars)."
        ),
    ] = None,
    profile: ProfileOption = "fast",
    config: ConfigOption = None,
    set_: SetOption = None,
    seed: SeedOption = None,
    device: DeviceOption = "auto",
    overwrite: Annotated[bool, typer.Option(help="group: refit an existing source model.")] = False,
    quiet: QuietOption = False,
) -> None:
    """A BIDS app: `hflow bids BIDS_DIR OUT_DIR group --source-site SITE`, then `hflow bids BIDS_DIR OUT_DIR
    participant`: harmonized T1w derivatives with JSON sidecars, a QC table and HTML reports (docs/bids.md)."""
    from harmonizing_flows.errors import ConfigError

    with _user_errors():
        if ctx.args and not participant_label:
            raise ConfigError(f"unexpected argument(s): {' '.join(ctx.args)}")
        if analysis_level == "group":
            if source_site is None:
                raise ConfigError("the group level fits the model on one site: name it with --source-site")
            if participant_label:
                raise ConfigError("--participant-label selects participants at the participant level, not group")
            from harmonizing_flows.bids.app import group

            folder = group(bids_dir, out_dir, _profile(profile, config, set_, seed), source_site=source_site,
                           site_column=site_column, device=device, overwrite=overwrite, progress=not quiet,
                           command=_command(), log=typer.echo)  # fmt: skip
            typer.echo(f"source model: {folder}\nnext: hflow bids {bids_dir} {out_dir} participant")
        elif analysis_level == "participant":
            if source_site is not None or set_ or config is not None or overwrite:
                raise ConfigError("--source-site, --set, --config and --overwrite belong to the group level; the "
                                  "participant level uses the model the group level fitted")  # fmt: skip
            from harmonizing_flows.bids.app import participant

            given = [*(participant_label or []), *ctx.args]  # the values after the first: extra arguments
            labels = [x for item in given for x in item.replace(",", " ").split()]
            participant(bids_dir, out_dir, labels=labels or None, site_column=site_column, device=device,
                        progress=not quiet, command=_command(), log=typer.echo)  # fmt: skip
            typer.echo(f"report: {out_dir / 'report.html'}")
        else:
            raise ConfigError(f"analysis level must be group or participant, not {analysis_level!r}")


@app.command("fit-segmenter")
def fit_segmenter(
    source: Annotated[Path, typer.Argument(help="Labelled source data: a manifest CSV, site folders or BIDS.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Segmenter folder to write.")],
    site: SourceSiteOption = None,
    profile: ProfileOption = "fast",
    config: ConfigOption = None,
    set_: SetOption = None,
    seed: SeedOption = None,
    device: DeviceOption = "auto",
    resume: Annotated[bool, typer.Option(help="Continue from the checkpoints in OUT.checkpoints/.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing segmenter folder.")] = False,
    quiet: QuietOption = False,
) -> None:
    """Train the 15-class segmenter on a source site's training split (for evaluation and entropy stopping)."""
    with _user_errors(), _resumable(out):
        _require_eval("hflow fit-segmenter")
        from harmonizing_flows.evaluation.segmenter import fit_segmenter_on

        folder = fit_segmenter_on(source, out, _profile(profile, config, set_, seed), site=site, device=device,
                                  resume=resume, overwrite=overwrite, progress=not quiet)  # fmt: skip
    typer.echo(f"segmenter: {folder}")


@app.command()
def benchmark(
    data: Annotated[Path, typer.Argument(help="Labelled multi-site data, e.g. the manifest of `hflow simulate`.")],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Results folder: tables, JSON, figures; models/ and settings/ resume.")
    ],
    settings: Annotated[
        str | None, typer.Option(help="Settings to run, e.g. A,C (A = first site in name order). Default: all.")
    ] = None,
    variants: Annotated[
        str,
        typer.Option(
            help="Method variants: curve (the default method: histogram matching, then one monotone curve for "
            "the site), curve+jacobian (with the change-of-variables term), curve+likelihood-flow (that, steered by a "
            "flow fitted without guiding negatives), curve+restoration (the curve, then a restoration network "
            "fitted on the source), paper-faithful (the paper's harmonizer), positive-alpha, brain-only, "
            "collapse-negatives. Table 1 shows the first."
        ),
    ] = "curve,paper-faithful,curve+jacobian,curve+likelihood-flow,curve+restoration,positive-alpha,brain-only,"
    "collapse-negatives",
    profile: ProfileOption = "fast",
    config: ConfigOption = None,
    set_: SetOption = None,
    seed: SeedOption = None,
    device: DeviceOption = "auto",
    overwrite: Annotated[
        bool,
        typer.Option(
            help="Replace an earlier report in OUT. Fitted networks and finished settings are reused when the code, "
            "settings, data and device are the same; delete OUT to recompute everything."
        ),
    ] = False,
    quiet: QuietOption = False,
) -> None:
    """The paper's protocol: each site in turn as the source, every method on the others' test volumes."""
    with _user_errors():
        _require_eval("hflow benchmark")
        from harmonizing_flows.evaluation.protocol import benchmark as run

        chosen = [x.strip() for x in settings.split(",")] if settings else None
        written = run(data, out, _profile(profile, config, set_, seed), settings=chosen,
                      variants=[x.strip() for x in variants.split(",") if x.strip()], device=device,
                      overwrite=overwrite, progress=not quiet, log=typer.echo, command=_command())  # fmt: skip
    typer.echo((written["tables.md"]).read_text(encoding="utf-8"))
    typer.echo("written: " + ", ".join(str(p) for p in written.values()))


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Demo folder: data/ and results/.")] = Path("hflow-demo"),
    subjects_per_site: Annotated[
        int, typer.Option(min=4, help="Simulated subjects per site (6: 3 to fit on, 1 to validate, 2 to score).")
    ] = 6,
    profile: ProfileOption = "fast",
    device: DeviceOption = "auto",
    overwrite: Annotated[bool, typer.Option(help="Replace an earlier demo in OUT.")] = False,
    quiet: QuietOption = False,
) -> None:
    """Everything in one command: simulate 4 sites, fit on one, adapt to the others, compare with the baselines.

    The sites are simulated at the voxel size the profile's slices are meant for (fast: 2 mm). Six subjects per
    site keep the fast profile within 15 minutes on two CPU cores; with 10 the demo is setting A of
    ``benchmarks/bench_evaluation.py``.
    """
    import time

    from harmonizing_flows.profiles import load_profile
    from harmonizing_flows.simulate import simulate as simulate_sites

    started = time.perf_counter()
    data = out / "data"
    with _user_errors():
        _require_eval("hflow demo")
        from harmonizing_flows.evaluation.protocol import DEFAULT_VARIANT
        from harmonizing_flows.evaluation.protocol import benchmark as run

        if (out / "results").exists() and not overwrite:
            from harmonizing_flows.errors import OutputExistsError

            raise OutputExistsError(out)
        chosen = load_profile(profile)
        voxel = chosen.slices.voxel_size
        typer.echo(f"1/2 simulating 4 sites x {subjects_per_site} subjects at {voxel:g} mm into {data}")
        simulate_sites(data, config=SimulationConfig(subjects_per_site=subjects_per_site, voxel_size=voxel),
                       overwrite=overwrite, progress=not quiet)  # fmt: skip
        typer.echo("2/2 setting A: fit on the first site, adapt to the other three, evaluate every method")
        written = run(data / "manifest.csv", out / "results", chosen, settings=["A"],
                      variants=[DEFAULT_VARIANT], device=device, overwrite=overwrite,
                      progress=not quiet, log=typer.echo, command=_command())  # fmt: skip
    typer.echo((written["tables.md"]).read_text(encoding="utf-8"))
    typer.echo(f"demo finished in {time.perf_counter() - started:.0f} s")
    typer.echo("  tables:  " + str(written["tables.md"]))
    typer.echo("  numbers: " + str(written["results.json"]))
    typer.echo("  figures: " + str(written["figures"]))
    typer.echo("  data:    " + str(data))


@app.command()
def profiles() -> None:
    """List the settings presets and what they cost."""
    from harmonizing_flows.profiles import PROFILES

    for name, p in PROFILES.items():
        typer.echo(
            f"{name:6s} slices {p.slices.image_size[0]}x{p.slices.image_size[1]} of {p.slices.voxel_size:g} mm data, "
            f"harmonizer {list(p.harmonizer.widths)}, "
            f"flow couplings {p.flow.dequantization_couplings}+{list(p.flow.couplings)} widths {list(p.flow.widths)}, "
            f"epochs {p.harmonizer_training.epochs}/{p.flow_training.epochs}, adapt {p.adapt.steps} steps"
        )


@app.command()
def sites(
    sites_file: Annotated[Path | None, typer.Option(help="Also list the sites of this TOML file.")] = None,
) -> None:
    """List the simulator's sites and what differs between them."""
    from rich.console import Console
    from rich.table import Table

    from harmonizing_flows.simulate import BUILTIN_SITES, load_sites

    with _user_errors():
        listed = {**BUILTIN_SITES, **(load_sites(sites_file) if sites_file else {})}
    table = Table(
        title="simulated sites",
        box=None,  # columns two spaces apart: the table fits 80 columns
        header_style="bold underline",
        pad_edge=False,
        caption="bias: the coil's fixed profile + the per-scan field, peak to peak",
    )
    for column in ("name", "B0", "sequence", "TR/TI/TE ms", "flip", "voxel mm", "SNR", "bias"):
        table.add_column(column, no_wrap=True)
    for s in listed.values():
        timing = f"{s.tr_ms:g}/{s.ti_ms:g}/{s.te_ms:g}" if s.sequence == "mprage" else f"{s.tr_ms:g}/-/{s.te_ms:g}"
        table.add_row(s.name, f"{s.field_strength:g}T", s.sequence, timing, f"{s.flip_deg:g}",
                      "x".join(f"{v:g}" for v in s.voxel_size_mm), f"{s.snr:g}",
                      f"{s.coil_bias * 100:.0f}+{s.bias_range:.0%}")  # fmt: skip
    console = Console(file=sys.stdout)
    console.print(table)
    for s in listed.values():
        if s.description:
            console.print(f"[bold]{s.name}[/bold]: {s.description}", highlight=False)


if __name__ == "__main__":  # pragma: no cover
    app()
