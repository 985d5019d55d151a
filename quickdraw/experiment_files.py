"""Names of files in an experiment folder that one part of the package writes and another reads.

Kept apart so that reading them (the report) does not import what writes them (Ray Tune's trainable, torch)."""

SEARCH_FILE = "search.json"  # the settings a search ran with, and where its split is: what --resume needs
PREDICTIONS_FILE = "test_predictions.npz"  # in each trial folder: the tested weights' class probabilities
