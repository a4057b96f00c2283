"""Domain recipes for the shared training loop: each module holds a config dataclass and a `*_setup(config)`
that returns the loop's TrainingSetup (data, loss, metrics, what trains). Trainers in trainers/ are launchers."""
