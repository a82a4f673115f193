"""Episodes: the one sampler and the batch types."""

from fewshot.tasks.batch import TaskBatch
from fewshot.tasks.sampler import EpisodeSampler, check_task_settings

__all__ = ["EpisodeSampler", "TaskBatch", "check_task_settings"]
