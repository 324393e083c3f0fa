"""Fine-tune a BERT-like encoder in Catalyst (focal loss, one or two stages). Thin entry point: the logic lives in textclf.

    python bert_classification/train.py --train_path data/tweets_sentiment/train.csv \
        --valid_path data/tweets_sentiment/valid.csv --output_dir models/bert [--config config/bert_smoke.json] \
        [--set stage2.epochs=3] [--model_name DeepPavlov/rubert-base-cased] [--device cuda:0] [--devices 2]
"""

from textclf.cli.family_cmd import train_command

if __name__ == "__main__":
    train_command("bert")()
