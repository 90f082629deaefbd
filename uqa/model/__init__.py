"""The model: building or loading it (modeling), training it (trainer, checkpoints, progress), and
answering with it: window logits (inference), spans from logits (postprocess), the inference
settings a model directory carries (settings) and the Predictor that puts them together (predict)."""
