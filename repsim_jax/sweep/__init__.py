"""Layer sweeps at scale: methods x models x layers -> checkpointed units -> one report.

>>> from repsim_jax import sweep
>>> cfg = sweep.from_dict({"methods": ["semantic", "invert"], "layers": ["features.11"],
...                        "models": ["small_vgg"], "output": "repsim-out/run1"})
>>> sweep.run_sweep(cfg)          # -> Path of report.html; resumes when run again

Modules: :mod:`.config` (the configuration, TOML, its hash), :mod:`.options` (what every
key accepts, checked before anything is written), :mod:`.plan` (units of work, layer
groups of equal shape, the share of each process), :mod:`.run` (devices, chunked
activations, checkpoints, resume, jax.distributed), :mod:`.hosts` (the processes of a
multi-process run: start, heartbeats, failures, exit - no collectives), :mod:`.adapters`
(one thin adapter per method), :mod:`.store` (manifest, unit results, atomic writes), :mod:`.report`
(arrays, CSV/JSON tables, PNG figures, self-contained report.html).
"""
from repsim_jax.sweep.config import (METHOD_DEFAULTS, METHODS, DataSpec, DistributedSpec,
                                     ModelSpec, SweepConfig, SweepError, apply_overrides,
                                     config_hash, demo_config, from_dict, load_toml)
from repsim_jax.sweep.plan import Unit, group_by_shape, partition, plan_units, unit_seed
from repsim_jax.sweep.run import local_mesh, maybe_initialize_distributed, run_sweep

__all__ = ["METHODS", "METHOD_DEFAULTS", "SweepConfig", "ModelSpec", "DataSpec",
           "DistributedSpec", "SweepError", "from_dict", "load_toml", "apply_overrides",
           "config_hash", "demo_config", "Unit", "plan_units", "group_by_shape", "partition",
           "unit_seed", "run_sweep", "local_mesh", "maybe_initialize_distributed"]
