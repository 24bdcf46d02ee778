"""Tomography: the projection operator and its adjoint (:mod:`.projection`, one dispatch over the
backends of :mod:`.backends`), the CTF in RELION's convention and CTF correction (:mod:`.ctf`),
least-squares reconstruction, with the CTF in the normal equations (:mod:`.reconstruct`), and the
Fourier shell correlation (:mod:`.fsc`)."""
