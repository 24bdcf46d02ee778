"""Orientation recovery, the method's step (ii): fit orientations to estimated distances
(:mod:`.recovery` on the engine of :mod:`.engine`), align them to the truth for evaluation
(:mod:`.alignment`), fix their gauge from the projections alone (:mod:`.gauge`), and estimate
in-plane shifts against reference images (:mod:`.shifts`)."""
