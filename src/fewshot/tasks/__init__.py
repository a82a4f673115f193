"""Episodes: the one class-episode sampler, function-task episodes, and the batch types."""

from fewshot.tasks.batch import TaskBatch
from fewshot.tasks.functions import FunctionSampler
from fewshot.tasks.sampler import EpisodeSampler, check_task_settings, make_sampler
from fewshot.tasks.sequences import SequenceBatch, SequenceSampler

__all__ = ["EpisodeSampler", "FunctionSampler", "SequenceBatch", "SequenceSampler", "TaskBatch", "check_task_settings",
           "make_sampler"]
