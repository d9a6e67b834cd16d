"""``python -m segbench.cli``: the ``segbench`` command (sweeps start their fits this way)."""

from segbench.cli import main

if __name__ == "__main__":
    main()
