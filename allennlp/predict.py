"""Predict labels with an LSTM model directory (any textclf model works). Thin entry point.

    python allennlp/predict.py --input_path test.txt --output_path preds.txt --model_path models/lstm
"""

from textclf.cli.predict_cmd import predict

if __name__ == "__main__":
    predict()
