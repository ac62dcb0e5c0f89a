"""The naive baseline a user might write first: FastAPI + one PyTorch forward per request, no batching.

Run as ``python -m bench.naive CHECKPOINT --port P``; the benchmark starts it beside the gateway.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from fastapi import FastAPI, Request, Response

from training.checkpoint import load_checkpoint, rebuild_model


def create_app(checkpoint: str, threads: int) -> FastAPI:
    torch.set_num_threads(threads)
    ckpt = load_checkpoint(checkpoint)
    model = rebuild_model(ckpt)
    pre = ckpt["preprocessing"]
    mean = torch.tensor(pre["mean"]).view(1, -1, 1, 1) * 255.0
    std = torch.tensor(pre["std"]).view(1, -1, 1, 1) * 255.0
    app = FastAPI(title="naive PyTorch baseline")

    @app.get("/ready")
    def ready() -> dict:
        return {"ready": True}

    @app.post("/infer")
    async def infer(request: Request) -> Response:
        shape = tuple(int(s) for s in request.headers["x-shape"].split(","))
        images = np.frombuffer(await request.body(), dtype=np.uint8).reshape(shape)
        with torch.inference_mode():
            x = torch.from_numpy(images.copy()).permute(0, 3, 1, 2).float()  # (B, C, H, W)
            probs = torch.softmax(model((x - mean) / std), dim=1)  # (B, classes)
        return Response(probs.numpy().tobytes(), media_type="application/octet-stream")

    return app


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    uvicorn.run(
        create_app(args.checkpoint, args.threads), host="127.0.0.1", port=args.port, log_level="warning"
    )


if __name__ == "__main__":
    main()
