"""spatial-transfer: Cell2Gene BulkModel -> SpatialModel transfer learning on cell graphs.

model.py  Cell2GeneConfig, BulkModel, SpatialModel, the bulk->spatial mapping table, strategies
data.py   on-disk format -> validated SpatialData / BulkData -> cell-graph items
demo.py   the embedded demo data generator
train.py  bulk pretraining, transfer, cross-validation, prediction (ftcore's Trainer)
cli.py    the `spatial-transfer` command
"""

__version__ = "0.1.0"
