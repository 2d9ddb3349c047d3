"""Measuring a model: benchmarks declared as data (tasks), batched log-likelihood scoring of their items (loglik),
held-out answer likelihood (heldout, nll), and the lm-evaluation-harness backend (harness)."""
