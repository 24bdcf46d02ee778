"""Orientation recovery, the method's step (ii): fit orientations to estimated distances
(:mod:`.recovery` on the engine of :mod:`.engine`), align them to the truth for evaluation
(:mod:`.alignment`), and fix their gauge from the projections alone (:mod:`.gauge`)."""
