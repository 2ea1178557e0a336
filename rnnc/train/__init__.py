"""Training: data, model, optimisers, the loop, checkpoints and sampling.

>>> from rnnc.train import train, TrainConfig
>>> result = train(TrainConfig(cell="lstm", rnn_size=128, data="input.txt", epochs=20))
>>> result.best_val_loss, result.best_checkpoint
"""

from rnnc.train.checkpoint import Checkpoint, checkpoint_name, load_checkpoint, save_checkpoint
from rnnc.train.data import CharData, Vocabulary, default_corpus, load_text
from rnnc.train.model import CompiledModel, LanguageModel
from rnnc.train.optim import SGD, Adagrad, Adam, Optimizer, RMSprop, make_optimizer, step_decay
from rnnc.train.sample import load_sampler, sample
from rnnc.train.trainer import TrainConfig, TrainResult, resume, train

__all__ = [
    "SGD",
    "Adagrad",
    "Adam",
    "CharData",
    "Checkpoint",
    "CompiledModel",
    "LanguageModel",
    "Optimizer",
    "RMSprop",
    "TrainConfig",
    "TrainResult",
    "Vocabulary",
    "checkpoint_name",
    "default_corpus",
    "load_checkpoint",
    "load_sampler",
    "load_text",
    "make_optimizer",
    "resume",
    "sample",
    "save_checkpoint",
    "step_decay",
    "train",
]
