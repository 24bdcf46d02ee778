"""Distance estimation, the method's step (i): estimators of the rotation distance between two
projections behind one interface (:mod:`.base`): the Siamese network (:mod:`.siamese`) and the exact
and perturbed distances of the true orientations (:mod:`.exact`)."""

from cryo_orient.estimation import exact, siamese
from cryo_orient.estimation.base import ESTIMATORS, DistanceEstimator, make_estimator, register

__all__ = ["ESTIMATORS", "DistanceEstimator", "exact", "make_estimator", "register", "siamese"]
