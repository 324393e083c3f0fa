"""What several families share: the sentence encoders (shipped MiniLM, packaged mpnet, hub ids, TF-IDF+SVD),
their embedding cache, and putting a scikit-learn head's probabilities in label order.

Families import this package and never each other (an import-linter contract checks it).
"""
