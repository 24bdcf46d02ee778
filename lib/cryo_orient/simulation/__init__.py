"""Simulation: the measurement model's noise and shifts (:mod:`.noise`), simulated datasets
written to HDF5 (:mod:`.simulate`, with a CTF per image where asked), and the settings of a
simulation that matches a given particle stack (:mod:`.matching`)."""
