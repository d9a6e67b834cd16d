"""Training-free tools: model summary, run reports and sweeps (more with each paper)."""
