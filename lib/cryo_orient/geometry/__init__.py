"""Geometry: rotations (quaternions, the paper's ZYZ Euler angles, geodesic distance, sampling on
SO(3)) and rigid motions of volumes."""
