"""The BIDS app: ``hflow bids BIDS_DIR OUT_DIR group|participant``, as fMRIPrep and MRIQC are called.

* :mod:`.layout`: the dataset's T1w scans with their sites, participant selection, where outputs go, and the
  checks made before anything is written;
* :mod:`.qc`: the flow's per-scan quality score against the source site's validation scans, and the QC table;
* :mod:`.app`: the two analysis levels (fit on the source site; adapt once per target site and harmonize);
* :mod:`.report`: the self-contained HTML reports, per participant and for the group.

The dataset is read by :func:`harmonizing_flows.data.datasets.read_bids` rather than pybids or bids2table: the
app needs only the T1w images, participants.tsv / sessions.tsv and the scans' sidecars, which that reader handles in
about a hundred lines; pybids would add SQLAlchemy and an index build to every call, bids2table pyarrow, for no
field we use.
"""

from __future__ import annotations

__all__: list[str] = []
