"""Does the CPU thread count change training results? One epoch of a site's harmonizer pre-training per count.

Each count runs in a fresh process (``torch.set_num_threads`` before any work), from the same seed and data, as
``hflow benchmark`` fits the harmonizer (``fit_model``'s seeding, the profile's schedule cut to one epoch). Equal
losses to every digit mean the count does not matter for this step; the benchmark's report records the count
because on this machine it does (``benchmarks/RESULTS.md``).

Usage: ``python benchmarks/thread_determinism.py MANIFEST SITE [--threads 1,2] [--profile fast]``
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from dataclasses import replace


def _one(manifest: str, site: str, profile_name: str, threads: int) -> float:
    import torch

    from harmonizing_flows.data.prepare import read_site
    from harmonizing_flows.data.slices import Slices
    from harmonizing_flows.method.distributed import Context
    from harmonizing_flows.method.store import Model
    from harmonizing_flows.method.training import fit_harmonizer
    from harmonizing_flows.profiles import load_profile

    torch.set_num_threads(threads)
    profile = load_profile(profile_name)
    profile = replace(profile, harmonizer_training=replace(profile.harmonizer_training, epochs=1))
    # the site's training split as the benchmark reads it (the data's splits kept, the others drawn as it draws them)
    volumes = read_site(manifest, profile.slices, site=site, splits=["train"], labels=True).volumes
    train = Slices.pool(volumes, labels=True)
    torch.manual_seed(profile.seed)  # as fit_model: initial weights from the seed alone
    model = Model.create(profile)
    history = fit_harmonizer(model.harmonizer, train, profile, Context(device=torch.device("cpu")), progress=False)
    return float(history[0]["mse"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("manifest")
    parser.add_argument("site")
    parser.add_argument("--threads", default="1,2", help="Thread counts to compare (default: 1,2).")
    parser.add_argument("--profile", default="fast")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        print(repr(_one(args.manifest, args.site, args.profile, args.child)))
        return
    for threads in (int(t) for t in args.threads.split(",")):
        child = ["--profile", args.profile, "--child", str(threads)]
        command = [sys.executable, __file__, args.manifest, args.site, *child]
        mse = subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        print(f"{threads} thread(s): epoch-1 masked MSE {mse}", flush=True)


if __name__ == "__main__":
    main()
