"""``python -m textclf.families.bert.worker ARGS``: one DDP worker of ``textclf train bert --devices N``.

``torchrun --nproc_per_node N bert_classification/train.py ...`` works the same way.
"""

from textclf.cli.family_cmd import train_command

if __name__ == "__main__":
    train_command("bert")()
