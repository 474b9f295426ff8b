"""Everything a user runs: data, metrics, the engine and the task command lines."""
