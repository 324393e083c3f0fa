"""Predict labels with a fastText model directory (any textclf model works). Thin entry point.

    python fasttext/predict.py --input_path test.txt --output_path preds.txt --model_path models/fasttext
"""

from textclf.cli.predict_cmd import predict

if __name__ == "__main__":
    predict()
