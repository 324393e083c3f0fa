"""Predict labels with a BERT model directory (any textclf model works). Thin entry point.

    python bert_classification/predict.py --input_path test.txt --output_path bert_preds.csv --model_path models/bert
"""

from textclf.cli.predict_cmd import predict

if __name__ == "__main__":
    predict()
