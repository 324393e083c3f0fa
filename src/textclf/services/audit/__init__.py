"""``textclf audit``: find likely label errors with out-of-fold probabilities and cleanlab, review them, apply the fixes.

* :mod:`.oof`: every family trained K-fold (stratified folds from scikit-learn) through the core's
  fit flow; the out-of-fold probabilities are memoised in the audit directory.
* :mod:`.rank`: cleanlab's confident learning on the families' averaged probabilities, plus
  near-duplicate texts with different labels.
* :mod:`.outputs`: ``issues.csv``, ``relabel.csv``, ``audit.json`` (atomic).
* :mod:`.page`: the single-file review page ``audit.html``; :mod:`.server`: ``textclf serve-audit``.
* :mod:`.apply`: ``textclf audit apply``: a new data version plus its lineage sidecar.
"""
