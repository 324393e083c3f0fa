"""Train the BiLSTM classifier (macro-F0.5 selection, TensorBoard, optional Optuna). Thin entry point.

    python allennlp/train.py --train_path data/tweets_sentiment/train.csv \
        --valid_path data/tweets_sentiment/valid.csv --output_dir models/lstm [--n_trials 20] [--set model.hidden_size=256]
"""

from textclf.cli.family_cmd import train_command

if __name__ == "__main__":
    train_command("lstm")()
