"""cryo_orient: recover particle orientations from cryo-EM projections.

A replication of Banjac, Donati & Defferrard (2021), "Learning to recover orientations from
projections in single-particle cryo-EM" (arXiv:2104.06237), as a library whose stages compose::

    simulate -> estimate distances -> recover -> align -> reconstruct

Modules
-------
data
    Named input maps (download, sha256 check, local mirror), MRC loading, maps from atomic models.
rotations
    Quaternions (scalar-last ``(x, y, z, w)``), the paper's ZYZ Euler angles, geodesic distance,
    orientation sampling.
projection
    The tomographic projection operator and its adjoint (NUFFT on CPU, ASTRA on GPU).
simulate
    Noise, shifts, standardisation, and simulated datasets written to HDF5.
"""

__version__ = "0.1.0"
