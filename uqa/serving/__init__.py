"""`uqa serve`: the registered model behind an HTTP JSON API.

- schema.py   request/response models and input bounds (pure, no torch)
- batcher.py  dynamic batching: requests that arrive together share one forward pass (pure asyncio)
- models.py   which model is served: resolving --model, loading it, following the prod stage
- backends.py torch (uqa.predict.Predictor as is) and ONNX Runtime (fp32 / int8) behind the same Predictor
- app.py      the FastAPI application (routes, error handling, body-size limit)
"""
