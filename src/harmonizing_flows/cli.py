"""The ``hflow`` command line. Heavy modules are imported inside each command, so ``hflow --help`` is instant."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from harmonizing_flows.config import SimulationConfig  # dataclasses only: keeps --help instant

__all__ = ["app"]

_SIM = SimulationConfig()

app = typer.Typer(
    name="hflow",
    help="Harmonizing Flows: make brain MRI from different scanners look as if one scanner took it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _fail(exc: Exception) -> None:
    typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


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
) -> None:
    """Harmonizing Flows: make brain MRI from different scanners look as if one scanner took it."""


@app.command()
def simulate(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (must not hold other files).")],
    sites: Annotated[
        Optional[str],  # noqa: UP045 - typer needs Optional on Python 3.10
        typer.Option(
            help="Comma-separated site names (see `hflow sites`). Default: all built-in sites, "
            "or all sites of --sites-file."
        ),
    ] = None,
    subjects_per_site: Annotated[int, typer.Option(min=1, help="Pseudo-subjects per site.")] = _SIM.subjects_per_site,
    voxel_size: Annotated[float, typer.Option(help="Output voxel size in mm (2 for quick runs).")] = _SIM.voxel_size,
    seed: Annotated[int, typer.Option(help="Seed of every random draw; same seed, same bytes.")] = _SIM.seed,
    sites_file: Annotated[
        Optional[Path], typer.Option(help="TOML file defining more sites.")  # noqa: UP045
    ] = None,
    anatomy: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(help="An aseg-style label map (e.g. a FreeSurfer aseg.mgz) to deform instead of fsaverage."),
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an earlier simulation in --out.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Simulate a multi-site T1-weighted dataset with exact labels, from real anatomy."""
    import time

    from harmonizing_flows.errors import HflowError
    from harmonizing_flows.simulate import simulate as run

    start = time.perf_counter()
    try:
        config = SimulationConfig(subjects_per_site=subjects_per_site, voxel_size=voxel_size, seed=seed)
        names = [s.strip() for s in sites.split(",") if s.strip()] if sites else None
        result = run(out, sites=names, sites_file=sites_file, config=config, anatomy=anatomy,
                     overwrite=overwrite, progress=not quiet)  # fmt: skip
    except (HflowError, ValueError) as exc:
        _fail(exc)
    n_sites = len({s.site for s in result.subjects})
    typer.echo(
        f"simulated {len(result.subjects)} subjects at {n_sites} sites in {time.perf_counter() - start:.0f} s\n"
        f"  manifest:   {result.manifest}\n  parameters: {result.parameters}\n  montage:    {result.montage}"
    )


@app.command()
def sites(
    sites_file: Annotated[
        Optional[Path], typer.Option(help="Also list the sites of this TOML file.")  # noqa: UP045
    ] = None,
) -> None:
    """List the simulator's sites and what differs between them."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    from harmonizing_flows.errors import HflowError
    from harmonizing_flows.simulate import BUILTIN_SITES, load_sites

    try:
        listed = {**BUILTIN_SITES, **(load_sites(sites_file) if sites_file else {})}
    except HflowError as exc:
        _fail(exc)
    table = Table(title="simulated sites", box=box.SIMPLE, show_edge=False, pad_edge=False)
    for column in ("name", "B0", "sequence", "TR/TI/TE ms", "flip", "voxel mm", "SNR", "bias"):
        table.add_column(column, no_wrap=True)
    for s in listed.values():
        timing = f"{s.tr_ms:g}/{s.ti_ms:g}/{s.te_ms:g}" if s.sequence == "mprage" else f"{s.tr_ms:g}/-/{s.te_ms:g}"
        table.add_row(s.name, f"{s.field_strength:g}T", s.sequence, timing, f"{s.flip_deg:g}",
                      "x".join(f"{v:g}" for v in s.voxel_size_mm), f"{s.snr:g}", f"{s.bias_range:.0%}")  # fmt: skip
    console = Console(file=sys.stdout)
    console.print(table)
    for s in listed.values():
        if s.description:
            console.print(f"[bold]{s.name}[/bold]: {s.description}", highlight=False)


if __name__ == "__main__":  # pragma: no cover
    app()
