"""Tomography: the projection operator and its adjoint (:mod:`.projection`, one dispatch over the
backends of :mod:`.backends`), least-squares reconstruction (:mod:`.reconstruct`) and the Fourier
shell correlation (:mod:`.fsc`)."""
