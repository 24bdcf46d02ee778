"""Distance estimation, the method's step (i): estimators of the rotation distance between two
projections behind one interface (:mod:`.base`): the Siamese network (:mod:`.siamese`) and the exact
and perturbed distances of the true orientations (:mod:`.exact`), and a trained network's run folder
used as it is (:mod:`.pretrained`)."""

from cryo_orient.estimation import exact, pretrained, siamese
from cryo_orient.estimation.base import ESTIMATORS, DistanceEstimator, make_estimator, register

__all__ = ["ESTIMATORS", "DistanceEstimator", "exact", "make_estimator", "pretrained", "register", "siamese"]
