"""Simulation: the measurement model's noise and shifts (:mod:`.noise`) and simulated datasets
written to HDF5 (:mod:`.simulate`)."""
