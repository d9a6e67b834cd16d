"""Studies: ablations -> runs -> verdicts. The ablation schema (:mod:`.ablation`), what to run
(:mod:`.plan`), how (:mod:`.launchers`), the runs as data (:mod:`.runs`), pure statistics
(:mod:`.stats`), verdicts on claims (:mod:`.verdicts`), rendering (:mod:`.render`) and
publishing (:mod:`.publish`); the commands ``segbench sweep``, ``tune`` (a hyperparameter search
whose trials are runs), ``report`` and ``claims``."""
