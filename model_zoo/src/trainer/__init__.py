"""Training machinery of the model zoo: config, optimizers, schedules, loop, callbacks, plots.

=============== ===================================================================
module          what
=============== ===================================================================
``config``      :class:`TrainConfig`, YAML loading, per-optimizer blocks, overrides
``optim``       :func:`create_optimizer` (registry :data:`OPTIMIZERS`), train cells
``lr``          :func:`create_lr` (registry :data:`LR_SCHEDULES`), per-step rates
``loop``        :class:`Trainer` (epoch loop driving MindSpore callbacks), evaluation
``callbacks``   evaluation, progress/ETA, metrics CSV/JSON, checkpoints, plot
``checkpoint``  atomic per-epoch checkpoints and exact resume (shapes checked first)
``rundir``      output folders: one live run per folder (lock), unique temporary names
``plot``        curves of one run, or several runs' optimizers side by side (also a
                command: ``python -m model_zoo.src.trainer.plot``; not imported here)
``context``     device, GRAPH_MODE, data parallelism under ``msrun``
=============== ===================================================================
"""

from model_zoo.src.trainer.checkpoint import (
    latest_checkpoint,
    load_checkpoint_for_resume,
    save_checkpoint_atomic,
)
from model_zoo.src.trainer.config import (
    ConfigError,
    TrainConfig,
    ZooArgumentParser,
    add_override_args,
    load_config,
    overrides_from_args,
    resolve_config,
)
from model_zoo.src.trainer.context import launched_by_msrun, setup_context
from model_zoo.src.trainer.loop import EvalNetwork, RunParams, Trainer, evaluate
from model_zoo.src.trainer.lr import LR_SCHEDULES, create_lr
from model_zoo.src.trainer.optim import (
    OPTIMIZERS,
    SECOND_ORDER,
    create_optimizer,
    create_train_cell,
)

__all__ = [
    "TrainConfig",
    "ConfigError",
    "ZooArgumentParser",
    "load_config",
    "resolve_config",
    "add_override_args",
    "overrides_from_args",
    "OPTIMIZERS",
    "SECOND_ORDER",
    "create_optimizer",
    "create_train_cell",
    "LR_SCHEDULES",
    "create_lr",
    "Trainer",
    "RunParams",
    "EvalNetwork",
    "evaluate",
    "save_checkpoint_atomic",
    "load_checkpoint_for_resume",
    "latest_checkpoint",
    "setup_context",
    "launched_by_msrun",
]
