"""The fault matrix: how the TOS SDK, boto3 and modelpull fail and retry, side by side.

``python benchmarks/fault_matrix.py`` runs every fault of :mod:`.faults` through every
tool of :mod:`.tools` against local servers (:mod:`.stores`), one *cell* per (fault,
variant, tool), and writes what each cell did as JSON and as the tables of the migration
guide (:mod:`.report`). A cell (:mod:`.cells`) gets an object of its own and a fault
proxy of its own, so cells share no state and run in parallel.

The SDKs run in a process per cell (:mod:`.sdk_arm`), killed at the cell's wall-clock
cap; modelpull runs as its CLI (``modelpull pull --json --metrics-file``) or, for the
suite's quick check, in-process through the same API the CLI calls.
"""
