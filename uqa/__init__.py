"""uqa-pipeline: fine-tune multilingual encoders for extractive QA on UQA (Urdu SQuAD2.0)."""

__version__ = "0.1.0"
