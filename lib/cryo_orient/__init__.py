"""cryo_orient: recover particle orientations from cryo-EM projections.

A replication of Banjac, Donati & Defferrard (2021), "Learning to recover orientations from
projections in single-particle cryo-EM" (arXiv:2104.06237), as a library whose stages compose::

    simulate -> estimate distances -> recover -> align -> reconstruct

Subpackages
-----------
Lowest layer first; each imports only from lower ones (the README's architecture section).

validation, artifacts
    The package's error types and argument checks; atomic writes, records and caches.
geometry
    Quaternions (scalar-last ``(x, y, z, w)``), the paper's ZYZ Euler angles, geodesic distance,
    sampling on SO(3); rigid motions of volumes.
data
    Named input maps (download, sha256 check, local mirror), MRC I/O, maps from atomic models,
    the :class:`~cryo_orient.data.dataset.Dataset` type and its readers, RELION STAR files, Table 1's split.
tomography
    The projection operator and its adjoint (NUFFT on CPU, ASTRA on GPU), reconstruction, FSC.
simulation
    Noise, shifts, standardisation, and simulated datasets written to HDF5.
estimation
    Step (i): distance estimators (the Siamese CNN; exact and perturbed distances).
orientation
    Step (ii): orientation recovery, alignment to the truth, the gauge from common lines.
workflow
    The pipeline as cached stages, experiment profiles, figure panels, the replication report.
cli
    ``cryo-orient``: one subcommand per stage.
"""

__version__ = "0.1.0"
