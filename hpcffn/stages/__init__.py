"""FFN stage code run inside the jobs, one module per stage (convert, partitions, coordinates,
train, infer, joins/resolve/relabel/pyramid for stitching, evaluate) and their helpers
(markers, probe for `hpcffn check`, clahe, partition_objects, stitch)."""
