"""benchmarks/peer_kuberay.py's pieces: the two operators (sides), the watches that time
their jobs (recorder), one run on a fresh control plane (run), the table (report)."""
