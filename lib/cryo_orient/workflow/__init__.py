"""Workflow: the method as an ordered list of cached stages (:mod:`.stages`, :mod:`.pipeline`; on a
RELION particle stack with a reference map, :mod:`.orient`), profiles for the experiments
(:mod:`.profiles`), shared figure panels (:mod:`.plots`) and the replication report (:mod:`.report`)."""
