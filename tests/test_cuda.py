"""The CUDA path, on a real GPU: bf16 autocast losses against their fp32 references, a training
step in channels_last, and a tiny train → export → ONNX Runtime (CPU) run.

    python -m pytest --noconftest -m cuda tests/test_cuda.py   # bench/gpu_run.sh runs this

Skipped where torch sees no CUDA device (CI, the CPU machines). `--noconftest` lets it run on a
machine without the service's dependencies (fastapi, faiss): nothing here needs them.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from testkit.losses import reference_ntxent
from training.__main__ import main
from training.augment import AugmentConfig, TwoViews
from training.checkpoint import load_checkpoint, read_meta
from training.data import Dataset, load_fashion_mnist
from training.encoder import ContrastiveModel, EncoderConfig
from training.losses import NTXentLoss, TripletLoss
from training.train import Distributed, TrainConfig, train_one_epoch

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="torch sees no CUDA device"),
]
CUDA = torch.device("cuda")


def _projections(batch: int = 16) -> tuple[torch.Tensor, torch.nn.Linear]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2 * batch, 48, generator=gen)
    torch.manual_seed(0)
    return x, torch.nn.Linear(48, 32)


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return F.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0).item()


@pytest.mark.parametrize("tau", [0.1, 0.5])
def test_ntxent_under_bf16_autocast_on_gpu_matches_the_fp32_reference(tau: float) -> None:
    x, layer = _projections()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        z = layer.to(CUDA)(x.to(CUDA))  # (2B, 32)
        assert z.dtype == torch.bfloat16
        loss = NTXentLoss(tau)(*z.chunk(2))
    assert loss.dtype == torch.float32  # the loss itself runs in fp32 under autocast
    loss.backward()
    gpu_grad = layer.weight.grad.cpu()

    cpu_layer = torch.nn.Linear(48, 32)
    cpu_layer.load_state_dict({k: v.cpu() for k, v in layer.state_dict().items()})
    z32 = cpu_layer(x)
    fp32 = NTXentLoss(tau)(*z32.chunk(2))
    fp32.backward()
    assert fp32.item() == pytest.approx(reference_ntxent(*z32.detach().chunk(2), tau), rel=1e-5)
    assert loss.item() == pytest.approx(fp32.item(), rel=0.02)
    assert torch.isfinite(gpu_grad).all()
    assert _cosine(gpu_grad, cpu_layer.weight.grad) > 0.99


@pytest.mark.parametrize("mining", ["semi_hard", "batch_hard"])
def test_triplet_under_bf16_autocast_on_gpu_matches_fp32(mining: str) -> None:
    x, layer = _projections()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        z = layer.to(CUDA)(x.to(CUDA))
        loss_fn = TripletLoss(0.2, mining=mining, reduction="mean")
        loss = loss_fn(*z.chunk(2))
    assert loss.dtype == torch.float32
    # Against the same loss, in fp32 on the CPU, of the very bf16 projections the GPU saw:
    # mining and distances must agree to fp32 rounding.
    exact = TripletLoss(0.2, mining=mining, reduction="mean")(*z.detach().float().cpu().chunk(2))
    assert loss.item() == pytest.approx(exact.item(), rel=1e-4, abs=1e-6)
    # And against the whole fp32 path: bf16 projections move the loss by a little only.
    cpu_layer = torch.nn.Linear(48, 32)
    cpu_layer.load_state_dict({k: v.cpu() for k, v in layer.state_dict().items()})
    fp32 = TripletLoss(0.2, mining=mining, reduction="mean")(*cpu_layer(x).chunk(2))
    assert loss.item() == pytest.approx(fp32.item(), rel=0.05, abs=1e-3)
    loss.backward()
    assert torch.isfinite(layer.weight.grad).all()


def _tiny_model() -> ContrastiveModel:
    torch.manual_seed(0)
    return ContrastiveModel(EncoderConfig(widths=(16, 32, 64), depths=(2, 2, 2)))


def test_a_channels_last_bf16_step_matches_a_contiguous_fp32_step() -> None:
    views = TwoViews(AugmentConfig())
    x = torch.rand(64, 1, 28, 28, generator=torch.Generator().manual_seed(0)).to(CUDA)
    x0, x1 = views(x, torch.Generator(device=CUDA).manual_seed(0))
    losses, grads = [], []
    for channels_last in (True, False):
        model = _tiny_model().to(CUDA)
        batch = torch.cat([x0, x1])
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
            batch = batch.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=channels_last):
            loss = NTXentLoss(0.2)(*model(batch).chunk(2))
        loss.backward()
        losses.append(loss.item())
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert losses[0] == pytest.approx(losses[1], rel=0.03)
    assert _cosine(grads[0], grads[1]) > 0.95


def test_train_one_epoch_on_gpu_keeps_channels_last_and_learns() -> None:
    model = _tiny_model().to(CUDA).to(memory_format=torch.channels_last)
    conv = model.backbone.features[2].conv[0].weight  # a residual 3×3 conv, (16, 16, 3, 3)
    assert conv.is_contiguous(memory_format=torch.channels_last)
    before = conv.detach().clone()
    images = load_fashion_mnist("train").images[:512]
    metrics, step = train_one_epoch(
        model=model,
        loss_fn=NTXentLoss(0.2),
        optimizer=torch.optim.AdamW(model.parameters(), lr=2e-3),
        views=TwoViews(AugmentConfig()),
        data=Dataset(images, None),
        epoch=1,
        step=0,
        total_steps=8,
        cfg=TrainConfig(batch_size=64, epochs=1, warmup_epochs=0.1),
        env=Distributed(CUDA),
        gen=torch.Generator(device=CUDA).manual_seed(0),
    )
    assert step == 8 and np.isfinite(metrics["loss"])
    assert conv.is_contiguous(memory_format=torch.channels_last)  # AdamW kept the layout
    assert not torch.equal(conv.detach(), before)


def test_tiny_gpu_run_exports_an_onnx_model_that_matches_torch_on_the_cpu(tmp_path: Path) -> None:
    import onnxruntime as ort

    out = tmp_path / "gpu-model"
    args = ["train", "--data", "fashion-mnist", "--device", "cuda", "--limit", "512"]
    args += ["--batch-size", "128", "--epochs", "2", "--out", str(out)]
    assert main(args) == 0  # the export inside already checks ONNX vs torch on the CPU (1e-4)
    info = json.loads((out / "model.json").read_text())
    assert info["training"]["runtime"]["accelerator"] == "GPU"
    assert torch.cuda.get_device_name() in info["training"]["device"]
    assert "Trained on a GPU" in (out / "README.md").read_text()

    weights = out / "weights.safetensors"
    model = ContrastiveModel(EncoderConfig.from_dict(read_meta(weights)["encoder"]))
    load_checkpoint(weights, model)
    model.eval()
    images = load_fashion_mnist("test").images[:256]
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255  # (N, 1, 28, 28)
    (onnx_h,) = ort.InferenceSession(str(out / "encoder.onnx")).run(None, {"images": x.numpy()})
    np.testing.assert_allclose(onnx_h, model.embed(x).numpy(), atol=1e-4)
    # The same weights on the GPU in fp32 (no TF32) agree with ONNX Runtime on the CPU too.
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        gpu_h = model.to(CUDA).embed(x.to(CUDA)).cpu().numpy()
    np.testing.assert_allclose(onnx_h, gpu_h, atol=1e-3)
