"""`uqa serve`: the registered model behind an HTTP JSON API.

- schema.py    request/response models (ours and the Hugging Face QA protocol) and input bounds (no torch)
- guard.py     request ids, Host, API key and Content-Type checks, the access log (ASGI middleware)
- scheduler.py fair, bounded work: requests' windows take turns in the forward passes (pure asyncio)
- answering.py a request -> Predictor.prepare, the scheduler, Predictor.finish -> its answers
- metrics.py   Prometheus metrics (/metrics)
- models.py    which model is served: resolving --model, loading it, following the prod stage
- remote.py    --repo: a replica that downloads what the gate approved from the git and DVC remotes
- backends.py  torch (uqa.model.predict.Predictor as is) and ONNX Runtime (fp32 / int8) behind the same Predictor
- app.py       the FastAPI application (routes, error handling, body-size limit, OpenAPI)
- cli.py       `uqa serve`'s options and start-up
"""
