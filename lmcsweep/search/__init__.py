"""Optuna hyperparameter variants of a sweep: the `search` section. The only optuna importer
(`space`: the values and variants; `study`: the Optuna study; `driver`: running a search). Beside
them, without optuna, `onset`: the search over rewind points for the earliest stable k.

A search is an Optuna study driven from outside with ask/tell. Each trial is one variant of the
sweep: the sweep file with the trial's values set at dotted paths (``train.lr``), validated again,
expanded by `build_plan` and run by the ordinary `Runner`, nested under an MLflow ``trial`` run
(tag ``lmcsweep.trial=<number>``, params ``hp.<dotted key>``). Jobs are still found by hash, so two
variants that share a job (or a plain sweep with the same settings) compute it once.

Contract:

- the study lives in ``<store>/optuna.db`` (SQLite) unless ``search.storage`` names another URL; it
  is created before anything runs and named ``<sweep>-<hash of the search-relevant config>``, so an
  edited search (or an edited base config) is a new study while raising ``trials`` continues one;
- the objective is read back from the stored query records of the trial's own jobs
  (`run_search` takes it as a function; `records.objective.objective_value`), never from
  in-memory results;
- a trial left RUNNING by a killed process is marked FAIL (listed in the study's user attribute
  ``orphaned``) and its point is asked again; a trial that failed for a reason (invalid variant, failed job) carries the
  reason as user attribute ``error`` and is asked again only with ``--retry-failed``;
- a grid is covered exactly once: every point ends with one COMPLETE trial (or a failure),
  also across interruptions (its uncovered points are enqueued and asked in turn); random and tpe run until ``trials`` trials have settled;
- on CPU, grid and random trials are asked `trials_at_once` at a time and run together
  (`Runner.run_plans`); tpe, whose points depend on finished trials, asks one at a time;
- on workers (`lmcsweep run --workers`), a grid is asked by the driver (`run_search`, all points
  at once); random and tpe trials are asked and told by the workers themselves (`ask_trial`,
  `tell_trial`, `fail_trial` from `lmcsweep.worker_trials`), never more than ``trials`` in all.
"""
