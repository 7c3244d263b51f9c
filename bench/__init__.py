"""convlens benchmarks: each case runs convlens and a peer (or a floor) side by side in one process."""
