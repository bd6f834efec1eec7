"""FFN stage code run inside the jobs: convert, partitions, coordinates, train, infer, evaluate."""
