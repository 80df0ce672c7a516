"""Write the weights of the example networks (specs/networks/*.yaml) as .npz
files beside them, and each network as an ONNX model (.onnx) beside them too:
each network built as a PyTorch module (convgen.peers.torch_network),
initialised by PyTorch from a fixed seed, with batch norms given random
statistics (so that folding them is tested), its state_dict saved under the
keys the network spec takes, and the module exported by torch.onnx.export
(the TorchScript exporter, opset 17, without constant folding, so that the
batch norms stay BatchNormalization nodes for `convgen import` to fold).

The DS-CNN is also quantized to int8 by ONNX Runtime's static quantization
(QDQ format, per-channel int8 weights, int8 activations, calibrated on 50
random inputs) into ds_cnn_qdq.onnx, for `convgen import` of int8 ONNX models.

    python scripts/make_networks.py [specs/networks]

Needs torch==2.13.0, onnx and onnxruntime (`pip install -e '.[bench]'`).
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import torch

from convgen.network import load_network
from convgen.peers import torch_network


def randomise_batchnorms(module: torch.nn.Module, generator: torch.Generator) -> None:
    """Statistics and affine parameters away from the identity a fresh batch norm has."""
    for child in module.modules():
        if isinstance(child, torch.nn.BatchNorm2d):
            size = child.num_features
            with torch.no_grad():
                child.weight.copy_(0.5 + torch.rand(size, generator=generator))
                child.bias.copy_(0.2 * torch.randn(size, generator=generator))
                child.running_mean.copy_(0.2 * torch.randn(size, generator=generator))
                child.running_var.copy_(0.5 + torch.rand(size, generator=generator))


def write_weights_and_model(spec: Path) -> tuple[Path, Path]:
    network = load_network(spec)
    torch.manual_seed(0)
    module = torch_network(network)
    randomise_batchnorms(module, torch.Generator().manual_seed(1))
    arrays = {key: value.detach().numpy().astype(np.float32) for key, value in module.state_dict().items()
              if not key.endswith("num_batches_tracked")}
    weights, model = spec.with_suffix(".npz"), spec.with_suffix(".onnx")
    np.savez(weights, **arrays)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)   # the TorchScript exporter's notice
        torch.onnx.export(module, (torch.zeros(network.shape[network.input]),), str(model), dynamo=False,
                          opset_version=17, input_names=["x"], output_names=["y"], do_constant_folding=False)
    return weights, model


def write_qdq_model(model: Path, target: Path) -> Path:
    """model quantized by ONNX Runtime's quantize_static, QDQ, int8 throughout."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process
    import onnx

    shape = [d.dim_value for d in onnx.load(str(model)).graph.input[0].type.tensor_type.shape.dim]

    class RandomInputs(CalibrationDataReader):
        def __init__(self):
            rng = np.random.default_rng(2)
            self.samples = iter([{"x": rng.normal(0, 1, shape).astype(np.float32)} for _ in range(50)])

        def get_next(self):
            return next(self.samples, None)
    prepared = target.with_suffix(".pre.onnx")
    quant_pre_process(str(model), str(prepared))
    quantize_static(str(prepared), str(target), RandomInputs(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
    prepared.unlink()
    return target


def main(folder: str = "specs/networks") -> int:
    for spec in sorted(Path(folder).glob("*.yaml")):
        if load_network(spec).is_quantized:
            continue   # imported from a quantized model (its own file says from which)
        for path in write_weights_and_model(spec):
            print(f"wrote {path}")
    print(f"wrote {write_qdq_model(Path(folder) / 'ds_cnn.onnx', Path(folder) / 'ds_cnn_qdq.onnx')}")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
