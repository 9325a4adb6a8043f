"""`edgeopt tune`: search a recipe's `search:` space with Optuna; every trial runs the verified pipeline.

space (search block -> dimensions, trial recipes), objectives (what a trial is scored on), trial (one
pipeline run -> a result), executors (in process, worker processes, Ray), study (the Optuna ask/tell loop),
outputs (tune.json, trials.csv, Pareto recipes). Nothing outside edgeopt/tune and the CLI imports it.
"""
