"""kdh: an evaluation and monitoring harness for knowledge distillation of language models."""

__version__ = "0.1.0"
