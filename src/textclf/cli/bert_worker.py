"""``python -m textclf.cli.bert_worker ARGS``: one DDP worker of ``textclf train bert --devices N``.

The BERT family launches this module by name (``families/bert/distributed.py``); it runs the same
command as the parent, so the worker trains through the run service like any other run.
``torchrun --nproc_per_node N bert_classification/train.py ...`` works the same way.
"""

from textclf.cli.family_cmd import train_command

if __name__ == "__main__":
    train_command("bert")()
