"""Import placeholder for arc-state's `state tx predict --predict-only` on a machine without cell-eval.

arc-state 0.11.1 imports `cell_eval.MetricsEvaluator` and `cell_eval.utils.split_anndata_on_celltype` at the top
of run_tx_predict, and with --predict-only never calls either. cell-eval needs polars, too large to carry to
the lent GPU machine, so run_peer.py puts this folder on arc-state's PYTHONPATH there (only with
--no-cell-eval). Anything that calls into it fails loudly: the metrics are computed by the real cell-eval
on the prediction files afterwards (run_peer.py --cell-eval-on).
"""


class MetricsEvaluator:
    def __init__(self, *args, **kwargs):
        raise RuntimeError("cell_eval placeholder: the real cell-eval is needed to compute metrics")
