"""Volume I/O shared by both sides: HDF5 locations, TIF stacks, input sources, TFRecord writing, labeling, export.

Imports only core; TensorFlow never, SciPy/cc3d only inside the functions that label.
"""
