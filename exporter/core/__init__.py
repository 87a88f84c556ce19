"""Layer 0: errors, atomic files and sha256, the machine's facts, names and printable text, sizes,
progress and signals, locks, mounts, precisions and backend names. Imports nothing of ours."""
