"""Train an Optuna-tuned fastText classifier. Thin entry point: the logic lives in textclf.

    python fasttext/train.py --train_path data/tweets_sentiment/train.csv \
        --valid_path data/tweets_sentiment/valid.csv --output_dir models/fasttext --n_trials 50
"""

from textclf.cli.family_cmd import train_command

if __name__ == "__main__":
    train_command("fasttext")()
