"""SSD training, evaluation, export and detection for the IR's detectors (docs/design.md §9).

Modules that need TensorFlow import it inside their functions or are imported only from
command bodies, so `mnasfpn --help` and the search's parent process stay TensorFlow-free.
"""
