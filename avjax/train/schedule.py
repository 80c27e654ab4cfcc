"""Run length from the config and the dataset: steps per epoch, total steps.

As big_vision's `u.steps`: a schedule given in epochs becomes steps from the number of
training examples and the global batch, so overriding `data.global_batch_size` (or
training on a dataset of another size) keeps the epochs the paper states.
"""

from __future__ import annotations

from avjax.errors import UserError


def steps_per_epoch(num_examples: int, global_batch_size: int) -> int:
    """Full batches per pass over `num_examples` (the pipelines drop the remainder)."""
    if num_examples < global_batch_size:
        raise UserError(
            f"config.data.global_batch_size={global_batch_size} is larger than the "
            f"{num_examples} training examples: not one full batch per epoch"
        )
    return num_examples // global_batch_size


def resolve_steps(config, num_train_examples: int) -> None:
    """Fills the derived fields of `config.train` in place (locked configs allow it).

    * `train.steps_per_epoch`, when unset: full batches per pass over the training data.
    * `train.num_steps`, when unset: `train.num_epochs` x steps per epoch.
    Explicit values win: `--config.train.num_steps=N` makes a short run of an epoch config.
    """
    t = config.train
    if t.steps_per_epoch is None:
        t.steps_per_epoch = steps_per_epoch(num_train_examples, config.data.global_batch_size)
    if t.num_steps is None:
        if t.num_epochs is None:
            raise UserError("set config.train.num_steps or config.train.num_epochs")
        t.num_steps = t.num_epochs * t.steps_per_epoch
