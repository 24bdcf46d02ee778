"""Simulation: the measurement model's noise and shifts (:mod:`.noise`), simulated datasets
written to HDF5 (:mod:`.simulate`, with a CTF per image where asked), the settings of a
simulation that matches a given particle stack (:mod:`.matching`), pairs simulated on the fly from
a library of maps (:mod:`.onthefly`, :mod:`.pseudomolecules`), and volumes that explain two
projections at any relative angle (:mod:`.ambiguity`)."""
