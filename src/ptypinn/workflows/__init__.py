"""Whole jobs built from the layers below: comparisons (``compare``), parameter studies
(``studies`` and ``study_results``), the demo (``demo``) and ``ptypinn info`` (``describe``)."""
