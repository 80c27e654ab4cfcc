"""Evaluators as library objects, one per kind of model, run from the trainer or a launcher.

`EVALUATORS` maps a run's `config.task` to its evaluator class. `launch/evaluate.py` reads a
run, builds the evaluator with the data it reads (`data_pipelines`) and writes the tables
(`tables.write`); the trainer runs the evaluators a config declares, big_vision style:

  config.evals.sample = dict(every=1000, num_samples=10, max_clips=200)

in the config file (launch/train.py locks configs: `--config.evals.sample.every=N` then
changes it) runs `EVALUATORS[config.evals.sample.get("type", config.task)]` on the eval
split every 1000 steps (and at the last step) and logs its scalars as
`evals/sample/<name>` (`loop_evaluators`). Evaluators never import `avjax.train`,
`data_pipelines` or `launch`.
"""

from __future__ import annotations

from collections.abc import Callable

from avjax.errors import UserError
from avjax.evals.audio_generation import AudioGenerationEvaluator
from avjax.evals.video_prediction import VideoPredictionEvaluator

EVALUATORS = {
    "sound2sight": VideoPredictionEvaluator,
    "mcav": VideoPredictionEvaluator,
    "transformer": AudioGenerationEvaluator,
}


def loop_evaluators(config, task) -> dict[str, tuple[int, Callable]]:
    """The evaluators of `config.evals` for the trainer: {name: (every, fn)}.

    Each section names its evaluator by `type` (default `config.task`, a key of
    `EVALUATORS`) and how often it runs (`every`, steps > 0); the other fields go to the
    evaluator's `in_loop`. `fn(state, eval batches, step) -> {scalar name: float}`. A
    section whose `every` is None is off (a config can declare an evaluator that the command
    line switches on).

    Raises:
      UserError naming the field: an unknown type, a missing or bad `every`, an evaluator
      that cannot run inside training.
    """
    sections = config.get("evals") or {}
    out = {}
    for name in sections:
        section = sections[name]
        if section.get("every", 0) is None:
            continue
        kind = section.get("type", config.task)
        if kind not in EVALUATORS:
            raise UserError(
                f"config.evals.{name}.type={kind!r}: no evaluator; expected one of "
                f"{sorted(EVALUATORS)}"
            )
        every = section.get("every")
        if not isinstance(every, int) or every < 1:
            raise UserError(f"config.evals.{name}.every={every!r} must be a number of steps >= 1")
        out[name] = (every, EVALUATORS[kind].in_loop(config, section, task))
    return out
